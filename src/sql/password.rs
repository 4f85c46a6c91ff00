//! `ALTER USER name PASSWORD '…'` (and psql's `\password`, which sends a SCRAM verifier)
//! through pgveil: stored as a SCRAM verifier in the catalog, never as a PostgreSQL role
//! password, never cached and never logged. A user may change their own password; changing
//! someone else's needs `manage_users` (or unrestricted access).

use sqlparser::ast::{AlterRoleOperation, Expr, Password, RoleOption, Statement, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::policy_sql::literal;
use super::resolve::fold;
use super::Verdict;
use crate::config::PasswordPolicy;
use crate::error::ClientError;
use crate::policy::password::{check_policy, make_verifier, parse_verifier};
use crate::policy::Effective;

/// Everything a password change depends on.
pub struct PasswordCtx<'a> {
    pub user: &'a str,
    pub eff: Option<&'a Effective>,
    pub policy: &'a PasswordPolicy,
    /// The catalog lives in the upstream database (the UPDATE can be sent upstream).
    pub catalog_upstream: bool,
}

/// Cheap pre-filter run on every statement: no allocation, case-insensitive.
fn mentions_password(sql: &str) -> bool {
    let b = sql.as_bytes();
    memchr::memchr2_iter(b'p', b'P', b).any(|i| {
        b.get(i..i + 8)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"password"))
    })
}

/// If `sql` is a password change, the verdict for it.
pub fn intercept(cx: &PasswordCtx<'_>, sql: &str) -> Option<Verdict> {
    if !mentions_password(sql) {
        return None;
    }
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::AlterRole {
        name,
        operation: AlterRoleOperation::WithOptions { options },
    }] = stmts.as_slice()
    else {
        return None;
    };
    let password = options.iter().find_map(|o| match o {
        RoleOption::Password(p) => Some(p),
        _ => None,
    })?;
    let refuse = |error: ClientError| {
        Some(Verdict::Refuse {
            prefix: String::new(),
            error,
        })
    };
    if options.len() != 1 {
        return refuse(ClientError::unsupported(
            "through pgveil, ALTER USER may only change the password",
        ));
    }
    let target = match fold(name) {
        Ok(t) => t,
        Err(e) => return refuse(e),
    };
    let allowed = target == cx.user
        || cx
            .eff
            .is_some_and(|e| e.unrestricted || e.system_permissions.contains("manage_users"));
    if !allowed {
        return refuse(ClientError::denied(format!(
            "permission denied to change the password of \"{target}\": needs manage_users"
        )));
    }
    if !cx.catalog_upstream {
        return refuse(ClientError::unsupported(
            "password changes through pgveil need the catalog in the upstream database; use `pgveil user passwd`",
        ));
    }
    let text = match password {
        Password::Password(Expr::Value(v)) => match &v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => s.clone(),
            _ => {
                return refuse(ClientError::InvalidParameter(
                    "the password must be a string literal".into(),
                ))
            }
        },
        _ => {
            return refuse(ClientError::InvalidParameter(
                "the password must be a string literal".into(),
            ))
        }
    };
    let verifier = if text.starts_with("SCRAM-SHA-256$") {
        // psql \password hashes on the client: the plaintext never reaches us.
        if parse_verifier(&text).is_none() {
            return refuse(ClientError::InvalidParameter(
                "invalid SCRAM-SHA-256 verifier".into(),
            ));
        }
        text
    } else if text.starts_with("md5") && text.len() == 35 {
        return refuse(ClientError::InvalidParameter(
            "pgveil stores SCRAM-SHA-256 verifiers only; md5 is not accepted".into(),
        ));
    } else {
        if let Err(why) = check_policy(cx.policy, &text) {
            return refuse(ClientError::InvalidParameter(why));
        }
        make_verifier(&text)
    };
    Some(Verdict::Forward(format!(
        "UPDATE pgveil.users SET password_verifier = {} WHERE name = {}",
        literal(&verifier),
        literal(&target)
    )))
}
