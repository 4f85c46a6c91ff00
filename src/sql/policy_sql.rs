//! Rendering compiled policy as SQL: row predicates, masked columns, and the policy
//! subquery that replaces every read of a protected table:
//! `(SELECT id, name, CAST(NULL AS text) AS phone, … FROM "public"."customers" WHERE <scope>)`.

use crate::policy::compile::{Atom, ColumnRead, Effective, ObjectPolicy, RowPred};
use crate::policy::model::Mask;

/// Quote an identifier for PostgreSQL.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quote a string literal (standard_conforming_strings is pinned on; backslashes are
/// printed with E'' so no tokenizer can disagree about them).
pub fn literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn list(values: &[String]) -> String {
    values
        .iter()
        .map(|v| literal(v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Maximum depth of parent-scope chains (orders → customers → accounts …).
const MAX_PARENT_DEPTH: usize = 6;

/// How to refer to a column of the object inside a predicate.
pub type ColRef<'a> = &'a dyn Fn(&str) -> String;

/// SQL for a row predicate over `o`; `col` renders a column reference.
pub fn pred_sql(
    eff: &Effective,
    o: &ObjectPolicy,
    p: &RowPred,
    col: ColRef<'_>,
    depth: usize,
) -> String {
    match p {
        RowPred::All => "TRUE".into(),
        RowPred::Any(atoms) if atoms.is_empty() => "FALSE".into(),
        RowPred::Any(atoms) => {
            let parts: Vec<String> = atoms
                .iter()
                .map(|a| atom_sql(eff, o, a, col, depth))
                .collect();
            if parts.len() == 1 {
                parts.into_iter().next().unwrap_or_else(|| "FALSE".into())
            } else {
                format!("({})", parts.join(" OR "))
            }
        }
    }
}

fn atom_sql(eff: &Effective, o: &ObjectPolicy, a: &Atom, col: ColRef<'_>, depth: usize) -> String {
    match a {
        Atom::Owner(v) => match &o.owner_column {
            Some(c) => format!("{} = {}", col(c), literal(v)),
            None => "FALSE".into(),
        },
        Atom::Departments(ds) => match &o.department_column {
            Some(c) if !ds.is_empty() => format!("{} IN ({})", col(c), list(ds)),
            _ => "FALSE".into(),
        },
        Atom::Teams(ts) => match &o.team_column {
            Some(c) if !ts.is_empty() => format!("{} IN ({})", col(c), list(ts)),
            _ => "FALSE".into(),
        },
        Atom::Parent => {
            let parent = o
                .parent
                .as_ref()
                .and_then(|(p, fk)| eff.object_by_name(p).map(|po| (po, fk)));
            match parent {
                Some((po, fk)) if depth < MAX_PARENT_DEPTH && !po.missing => format!(
                    "{} IN (SELECT pgveil_parent.{} FROM ({}) AS pgveil_parent)",
                    col(fk),
                    ident(&po.primary_key),
                    read_subquery(eff, po, depth + 1)
                ),
                _ => "FALSE".into(),
            }
        }
    }
}

/// The masked value of a column, referring to it as `c`.
pub fn mask_sql(m: Mask, c: &str, type_name: &str) -> String {
    match m {
        Mask::Null => format!("CAST(NULL AS {type_name})"),
        Mask::Redact => format!("CASE WHEN {c} IS NULL THEN NULL ELSE '****' END"),
        Mask::Partial => format!(
            "CASE WHEN {c} IS NULL THEN NULL ELSE repeat('*', greatest(length({c}) - 4, 0)) || right({c}, 4) END"
        ),
        Mask::Hash => format!("md5(CAST({c} AS text))"),
    }
}

/// The read policy query for `o` (no parentheses, no alias).
pub fn read_subquery(eff: &Effective, o: &ObjectPolicy, depth: usize) -> String {
    let plain = |c: &str| ident(c);
    let cols: Vec<String> = o
        .columns
        .iter()
        .map(|c| {
            let name = ident(&c.name);
            match &c.read {
                ColumnRead::Visible => name,
                ColumnRead::Hidden(m) => format!("{} AS {name}", mask_sql(*m, &name, &c.type_name)),
                ColumnRead::When(p, m) => format!(
                    "CASE WHEN {} THEN {name} ELSE {} END AS {name}",
                    pred_sql(eff, o, p, &plain, depth),
                    mask_sql(*m, &name, &c.type_name)
                ),
            }
        })
        .collect();
    let cols = if cols.is_empty() {
        "NULL AS pgveil_no_columns".to_owned()
    } else {
        cols.join(", ")
    };
    format!(
        "SELECT {cols} FROM {}.{} WHERE {}",
        ident(&o.schema),
        ident(&o.table),
        pred_sql(eff, o, &o.read, &plain, depth)
    )
}

/// The read scope of `o` as a predicate on the columns of `alias`, for a table the user sees
/// in full (no masked or conditional column): reading `t AS alias WHERE <this> AND (…)` is then
/// the same as reading the policy subquery, and PostgreSQL plans it faster. None when any
/// column is masked (those need the subquery, so masks apply before anything else).
pub fn flat_scope(eff: &Effective, o: &ObjectPolicy, alias: &str) -> Option<String> {
    if o.columns.is_empty() || o.columns.iter().any(|c| c.read != ColumnRead::Visible) {
        return None;
    }
    let qualified = |c: &str| format!("{}.{}", ident(alias), ident(c));
    Some(pred_sql(eff, o, &o.read, &qualified, 0))
}

/// All columns of the rows of `o` admitted by `p`, unmasked: used only inside write checks
/// (counting rows for bulk limits), never returned to the client.
pub fn scoped_rows(eff: &Effective, o: &ObjectPolicy, p: &RowPred) -> String {
    let plain = |c: &str| ident(c);
    format!(
        "SELECT * FROM {}.{} WHERE {}",
        ident(&o.schema),
        ident(&o.table),
        pred_sql(eff, o, p, &plain, 0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("o'neil"), "'o''neil'");
        assert_eq!(literal("a\\'b"), "E'a\\\\\\'b'");
    }
}
