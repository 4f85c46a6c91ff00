//! The write pass: INSERT needs `create`, UPDATE `edit`, DELETE `delete`. Read-only and
//! invisible fields cannot be written; UPDATE/DELETE touch only rows in scope; a write can
//! never place a row outside the user's scope (checked in SQL by `pgveil.assert_scope`);
//! RETURNING obeys field rules; bulk limits are checked before any row is written.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    AssignmentTarget, Delete, Expr, FromTable, Insert, ObjectName, OnConflictAction, OnInsert,
    SelectItem, SetExpr, TableFactor, TableObject, TableWithJoins, Update, Visit, Visitor,
};

use super::policy_sql::{ident, literal, pred_sql};
use super::read::{Mode, ReadPass};
use super::resolve::{fold, parts, resolve, Resolved};
use super::{leakproof, Cx};
use crate::error::ClientError;
use crate::policy::compile::{Atom, ColumnRead, ObjectPolicy, RowPred};

/// Resolve a DML target to its object policy.
fn target<'c>(cx: &'c Cx<'_>, name: &ObjectName) -> Result<&'c ObjectPolicy, ClientError> {
    match resolve(cx.snap, cx.search_path, cx.database, name)? {
        Resolved::Catalog(s, t) => Err(ClientError::denied(format!(
            "permission denied to modify {s}.{t}"
        ))),
        Resolved::Object(s, t) => cx.object(&s, &t),
    }
}

fn require(o: &ObjectPolicy, action: &str) -> Result<(), ClientError> {
    if o.allows(action) {
        Ok(())
    } else {
        Err(super::denied_action(o, action))
    }
}

fn read_only_field(o: &ObjectPolicy, col: &str) -> ClientError {
    let level = o.column(col).map_or("unknown", |c| c.level.as_str());
    ClientError::Denied {
        message: format!("permission denied to write field {}.{col}: it is {level} for your roles", o.object),
        hint: Some("field permissions come from pgveil.field_permissions of the roles that grant this action".into()),
    }
}

/// Refuse references to fields the user cannot see (they would leak through filters,
/// SET expressions or RETURNING).
fn refuse_hidden_refs<T: Visit>(
    o: &ObjectPolicy,
    alias: &str,
    node: &T,
) -> Result<(), ClientError> {
    struct Refs<'a> {
        o: &'a ObjectPolicy,
        alias: &'a str,
    }
    impl Visitor for Refs<'_> {
        type Break = ClientError;
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<ClientError> {
            let col = match e {
                Expr::Identifier(id) => fold(id).ok(),
                Expr::CompoundIdentifier(ids) if ids.len() >= 2 => {
                    let q = fold(&ids[ids.len() - 2]).ok();
                    if q.as_deref() == Some(self.alias)
                        || q.as_deref() == Some(self.o.table.as_str())
                    {
                        fold(&ids[ids.len() - 1]).ok()
                    } else {
                        None
                    }
                }
                _ => None,
            };
            if let Some(c) = col.and_then(|c| self.o.column(&c)) {
                if !matches!(c.read, ColumnRead::Visible) {
                    return ControlFlow::Break(ClientError::Denied {
                        message: format!(
                            "permission denied: field {}.{} is invisible to you and cannot be used in this statement",
                            self.o.object, c.name
                        ),
                        hint: None,
                    });
                }
            }
            ControlFlow::Continue(())
        }
    }
    match node.visit(&mut Refs { o, alias }) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// A single-table target: (name, alias as used in SQL).
fn single_table(t: &TableWithJoins) -> Result<(ObjectName, Option<String>), ClientError> {
    if !t.joins.is_empty() {
        return Err(ClientError::unsupported(
            "pgveil supports one target table per UPDATE or DELETE",
        ));
    }
    match &t.relation {
        TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } => {
            let a = match alias {
                Some(a) if a.columns.is_empty() => Some(fold(&a.name)?),
                Some(_) => {
                    return Err(ClientError::unsupported(
                        "column aliases on a DML target are not supported",
                    ))
                }
                None => None,
            };
            Ok((name.clone(), a))
        }
        _ => Err(ClientError::unsupported(
            "pgveil supports only a plain table as UPDATE or DELETE target",
        )),
    }
}

