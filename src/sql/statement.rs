//! Allow-list by statement kind for restricted users, and dispatch to the read and write
//! passes. Anything not listed here is refused.

use sqlparser::ast::{CopySource, CopyTarget, Ident, ObjectName, Query, Set, SetExpr, Statement};

use super::read::{Mode, ReadPass};
use super::resolve::{parts, resolve, Resolved};
use super::{write, Cx};
use crate::error::ClientError;
use crate::policy::compile::RowPred;

/// A post-print wrapper (row limit).
pub type Wrap = Box<dyn FnOnce(String) -> String>;

/// Settings a restricted user may change.
const SETTABLE: &[&str] = &[
    "application_name",
    "datestyle",
    "timezone",
    "time zone",
    "intervalstyle",
    "extra_float_digits",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "client_min_messages",
    "bytea_output",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "transaction_isolation",
    "work_mem",
    "jit",
    "enable_seqscan",
    "geqo",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "xmloption",
    "intervalstyle",
    "transaction_read_only",
    "default_transaction_deferrable",
    "synchronous_commit",
];

/// May a restricted user change this setting (`SET`, or a startup parameter)? Names are
/// case-insensitive, as PostgreSQL's.
pub fn settable(name: &str) -> bool {
    SETTABLE.contains(&name.to_ascii_lowercase().as_str())
}

/// SQL-level prepared statements live in PostgreSQL, out of pgveil's sight: their names are
/// scoped to the policy they were enforced under (`pgveil_<digest of the user's effective
/// policy>_<name>`), so after a change to *their* policy `EXECUTE` finds no statement (26000)
/// instead of running an outdated rewrite, while unrelated catalog reloads (other users, DDL
/// elsewhere) leave them working.
fn policy_scoped_name(cx: &Cx<'_>, name: &Ident) -> Result<Ident, ClientError> {
    let folded = super::resolve::fold(name)?;
    if folded.len() > MAX_PREPARED_NAME {
        return Err(ClientError::TooComplex(format!(
            "prepared statement names are limited to {MAX_PREPARED_NAME} bytes through pgveil"
        )));
    }
    let fp = cx.eff.content_digest.get(..8).unwrap_or("00000000");
    Ok(Ident::with_quote('"', format!("pgveil_{fp}_{folded}")))
}

/// PostgreSQL's 63-byte identifier limit minus the `pgveil_<8 hex>_` prefix.
const MAX_PREPARED_NAME: usize = 63 - 16;

fn denied_kind(kind: &str) -> ClientError {
    ClientError::Denied {
        message: format!("permission denied: {kind} is not allowed for users with restricted access"),
        hint: Some("pgveil allows queries, DML under policy, transactions, cursors, SET/SHOW, LISTEN/NOTIFY".into()),
    }
}

