//! Simple-protocol templates as upstream prepared statements. A cached, enforced template
//! (`normalize`) can run in PostgreSQL as a prepared statement with the statement's literals
//! bound as text parameters, so PostgreSQL parses and plans the enforced SQL, scope predicate
//! included, once per session instead of once per statement.
//!
//! A bound parameter must mean exactly what the literal meant. A number literal is bound with
//! the type PostgreSQL gives that literal (`int4`, `int8` or `numeric`), which is the same
//! value anywhere except where an integer constant is a column position (ORDER BY, GROUP BY,
//! DISTINCT ON). A string literal has type `unknown` and takes its type from its context; a
//! parameter of unspecified type does too, but only where that context gives it a type:
//! compared with a typed expression, an IN list, LIKE, BETWEEN, a cast, an INSERT value, an
//! assignment, LIMIT and OFFSET. Elsewhere (`'a' IS NULL`, `concat('a', 1)`) PostgreSQL would
//! fail to determine its type, so such statements keep their literals in the text.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Distinct, Expr, GroupByExpr, LimitClause, OnConflictAction, OnInsert, Query,
    SetExpr, Statement, Value, ValueWithSpan, Visit, Visitor,
};

/// PostgreSQL type OIDs of number literals.
const INT4: u32 = 23;
const INT8: u32 = 20;
const NUMERIC: u32 = 1700;

/// How an enforced template may run as a prepared statement.
#[derive(Debug)]
pub struct BindPlan {
    /// Unique per cached template: the session's key for its prepared statement.
    pub id: u64,
    /// The enforced template, with `$1…$n` for the statement's literals.
    pub sql: String,
    /// Per literal: may it be a number, may it be a string.
    slots: Vec<Slot>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    number: bool,
    string: bool,
}

/// A statement's literals as parameters: types (0 = unspecified) and text values.
#[derive(Debug, PartialEq, Eq)]
pub struct Params {
    pub types: Vec<u32>,
    pub values: Vec<String>,
}

/// The plan for `template` (an enforced statement whose literals are `$1…$n`), if every
/// placeholder appears exactly once in a statement that can be prepared.
pub fn plan(id: u64, template: &str, stmt: &Statement) -> Option<BindPlan> {
    if !matches!(
        stmt,
        Statement::Query(_) | Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)
    ) {
        return None;
    }
    let mut scan = Scan::default();
    let _ = stmt.visit(&mut scan);
    let n = scan.seen.len();
    if scan.bad || n == 0 || (1..=n).any(|i| scan.seen.get(i - 1) != Some(&1)) {
        return None;
    }
    let slots = (1..=n)
        .map(|i| Slot {
            number: !scan.positional.contains(&i),
            string: scan.typed.contains(&i) && !scan.positional.contains(&i),
        })
        .collect();
    Some(BindPlan {
        id,
        sql: template.to_owned(),
        slots,
    })
}

impl BindPlan {
    /// The parameters for `literals` (as `normalize` gives them), or None if one of them
    /// cannot be bound where it stands.
    pub fn params(&self, literals: &[String]) -> Option<Params> {
        if literals.len() != self.slots.len() {
            return None;
        }
        let mut types = Vec::with_capacity(literals.len());
        let mut values = Vec::with_capacity(literals.len());
        for (lit, slot) in literals.iter().zip(&self.slots) {
            let (ty, value) = param(lit)?;
            let ok = if ty == 0 { slot.string } else { slot.number };
            if !ok {
                return None;
            }
            types.push(ty);
            values.push(value);
        }
        Some(Params { types, values })
    }
}

/// Type and text of one literal: `'…'` (no backslash) or an unsigned number.
fn param(lit: &str) -> Option<(u32, String)> {
    if let Some(inner) = lit.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return Some((0, inner.replace("''", "'")));
    }
    let b = lit.as_bytes();
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_digit() || *c == b'.') {
        return None;
    }
    // After a minus sign these two are int4 / int8 literals in PostgreSQL (their negation
    // fits), while a parameter would be int8 / numeric: keep them in the text.
    if lit
        .parse::<u64>()
        .is_ok_and(|v| v == 1 << 31 || v == 1 << 63)
    {
        return None;
    }
    // PostgreSQL: an integer that fits int4 is int4, else int8, else numeric.
    let ty = if lit.contains('.') {
        NUMERIC
    } else if lit.parse::<i32>().is_ok() {
        INT4
    } else if lit.parse::<i64>().is_ok() {
        INT8
    } else {
        NUMERIC
    };
    Some((ty, lit.to_owned()))
}