fn and(existing: Option<Expr>, extra: Expr) -> Expr {
    match existing {
        None => extra,
        Some(e) => Expr::BinaryOp {
            left: Box::new(Expr::Nested(Box::new(e))),
            op: sqlparser::ast::BinaryOperator::And,
            right: Box::new(extra),
        },
    }
}

/// The user's WHERE on a write target, behind the target's scope when it has an expression
/// that could fail on a row outside the scope (see `leakproof`): `CASE WHEN <scope> THEN
/// (<where>) ELSE FALSE END`, which PostgreSQL evaluates in that order. Only pgveil's part
/// is parsed as generated SQL; the user's (already rewritten) WHERE is put in as it is.
fn guarded_where(
    cx: &Cx<'_>,
    selection: Option<Expr>,
    scope: &str,
    fence: bool,
) -> Result<Option<Expr>, ClientError> {
    let w = match selection {
        Some(w) if fence => w,
        other => return Ok(other),
    };
    let mut guard =
        cx.parse_generated_expr(&format!("CASE WHEN {scope} THEN NULL ELSE FALSE END"))?;
    match &mut guard {
        Expr::Case { conditions, .. } if conditions.len() == 1 => {
            conditions[0].result = Expr::Nested(Box::new(w));
            Ok(Some(guard))
        }
        _ => Err(ClientError::denied(
            "pgveil internal error building a scoped WHERE",
        )),
    }
}

/// Columns a predicate depends on.
fn pred_columns(o: &ObjectPolicy, p: &RowPred) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let RowPred::Any(atoms) = p {
        for a in atoms {
            let c = match a {
                Atom::Owner(_) => o.owner_column.clone(),
                Atom::Departments(_) => o.department_column.clone(),
                Atom::Teams(_) => o.team_column.clone(),
                Atom::Parent => o.parent.as_ref().map(|p| p.1.clone()),
            };
            out.extend(c);
        }
    }
    out
}

/// `RETURNING` under field rules: wildcards expand to masked columns, hidden refs refused.
fn rewrite_returning(
    cx: &Cx<'_>,
    o: &ObjectPolicy,
    alias: &str,
    returning: &mut Option<Vec<SelectItem>>,
) -> Result<(), ClientError> {
    let Some(items) = returning.as_mut() else {
        return Ok(());
    };
    if !(o.allows("list") || o.allows("view")) {
        return Err(ClientError::denied(format!(
            "permission denied: RETURNING needs {}.list or {}.view",
            o.object, o.object
        )));
    }
    refuse_hidden_refs(o, alias, items)?;
    ReadPass::run(cx, Mode::Rewrite, items)?;
    let mut out = Vec::new();
    for item in items.drain(..) {
        match item {
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                let q = |c: &str| format!("{}.{}", ident(alias), ident(c));
                for c in &o.columns {
                    let text = match &c.read {
                        ColumnRead::Visible => q(&c.name),
                        ColumnRead::Hidden(m) => format!(
                            "{} AS {}",
                            super::mask_expr(*m, &q(&c.name), &c.type_name),
                            ident(&c.name)
                        ),
                        ColumnRead::When(p, m) => format!(
                            "CASE WHEN {} THEN {} ELSE {} END AS {}",
                            pred_sql(cx.eff, o, p, &q, 0),
                            q(&c.name),
                            super::mask_expr(*m, &q(&c.name), &c.type_name),
                            ident(&c.name)
                        ),
                    };
                    out.push(cx.parse_select_item(&text)?);
                }
            }
            other => out.push(other),
        }
    }
    *items = out;
    Ok(())
}