/// Enforce one statement in place; may return a wrapper applied to the printed SQL.
pub fn enforce(cx: &Cx<'_>, stmt: &mut Statement) -> Result<Option<Wrap>, ClientError> {
    match stmt {
        Statement::Query(q) => {
            if let Some(result) = super::admin::admin_call(cx, q) {
                return result.map(|_| None);
            }
            ReadPass::run_query(cx, Mode::Rewrite, q.as_mut())?;
            Ok(row_limit(cx, q))
        }
        Statement::Insert(i) => write::insert(cx, i).map(|_| None),
        Statement::Update(u) => write::update(cx, u).map(|_| None),
        Statement::Delete(d) => write::delete(cx, d).map(|_| None),
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Discard { .. }
        | Statement::ShowVariable { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::NOTIFY { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => Ok(None),
        Statement::Deallocate { name, .. } => {
            if !(name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all")) {
                *name = policy_scoped_name(cx, name)?;
            }
            Ok(None)
        }
        Statement::Set(set) => check_set(set).map(|_| None),
        Statement::Declare { stmts } => {
            for d in stmts {
                if let Some(q) = &mut d.for_query {
                    ReadPass::run_query(cx, Mode::Rewrite, q.as_mut())?;
                }
            }
            Ok(None)
        }
        Statement::Execute {
            name: Some(name),
            parameters,
            immediate: false,
            into,
            using,
            output: false,
            default: false,
            ..
        } if name.0.len() == 1 && into.is_empty() && using.is_empty() => {
            let folded = Ident::with_quote('"', parts(name)?.remove(0));
            let scoped = policy_scoped_name(cx, &folded)?;
            *name = ObjectName::from(vec![scoped]);
            ReadPass::run(cx, Mode::Rewrite, parameters)?;
            Ok(None)
        }
        Statement::Prepare {
            name, statement, ..
        } => {
            *name = policy_scoped_name(cx, name)?;
            enforce_inner(cx, statement, "PREPARE")
        }
        Statement::Explain { analyze: true, .. } => Err(ClientError::Denied {
            message: "permission denied: EXPLAIN ANALYZE is not allowed for restricted users"
                .into(),
            hint: Some(
                "its row counts would reveal rows outside your data scope; use EXPLAIN".into(),
            ),
        }),
        Statement::Explain { statement, .. } => enforce_inner(cx, statement, "EXPLAIN"),
        Statement::Copy {
            source, to, target, ..
        } => copy(cx, source, *to, target).map(|_| None),
        Statement::CreateTable(_)
        | Statement::AlterTable { .. }
        | Statement::Drop { .. }
        | Statement::CreateView { .. }
        | Statement::CreateIndex(_)
        | Statement::CreateFunction(_)
        | Statement::Truncate { .. } => Err(denied_kind("DDL")),
        Statement::Grant { .. } | Statement::Revoke { .. } => Err(denied_kind("GRANT/REVOKE")),
        Statement::Call(_) => Err(denied_kind("CALL")),
        Statement::Merge(_) => Err(ClientError::unsupported(
            "pgveil does not support MERGE for restricted users",
        )),
        other => Err(ClientError::Unsupported {
            message: format!(
                "pgveil does not support this statement for restricted users: {}",
                kind_of(other)
            ),
            hint: None,
        }),
    }
}

/// The statement inside PREPARE or EXPLAIN: queries and DML only, enforced like any other.
fn enforce_inner(
    cx: &Cx<'_>,
    inner: &mut Statement,
    outer: &str,
) -> Result<Option<Wrap>, ClientError> {
    match inner {
        Statement::Query(_)
        | Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_) => enforce(cx, inner).map(|_| None),
        _ => Err(denied_kind(&format!("{outer} of this statement"))),
    }
}

fn kind_of(s: &Statement) -> String {
    let text = s.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_set(set: &Set) -> Result<(), ClientError> {
    match set {
        Set::SingleAssignment { variable, .. } => {
            let name = parts(variable)?.join(".");
            if settable(&name) {
                Ok(())
            } else {
                Err(ClientError::Denied {
                    message: format!("permission denied to set parameter \"{name}\""),
                    hint: Some(
                        "pgveil pins search_path, role and quoting settings for restricted users"
                            .into(),
                    ),
                })
            }
        }
        Set::SetTimeZone { .. } | Set::SetTransaction { .. } => Ok(()),
        _ => Err(denied_kind("this SET")),
    }
}

/// The role's maximum rows: fail the query in PostgreSQL (no partial result) if exceeded.
fn row_limit(cx: &Cx<'_>, q: &Query) -> Option<Wrap> {
    let max = cx.eff.restrictions.max_rows?;
    if q.locks.is_empty()
        && matches!(
            q.body.as_ref(),
            SetExpr::Select(_)
                | SetExpr::SetOperation { .. }
                | SetExpr::Query(_)
                | SetExpr::Values(_)
        )
    {
        Some(Box::new(move |sql: String| {
            format!(
                "WITH pgveil_rows AS MATERIALIZED ({sql}) SELECT * FROM pgveil_rows WHERE pgveil.assert_limit((SELECT count(*) FROM pgveil_rows) <= {max}, 'query returns more than {max} rows, the maximum your roles allow')"
            )
        }))
    } else {
        None
    }
}

fn copy(
    cx: &Cx<'_>,
    source: &mut CopySource,
    to: bool,
    target: &CopyTarget,
) -> Result<(), ClientError> {
    match target {
        CopyTarget::Stdin | CopyTarget::Stdout => {}
        _ => return Err(denied_kind("COPY to or from a file or program")),
    }
    if to {
        if !cx.eff.restrictions.data_export {
            return Err(ClientError::denied(
                "permission denied: data export is disabled for your roles",
            ));
        }
        if let CopySource::Table {
            table_name,
            columns,
        } = source
        {
            let cols = if columns.is_empty() {
                "*".to_owned()
            } else {
                columns
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let q = cx.parse_generated_query(&format!("SELECT {cols} FROM {table_name}"))?;
            *source = CopySource::Query(Box::new(q));
        }
        if let CopySource::Query(q) = source {
            ReadPass::run(cx, Mode::Rewrite, q.as_mut())?;
        }
        for object in cx.touched() {
            if let Some(o) = cx.eff.object_by_name(&object) {
                if !o.allows("export") {
                    return Err(super::denied_action(o, "export"));
                }
            }
        }
        return Ok(());
    }
    let CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return Err(ClientError::unsupported("COPY (query) FROM is not valid"));
    };
    copy_from(cx, table_name, columns)
}

/// COPY … FROM STDIN: allowed only where every row is acceptable without inspection:
/// `import` granted, create scope `all`, every column writable, bulk operations allowed.
fn copy_from(
    cx: &Cx<'_>,
    table: &ObjectName,
    columns: &[sqlparser::ast::Ident],
) -> Result<(), ClientError> {
    let o = match resolve(cx.snap, cx.search_path, cx.database, table)? {
        Resolved::Object(s, t) => cx.object(&s, &t)?,
        Resolved::Catalog(s, t) => {
            return Err(ClientError::denied(format!(
                "permission denied to modify {s}.{t}"
            )))
        }
    };
    if !o.allows("import") {
        return Err(super::denied_action(o, "import"));
    }
    if !cx.eff.restrictions.bulk_operations {
        return Err(ClientError::denied(format!(
            "permission denied: COPY into {} is a bulk operation, which your roles do not allow",
            o.object
        )));
    }
    if o.create != RowPred::All {
        return Err(ClientError::Denied {
            message: format!("permission denied: COPY into {} needs create scope \"all\"; your scope is narrower", o.object),
            hint: Some("use INSERT so pgveil can check each row against your data scope".into()),
        });
    }
    let names: Vec<String> = if columns.is_empty() {
        o.columns.iter().map(|c| c.name.clone()).collect()
    } else {
        columns
            .iter()
            .map(super::resolve::fold)
            .collect::<Result<_, _>>()?
    };
    for n in names {
        if !o.column(&n).is_some_and(|c| c.create) {
            return Err(ClientError::denied(format!(
                "permission denied to write field {}.{n}: it is not read-write for your roles",
                o.object
            )));
        }
    }
    Ok(())
}

/// Visit every part of a statement that reads data (used by the re-check).
pub fn visit_read_parts(cx: &Cx<'_>, mode: Mode, stmt: &mut Statement) -> Result<(), ClientError> {
    match stmt {
        Statement::Query(q) => ReadPass::run(cx, mode, q.as_mut()),
        Statement::Insert(i) => {
            if let Some(s) = &mut i.source {
                ReadPass::run(cx, mode, s.as_mut())?;
            }
            ReadPass::run(cx, mode, &mut i.on)?;
            ReadPass::run(cx, mode, &mut i.returning)
        }
        Statement::Update(u) => {
            if let Some(f) = &mut u.from {
                ReadPass::run(cx, mode, f)?;
            }
            ReadPass::run(cx, mode, &mut u.assignments)?;
            ReadPass::run(cx, mode, &mut u.selection)?;
            ReadPass::run(cx, mode, &mut u.returning)
        }
        Statement::Delete(d) => {
            if let Some(u) = &mut d.using {
                ReadPass::run(cx, mode, u)?;
            }
            ReadPass::run(cx, mode, &mut d.selection)?;
            ReadPass::run(cx, mode, &mut d.returning)
        }
        Statement::Copy {
            source: CopySource::Query(q),
            ..
        } => ReadPass::run(cx, mode, q.as_mut()),
        Statement::Declare { stmts } => {
            for d in stmts {
                if let Some(q) = &mut d.for_query {
                    ReadPass::run(cx, mode, q.as_mut())?;
                }
            }
            Ok(())
        }
        Statement::Prepare { statement, .. } | Statement::Explain { statement, .. } => {
            visit_read_parts(cx, mode, statement)
        }
        Statement::Execute { parameters, .. } => ReadPass::run(cx, mode, parameters),
        _ => Ok(()),
    }
}