/// Where the placeholders of a statement stand.
#[derive(Default)]
struct Scan {
    /// Occurrences of `$i` at index i-1.
    seen: Vec<u32>,
    /// Placeholders whose context gives an unspecified parameter a type.
    typed: HashSet<usize>,
    /// Placeholders inside ORDER BY, GROUP BY or DISTINCT ON (integer = column position).
    positional: HashSet<usize>,
    /// Something that is not a `$n` placeholder of ours.
    bad: bool,
}

/// `$i` if `e` is a placeholder.
fn placeholder(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => p.strip_prefix('$')?.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// A literal, placeholder or NULL: no type for an unspecified parameter to take.
fn untyped(e: &Expr) -> bool {
    matches!(e, Expr::Value(_))
}

fn is_comparison(op: &BinaryOperator) -> bool {
    use BinaryOperator as B;
    matches!(op, B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq)
}

impl Scan {
    fn typed_if_placeholder(&mut self, e: &Expr) {
        if let Some(i) = placeholder(e) {
            self.typed.insert(i);
        }
    }

    /// Every placeholder inside `node` is in a column-position context.
    fn positional_in<V: Visit>(&mut self, node: &V) {
        let mut inner = Collect::default();
        let _ = node.visit(&mut inner);
        self.positional.extend(inner.0);
    }

    fn typed_contexts(&mut self, e: &Expr) {
        match e {
            Expr::BinaryOp { left, op, right } if is_comparison(op) => {
                if !untyped(right) {
                    self.typed_if_placeholder(left);
                }
                if !untyped(left) {
                    self.typed_if_placeholder(right);
                }
            }
            Expr::InList { expr, list, .. } if !untyped(expr) => {
                for item in list {
                    self.typed_if_placeholder(item);
                }
            }
            Expr::Like {
                expr,
                pattern,
                escape_char: None,
                any: false,
                ..
            }
            | Expr::ILike {
                expr,
                pattern,
                escape_char: None,
                any: false,
                ..
            }
            | Expr::SimilarTo {
                expr,
                pattern,
                escape_char: None,
                ..
            } if !untyped(expr) => self.typed_if_placeholder(pattern),
            Expr::Between {
                expr, low, high, ..
            } if !untyped(expr) => {
                self.typed_if_placeholder(low);
                self.typed_if_placeholder(high);
            }
            Expr::Cast {
                expr, format: None, ..
            } => self.typed_if_placeholder(expr),
            _ => {}
        }
    }

    fn query_contexts(&mut self, q: &Query) {
        if let Some(order_by) = &q.order_by {
            self.positional_in(order_by);
        }
        match &q.limit_clause {
            Some(LimitClause::LimitOffset { limit, offset, .. }) => {
                if let Some(l) = limit {
                    self.typed_if_placeholder(l);
                }
                if let Some(o) = offset {
                    self.typed_if_placeholder(&o.value);
                }
            }
            Some(LimitClause::OffsetCommaLimit { .. }) => self.bad = true,
            None => {}
        }
        self.set_expr_contexts(&q.body);
    }

    fn set_expr_contexts(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Select(s) => {
                if let GroupByExpr::Expressions(exprs, _) = &s.group_by {
                    self.positional_in(exprs);
                }
                if let Some(Distinct::On(exprs)) = &s.distinct {
                    self.positional_in(exprs);
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr_contexts(left);
                self.set_expr_contexts(right);
            }
            _ => {}
        }
    }

    fn statement_contexts(&mut self, stmt: &Statement) {
        match stmt {
            Statement::Insert(ins) => {
                if let Some(SetExpr::Values(v)) = ins.source.as_ref().map(|q| q.body.as_ref()) {
                    for row in &v.rows {
                        for item in &row.content {
                            self.typed_if_placeholder(item);
                        }
                    }
                }
                if let Some(OnInsert::OnConflict(c)) = &ins.on {
                    if let OnConflictAction::DoUpdate(u) = &c.action {
                        for a in &u.assignments {
                            self.typed_if_placeholder(&a.value);
                        }
                    }
                }
            }
            Statement::Update(u) => {
                for a in &u.assignments {
                    self.typed_if_placeholder(&a.value);
                }
            }
            _ => {}
        }
    }
}

impl Visitor for Scan {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        self.statement_contexts(stmt);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        self.query_contexts(q);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        self.typed_contexts(e);
        ControlFlow::Continue(())
    }

    fn pre_visit_value(&mut self, v: &ValueWithSpan) -> ControlFlow<()> {
        if let Value::Placeholder(p) = &v.value {
            match p.strip_prefix('$').and_then(|d| d.parse::<usize>().ok()) {
                Some(i) if (1..=65_535).contains(&i) => {
                    if self.seen.len() < i {
                        self.seen.resize(i, 0);
                    }
                    self.seen[i - 1] += 1;
                }
                _ => self.bad = true,
            }
        }
        ControlFlow::Continue(())
    }
}