/// Bulk limit: refuse before writing anything if more rows would be touched.
fn bulk_check(
    cx: &Cx<'_>,
    o: &ObjectPolicy,
    what: &str,
    count_sql: &str,
) -> Result<Option<Expr>, ClientError> {
    let r = &cx.eff.restrictions;
    if r.bulk_operations {
        return Ok(None);
    }
    let n = r.bulk_threshold;
    let text = format!(
        "pgveil.assert_scope(({count_sql}) <= {n}, {})",
        literal(&format!(
            "bulk {what} of more than {n} rows of {} is not allowed for your roles (bulk operations are off)",
            o.object
        ))
    );
    cx.parse_generated_expr(&text).map(Some)
}

/// Rows of the target in a scope, as a trusted derived table for counting (behind a fence
/// when the statement's WHERE could fail on a row outside the scope).
fn scoped_target(
    cx: &Cx<'_>,
    o: &ObjectPolicy,
    p: &RowPred,
    alias: &str,
    fence: bool,
) -> Result<String, ClientError> {
    let mut inner = super::policy_sql::scoped_rows(cx.eff, o, p);
    if fence {
        inner.push_str(" OFFSET 0");
    }
    cx.register_query_text(&inner)?;
    Ok(format!("({inner}) AS {}", ident(alias)))
}

pub fn update(cx: &Cx<'_>, u: &mut Update) -> Result<(), ClientError> {
    if u.or.is_some() || !u.order_by.is_empty() || u.limit.is_some() || u.output.is_some() {
        return Err(ClientError::unsupported(
            "pgveil does not support this UPDATE form",
        ));
    }
    let (name, alias) = single_table(&u.table)?;
    let o = target(cx, &name)?;
    require(o, "edit")?;
    let alias = alias.unwrap_or_else(|| o.table.clone());
    let mut assigned = Vec::new();
    for a in &u.assignments {
        let cols = match &a.target {
            AssignmentTarget::ColumnName(n) => vec![n.clone()],
            AssignmentTarget::Tuple(ns) => ns.clone(),
        };
        for c in cols {
            let c = parts(&c)?.pop().unwrap_or_default();
            let col = o
                .column(&c)
                .ok_or_else(|| ClientError::denied(format!("unknown field {}.{c}", o.object)))?;
            if col.edit.is_nothing() {
                return Err(read_only_field(o, &c));
            }
            assigned.push(c);
        }
    }
    refuse_hidden_refs(o, &alias, &u.assignments)?;
    refuse_hidden_refs(o, &alias, &u.selection)?;
    // the new values are computed on rows that passed every condition: no fence for them
    let fence = leakproof::needs_fence(&u.from) || leakproof::needs_fence(&u.selection);
    if let Some(from) = &mut u.from {
        ReadPass::run_fenced(cx, Mode::Rewrite, from, fence)?;
    }
    ReadPass::run(cx, Mode::Rewrite, &mut u.assignments)?;
    ReadPass::run_fenced(cx, Mode::Rewrite, &mut u.selection, fence)?;
    let qual = |c: &str| format!("{}.{}", ident(&alias), ident(c));
    let original_where = u.selection.clone();
    let scope = pred_sql(cx.eff, o, &o.edit, &qual, 0);
    u.selection = guarded_where(cx, u.selection.take(), &scope, fence)?;
    let mut conds = vec![scope];
    for c in &assigned {
        if let Some(col) = o.column(c) {
            if col.edit != o.edit && col.edit != RowPred::All {
                conds.push(pred_sql(cx.eff, o, &col.edit, &qual, 0));
            }
        }
    }
    // A record may not be moved out of scope by changing the columns its scope depends on.
    let scope_cols = pred_columns(o, &o.edit);
    if o.edit != RowPred::All && assigned.iter().any(|c| scope_cols.contains(c)) {
        let new_val = |c: &str| -> String {
            u.assignments
                .iter()
                .find_map(|a| match &a.target {
                    AssignmentTarget::ColumnName(n)
                        if parts(n).ok().and_then(|mut p| p.pop()).as_deref() == Some(c) =>
                    {
                        Some(format!("({})", a.value))
                    }
                    _ => None,
                })
                .unwrap_or_else(|| qual(c))
        };
        let current = pred_sql(cx.eff, o, &o.edit, &qual, 0);
        let moved = pred_sql(cx.eff, o, &o.edit, &new_val, 0);
        conds.push(format!(
            "CASE WHEN {current} THEN pgveil.assert_scope({moved}, {}) ELSE FALSE END",
            literal(&format!(
                "update would move a {} record out of your data scope",
                o.object
            ))
        ));
    }
    let mut selection = u.selection.take();
    for c in conds {
        selection = Some(and(selection, cx.parse_generated_expr(&c)?));
    }
    let from_items = match &u.from {
        Some(
            sqlparser::ast::UpdateTableFromKind::BeforeSet(f)
            | sqlparser::ast::UpdateTableFromKind::AfterSet(f),
        ) => f.iter().map(|t| format!(", {t}")).collect::<String>(),
        None => String::new(),
    };
    let count = format!(
        "SELECT count(*) FROM {}{from_items}{}",
        scoped_target(cx, o, &o.edit, &alias, fence)?,
        original_where
            .map(|w| format!(" WHERE {w}"))
            .unwrap_or_default()
    );
    if let Some(b) = bulk_check(cx, o, "update", &count)? {
        selection = Some(and(selection, b));
    }
    u.selection = selection;
    rewrite_returning(cx, o, &alias, &mut u.returning)
}

