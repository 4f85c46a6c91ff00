//! Managing the catalog through pgveil: a restricted user holding management permissions may
//! call pgveil's admin functions (`SELECT pgveil.assign_role('sam', 'Staff')`), with literal
//! arguments only, and never grant more than they hold: roles with full access or with system
//! permissions the caller lacks cannot be assigned, and CRM Administrator cannot be revoked.

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Query, SelectItem, SetExpr, Value,
};

use super::resolve::parts;
use super::Cx;
use crate::error::ClientError;

/// Which system permission a function needs (any of them).
fn required(function: &str) -> Option<&'static [&'static str]> {
    Some(match function {
        "create_role" | "grant_permission" | "deny_permission" | "revoke_permission"
        | "set_scope" | "set_field" => &["manage_policies"],
        "assign_role"
        | "assign_role_to_group"
        | "revoke_role"
        | "remove_all_roles"
        | "copy_roles"
        | "set_primary_role" => &["manage_users", "manage_roles"],
        _ => return None,
    })
}

/// `Some(result)` if `q` is a call of pgveil admin functions (allowed or refused); `None` if it
/// is an ordinary query.
pub fn admin_call(cx: &Cx<'_>, q: &Query) -> Option<Result<(), ClientError>> {
    let calls = admin_calls(q)?;
    Some(
        calls
            .into_iter()
            .try_for_each(|(name, args)| check_call(cx, &name, &args)),
    )
}

/// The (function, literal arguments) of a `SELECT pgveil.f(...), ...` without FROM.
fn admin_calls(q: &Query) -> Option<Vec<(String, Vec<Option<String>>)>> {
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    if q.with.is_some() || !s.from.is_empty() || s.selection.is_some() || s.projection.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for item in &s.projection {
        let (SelectItem::UnnamedExpr(Expr::Function(f))
        | SelectItem::ExprWithAlias {
            expr: Expr::Function(f),
            ..
        }) = item
        else {
            return None;
        };
        let p = parts(&f.name).ok()?;
        let [schema, name] = p.as_slice() else {
            return None;
        };
        if schema != "pgveil" || required(name).is_none() {
            return None;
        }
        let FunctionArguments::List(list) = &f.args else {
            return None;
        };
        let args = list
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(literal(e)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>();
        // Non-literal arguments make it an admin call that will be refused.
        out.push((
            name.clone(),
            args.unwrap_or_else(|| vec![Some("\u{0}non-literal".into())]),
        ));
    }
    Some(out)
}

/// A constant argument as text (`None` for NULL); non-constants are marked.
fn literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Null => None,
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) | Value::Number(s, _) => {
                Some(s.clone())
            }
            Value::Boolean(b) => Some(b.to_string()),
            _ => Some("\u{0}non-literal".into()),
        },
        Expr::Cast { expr, .. } => literal(expr),
        Expr::Array(a)
            if a.elem
                .iter()
                .all(|e| matches!(literal(e).as_deref(), Some(s) if !s.starts_with('\u{0}'))) =>
        {
            Some("array".into())
        }
        _ => Some("\u{0}non-literal".into()),
    }
}

fn check_call(cx: &Cx<'_>, name: &str, args: &[Option<String>]) -> Result<(), ClientError> {
    let denied = |why: String| ClientError::Denied {
        message: format!("permission denied for pgveil.{name}: {why}"),
        hint: Some(
            "catalog management through pgveil needs a management role (see pgveil_my_permissions)"
                .into(),
        ),
    };
    let needs = required(name).unwrap_or(&[]);
    if !needs.iter().any(|p| cx.eff.system_permissions.contains(*p)) {
        return Err(denied(format!("requires {}", needs.join(" or "))));
    }
    if args.iter().flatten().any(|a| a.starts_with('\u{0}')) {
        return Err(denied("arguments must be literals".into()));
    }
    let arg = |i: usize| args.get(i).cloned().flatten();
    match name {
        "assign_role" | "assign_role_to_group" => grantable(cx, arg(1).as_deref()).map_err(denied),
        "revoke_role" if arg(1).as_deref() == Some("CRM Administrator") => Err(denied(
            "only users with full access can remove CRM Administrator".into(),
        )),
        "copy_roles" => {
            let from = arg(0).unwrap_or_default();
            cx.snap
                .catalog
                .assignments
                .iter()
                .filter(|a| {
                    a.user.as_deref() == Some(from.as_str()) && a.role != "CRM Administrator"
                })
                .try_for_each(|a| grantable(cx, Some(&a.role)))
                .map_err(denied)
        }
        _ => Ok(()),
    }
}

/// May the caller hand out `role`? Not with full access, not with system permissions they lack.
fn grantable(cx: &Cx<'_>, role: Option<&str>) -> Result<(), String> {
    let role = role.ok_or("a role name is required")?;
    let chain = cx.snap.role_chain(role);
    if chain.is_empty() {
        return Err(format!("unknown role \"{role}\""));
    }
    if chain.iter().any(|r| r.unrestricted) {
        return Err(format!(
            "role \"{role}\" has full access; only users with full access can assign it"
        ));
    }
    let missing: Vec<&str> = chain
        .iter()
        .flat_map(|r| r.system_permissions.iter())
        .filter(|p| !cx.eff.system_permissions.contains(*p))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "role \"{role}\" carries system permissions you do not hold: {}",
            missing.join(", ")
        ))
    }
}
