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

/// Could `sql` be the password change [`intercept`] handles? Cheap, run on every statement:
/// the text must begin with ALTER (after blanks, comments and empty statements, as
/// PostgreSQL and sqlparser read it) and mention PASSWORD anywhere. On doubt (an unterminated
/// comment), yes: the parser decides.
pub fn may_change_password(sql: &[u8]) -> bool {
    may_start_with_alter(sql) && mentions_password(sql)
}

fn mentions_password(b: &[u8]) -> bool {
    memchr::memchr2_iter(b'p', b'P', b).any(|i| {
        b.get(i..i + 8)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"password"))
    })
}

fn may_start_with_alter(sql: &[u8]) -> bool {
    let mut rest = sql;
    loop {
        rest = match rest {
            [c, tail @ ..] if c.is_ascii_whitespace() || *c == 0x0b || *c == b';' => tail,
            [b'-', b'-', tail @ ..] => match memchr::memchr2(b'\n', b'\r', tail) {
                Some(end) => &tail[end + 1..],
                None => return false, // a comment and nothing after it
            },
            [b'/', b'*', tail @ ..] => match after_block_comment(tail) {
                Some(after) => after,
                None => return true,
            },
            _ => {
                return rest
                    .get(..5)
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"alter"))
            }
        };
    }
}

/// What follows a (nested) block comment whose opening `/*` came just before `b`.
fn after_block_comment(b: &[u8]) -> Option<&[u8]> {
    let mut depth = 1usize;
    let mut i = 0;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(&b[i..]);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// If `sql` is a password change, the verdict for it.
pub fn intercept(cx: &PasswordCtx<'_>, sql: &str) -> Option<Verdict> {
    if !may_change_password(sql.as_bytes()) {
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

#[cfg(test)]
mod tests {
    use super::may_change_password;

    #[test]
    fn only_texts_beginning_with_alter_and_naming_a_password_pass_the_filter() {
        let yes = [
            "ALTER USER bob PASSWORD 'x'",
            "  alter role bob with password 'x'",
            ";; ALTER USER bob PASSWORD 'x'",
            "-- note\nALTER USER bob PASSWORD 'x'",
            "/* a /* nested */ comment */ALTER USER bob PASSWORD 'x'",
            "\x0b\x0c\tAlTeR USER bob PaSsWoRd 'x'",
            "/* unterminated ALTER USER bob PASSWORD 'x'", // doubt: the parser decides
        ];
        let no = [
            "SELECT 'password' FROM t",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "ALTER TABLE t ADD COLUMN c int",
            "-- ALTER USER bob PASSWORD 'x'",
            "/* ALTER USER bob PASSWORD 'x' */ SELECT 1",
            "",
        ];
        for sql in yes {
            assert!(may_change_password(sql.as_bytes()), "{sql:?}");
        }
        for sql in no {
            assert!(!may_change_password(sql.as_bytes()), "{sql:?}");
        }
    }
}