pub fn delete(cx: &Cx<'_>, d: &mut Delete) -> Result<(), ClientError> {
    if !d.tables.is_empty() || !d.order_by.is_empty() || d.limit.is_some() || d.output.is_some() {
        return Err(ClientError::unsupported(
            "pgveil does not support this DELETE form",
        ));
    }
    let targets = match &d.from {
        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
    };
    let [t] = targets.as_slice() else {
        return Err(ClientError::unsupported(
            "pgveil supports one target table per DELETE",
        ));
    };
    let (name, alias) = single_table(t)?;
    let o = target(cx, &name)?;
    require(o, "delete")?;
    let alias = alias.unwrap_or_else(|| o.table.clone());
    refuse_hidden_refs(o, &alias, &d.selection)?;
    let fence = leakproof::needs_fence(&d.using) || leakproof::needs_fence(&d.selection);
    if let Some(using) = &mut d.using {
        ReadPass::run_fenced(cx, Mode::Rewrite, using, fence)?;
    }
    ReadPass::run_fenced(cx, Mode::Rewrite, &mut d.selection, fence)?;
    let qual = |c: &str| format!("{}.{}", ident(&alias), ident(c));
    let original_where = d.selection.clone();
    let scope = pred_sql(cx.eff, o, &o.delete, &qual, 0);
    let mut selection = Some(and(
        guarded_where(cx, d.selection.take(), &scope, fence)?,
        cx.parse_generated_expr(&scope)?,
    ));
    let using = d
        .using
        .as_ref()
        .map(|u| u.iter().map(|t| format!(", {t}")).collect::<String>())
        .unwrap_or_default();
    let count = format!(
        "SELECT count(*) FROM {}{using}{}",
        scoped_target(cx, o, &o.delete, &alias, fence)?,
        original_where
            .map(|w| format!(" WHERE {w}"))
            .unwrap_or_default()
    );
    if let Some(b) = bulk_check(cx, o, "delete", &count)? {
        selection = Some(and(selection, b));
    }
    d.selection = selection;
    rewrite_returning(cx, o, &alias, &mut d.returning)
}