/// Placeholders inside a node.
#[derive(Default)]
struct Collect(Vec<usize>);

impl Visitor for Collect {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Some(i) = placeholder(e) {
            self.0.push(i);
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn plan_of(sql: &str) -> Option<BindPlan> {
        let stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        plan(1, sql, &stmt)
    }

    fn binds(sql: &str, literals: &[&str]) -> Option<Params> {
        let lits: Vec<String> = literals.iter().map(|s| (*s).to_owned()).collect();
        plan_of(sql)?.params(&lits)
    }

    #[test]
    fn numbers_take_the_literal_type() {
        let p = binds(
            "SELECT a FROM t WHERE a = $1 AND b = $2 AND c = $3 AND d = $4",
            &["5", "3000000000", "99999999999999999999", "1.5"],
        )
        .unwrap();
        assert_eq!(p.types, vec![INT4, INT8, NUMERIC, NUMERIC]);
        assert_eq!(p.values[1], "3000000000");
        // -2147483648 is int4 in PostgreSQL, -9223372036854775808 int8: not bound
        for edge in ["2147483648", "02147483648", "9223372036854775808"] {
            assert!(binds("SELECT -$1", &[edge]).is_none(), "{edge}");
        }
        assert_eq!(
            binds("SELECT -$1", &["2147483649"]).unwrap().types,
            vec![INT8]
        );
        // anywhere an expression goes, except column positions
        assert!(binds("SELECT $1, a + $2 FROM t", &["1", "2"]).is_some());
        assert!(binds("SELECT a FROM t ORDER BY $1", &["1"]).is_none());
        assert!(binds("SELECT a FROM t GROUP BY $1", &["1"]).is_none());
        assert!(binds("SELECT DISTINCT ON ($1) a FROM t", &["1"]).is_none());
        assert!(binds("SELECT a FROM t ORDER BY a + $1", &["1"]).is_none());
        assert!(binds("SELECT a FROM t LIMIT $1 OFFSET $2", &["1", "2"]).is_some());
    }

    #[test]
    fn strings_only_where_the_context_types_them() {
        let p = binds("SELECT a FROM t WHERE b = $1", &["'it''s'"]).unwrap();
        assert_eq!(p.types, vec![0]);
        assert_eq!(p.values, vec!["it's"]);
        for ok in [
            "SELECT a FROM t WHERE $1 <> b",
            "SELECT a FROM t WHERE b IN ($1)",
            "SELECT a FROM t WHERE b LIKE $1",
            "SELECT a FROM t WHERE b BETWEEN $1 AND 'z'",
            "SELECT $1::date",
            "INSERT INTO t (b) VALUES ($1)",
            "UPDATE t SET b = $1",
            "INSERT INTO t (b) VALUES ('x') ON CONFLICT (b) DO UPDATE SET b = $1",
        ] {
            assert!(binds(ok, &["'x'"]).is_some(), "{ok}");
        }
        for refused in [
            "SELECT $1",
            "SELECT a FROM t WHERE $1 IS NULL",
            "SELECT concat($1, 1)",
            "SELECT a FROM t WHERE 'y' = $1",
            "SELECT a FROM t WHERE b = $1 || 'x'",
            "SELECT a FROM t ORDER BY b = $1",
            "SELECT a FROM t WHERE j @> $1",
            "SELECT a FROM t WHERE b LIKE $1 ESCAPE '!'",
        ] {
            assert!(binds(refused, &["'x'"]).is_none(), "{refused}");
        }
        // not a string literal pgveil can bind (backslash: E'')
        assert!(binds("SELECT a FROM t WHERE b = $1", &["E'\\\\'"]).is_none());
    }

    #[test]
    fn placeholders_must_each_appear_once() {
        assert!(plan_of("SELECT a FROM t WHERE a = $1 OR b = $1").is_none());
        assert!(plan_of("SELECT a FROM t WHERE a = $2").is_none());
        assert!(plan_of("SELECT a FROM t").is_none());
        assert!(plan_of("SET x = $1").is_none());
        assert!(plan_of("SELECT a FROM t WHERE a = $1")
            .unwrap()
            .params(&["1".into(), "2".into()])
            .is_none());
    }
}