pub fn insert(cx: &Cx<'_>, i: &mut Insert) -> Result<(), ClientError> {
    if i.or.is_some()
        || i.ignore
        || i.overwrite
        || !i.assignments.is_empty()
        || i.partitioned.is_some()
        || !i.after_columns.is_empty()
        || i.replace_into
        || i.priority.is_some()
        || i.insert_alias.is_some()
        || i.output.is_some()
        || i.settings.is_some()
        || i.format_clause.is_some()
        || i.has_table_keyword
    {
        return Err(ClientError::unsupported(
            "pgveil does not support this INSERT form",
        ));
    }
    let TableObject::TableName(name) = &i.table else {
        return Err(ClientError::unsupported(
            "pgveil does not support INSERT into a table function",
        ));
    };
    let o = target(cx, name)?;
    require(o, "create")?;
    let alias = match &i.table_alias {
        Some(a) => fold(&a.alias)?,
        None => o.table.clone(),
    };
    let user_cols: Vec<String> = if i.columns.is_empty() {
        o.columns.iter().map(|c| c.name.clone()).collect()
    } else {
        i.columns
            .iter()
            .map(|c| parts(c).map(|mut p| p.pop().unwrap_or_default()))
            .collect::<Result<_, _>>()?
    };
    for c in &user_cols {
        match o.column(c) {
            None => {
                return Err(ClientError::denied(format!(
                    "unknown field {}.{c}",
                    o.object
                )))
            }
            Some(col) if !col.create => return Err(read_only_field(o, c)),
            Some(_) => {}
        }
    }
    let source = i
        .source
        .as_mut()
        .ok_or_else(|| ClientError::unsupported("INSERT without a source"))?;
    ReadPass::run(cx, Mode::Rewrite, source)?;
    if let Some(OnInsert::OnConflict(oc)) = &mut i.on {
        if let OnConflictAction::DoUpdate(du) = &mut oc.action {
            require(o, "edit")?;
            for a in &du.assignments {
                if let AssignmentTarget::ColumnName(n) = &a.target {
                    let c = parts(n)?.pop().unwrap_or_default();
                    if o.column(&c).is_none_or(|col| col.edit.is_nothing()) {
                        return Err(read_only_field(o, &c));
                    }
                }
            }
            refuse_hidden_refs(o, &alias, &du.assignments)?;
            refuse_hidden_refs(o, &alias, &du.selection)?;
            ReadPass::run(cx, Mode::Rewrite, &mut du.assignments)?;
            let fence = leakproof::needs_fence(&du.selection);
            ReadPass::run_fenced(cx, Mode::Rewrite, &mut du.selection, fence)?;
            let qual = |c: &str| format!("{}.{}", ident(&alias), ident(c));
            let scope = pred_sql(cx.eff, o, &o.edit, &qual, 0);
            let guarded = guarded_where(cx, du.selection.take(), &scope, fence)?;
            du.selection = Some(and(guarded, cx.parse_generated_expr(&scope)?));
        }
    } else if i.on.is_some() {
        return Err(ClientError::unsupported(
            "pgveil does not support this ON clause",
        ));
    }
    let rows = match source.body.as_ref() {
        SetExpr::Values(v) => Some(v.rows.len()),
        _ => None,
    };
    wrap_insert_source(cx, o, i, &user_cols, rows)?;
    rewrite_returning(cx, o, &alias, &mut i.returning)
}

/// Route the INSERT source through a scope check (and bulk check), filling scope columns
/// the user omitted from their identity.
fn wrap_insert_source(
    cx: &Cx<'_>,
    o: &ObjectPolicy,
    i: &mut Insert,
    user_cols: &[String],
    values_rows: Option<usize>,
) -> Result<(), ClientError> {
    let r = &cx.eff.restrictions;
    let bulk_limited = !r.bulk_operations;
    if o.create == RowPred::All && !bulk_limited {
        return Ok(());
    }
    if let (Some(n), true) = (values_rows, bulk_limited) {
        if n as i64 > r.bulk_threshold {
            return Err(ClientError::denied(format!(
                "bulk insert of {n} rows into {} is not allowed for your roles (limit {})",
                o.object, r.bulk_threshold
            )));
        }
    }
    let Some(source) = i.source.as_mut() else {
        return Ok(());
    };
    // Fill omitted scope columns from the user's identity.
    let mut fills: Vec<(String, String)> = Vec::new();
    if let RowPred::Any(atoms) = &o.create {
        let user = cx.snap.user(&cx.eff.user);
        for a in atoms {
            let fill = match a {
                Atom::Owner(v) => o.owner_column.clone().map(|c| (c, literal(v))),
                Atom::Departments(_) => o
                    .department_column
                    .clone()
                    .zip(user.and_then(|u| u.department.clone()).map(|d| literal(&d))),
                Atom::Teams(_) => o
                    .team_column
                    .clone()
                    .zip(user.and_then(|u| u.teams.first()).map(|t| literal(t))),
                Atom::Parent => None,
            };
            if let Some((c, v)) = fill {
                if !user_cols.contains(&c) && !fills.iter().any(|f| f.0 == c) {
                    fills.push((c, v));
                }
            }
        }
    }
    let types: Vec<String> = user_cols
        .iter()
        .map(|c| {
            o.column(c)
                .map_or_else(|| "text".to_owned(), |c| c.type_name.clone())
        })
        .collect();
    let source_sql = match source.body.as_ref() {
        SetExpr::Values(v)
            if source.with.is_none()
                && source.order_by.is_none()
                && source.limit_clause.is_none() =>
        {
            let mut rows = Vec::new();
            for row in &v.rows {
                if row.len() != user_cols.len() {
                    return Err(ClientError::denied(
                        "INSERT has more expressions than target columns",
                    ));
                }
                let mut cells = Vec::new();
                for (e, t) in row.iter().zip(&types) {
                    if matches!(e, Expr::Identifier(id) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
                    {
                        return Err(ClientError::unsupported(
                            "pgveil does not support DEFAULT in a scoped INSERT; omit the column instead",
                        ));
                    }
                    cells.push(format!("CAST(({e}) AS {t})"));
                }
                rows.push(format!("({})", cells.join(", ")));
            }
            format!("VALUES {}", rows.join(", "))
        }
        _ => source.to_string(),
    };
    let new_cols: Vec<String> = user_cols.iter().map(|c| ident(c)).collect();
    let v = |c: &str| -> String {
        fills
            .iter()
            .find(|f| f.0 == c)
            .map_or_else(|| format!("pgveil_new.{}", ident(c)), |f| f.1.clone())
    };
    let scope = pred_sql(cx.eff, o, &o.create, &v, 0);
    let mut select_list: Vec<String> = user_cols
        .iter()
        .map(|c| format!("pgveil_new.{}", ident(c)))
        .collect();
    select_list.extend(fills.iter().map(|f| f.1.clone()));
    let mut conds = vec![format!(
        "pgveil.assert_scope({scope}, {})",
        literal(&format!(
            "new {} record is outside your data scope",
            o.object
        ))
    )];
    if bulk_limited && values_rows.is_none() {
        conds.push(format!(
            "pgveil.assert_scope((SELECT count(*) FROM ({source_sql}) AS pgveil_n) <= {}, {})",
            r.bulk_threshold,
            literal(&format!(
                "bulk insert into {} is not allowed for your roles (bulk operations are off)",
                o.object
            ))
        ));
    }
    let text = format!(
        "SELECT {} FROM ({source_sql}) AS pgveil_new({}) WHERE {}",
        select_list.join(", "),
        new_cols.join(", "),
        conds.join(" AND ")
    );
    let q = cx.parse_generated_query(&text)?;
    i.columns = user_cols
        .iter()
        .chain(fills.iter().map(|f| &f.0))
        .map(|c| ObjectName::from(vec![sqlparser::ast::Ident::with_quote('"', c.clone())]))
        .collect();
    i.source = Some(Box::new(q));
    Ok(())
}
