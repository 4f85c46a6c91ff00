//! Which statements could let PostgreSQL evaluate a user's expression on a row outside the
//! user's scope.
//!
//! A policy subquery is a plain subquery: PostgreSQL flattens it (or pgveil reads the table in
//! place with the scope first in WHERE), orders a scan's conditions by estimated cost, and turns
//! a parent scope (`fk IN (SELECT …)`) into a semi-join that may run after the scan's own
//! conditions. An expression that can fail depending on a row's values (`1 / (id - 143)`,
//! `CAST(amount AS text)::bool`) would then fail on a row outside the scope, and its error says
//! what is in that row. PostgreSQL's row-level security lets only leakproof conditions run
//! before the policy; pgveil does the same in two steps. A statement whose conditions are all
//! leakproof by their form (columns, constants, comparisons, `= ANY`/`ALL`, AND/OR/NOT,
//! IS [NOT] NULL, IN lists, BETWEEN) is planned freely; any other statement reads every
//! protected table through a fenced policy subquery (`OFFSET 0`), which PostgreSQL neither
//! flattens nor pushes conditions into, so the scope filters each row before any expression
//! of the user sees it. UPDATE, DELETE and ON CONFLICT DO UPDATE put their WHERE behind the
//! target's scope instead (`sql::write`).
//!
//! The select list, GROUP BY, ORDER BY, DISTINCT and WINDOW of the outermost SELECT are
//! evaluated after every scan, join and filter of that SELECT, so they need no fence (the
//! queries nested in them are checked like the rest).

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, BinaryOperator as B, Expr, GroupByExpr, Query, SetExpr, UnaryOperator,
    Visit, Visitor,
};

/// Could any expression in `node` fail on a row outside the scope, if it ran first?
pub fn needs_fence<T: Visit>(node: &T) -> bool {
    visit_expressions(node, |e| {
        if leakproof_form(e) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    })
    .is_break()
}

/// The same for a whole query, whose outermost SELECT's output clauses run last.
pub fn query_needs_fence(q: &Query) -> bool {
    let SetExpr::Select(s) = q.body.as_ref() else {
        return needs_fence(q);
    };
    let mut input = s.as_ref().clone();
    input.projection.clear();
    input.group_by = GroupByExpr::Expressions(Vec::new(), Vec::new());
    input.sort_by.clear();
    input.distinct = None;
    input.named_window.clear();
    needs_fence(&q.with)
        || needs_fence(&input)
        || needs_fence(&q.limit_clause)
        || needs_fence(&q.fetch)
        || nested_query_needs_fence(&s.projection)
        || nested_query_needs_fence(&s.group_by)
        || nested_query_needs_fence(&s.sort_by)
        || nested_query_needs_fence(&s.distinct)
        || nested_query_needs_fence(&s.named_window)
        || nested_query_needs_fence(&q.order_by)
}

/// Does a query nested anywhere in `node` need the fence?
fn nested_query_needs_fence<T: Visit>(node: &T) -> bool {
    struct Nested;
    impl Visitor for Nested {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if needs_fence(q) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    node.visit(&mut Nested).is_break()
}

/// Expressions that cannot fail whatever the row holds (their parts are checked too).
/// Casts and signs are allowed on constants only: a cast of a column may fail on its value.
fn leakproof_form(e: &Expr) -> bool {
    match e {
        Expr::Identifier(_)
        | Expr::CompoundIdentifier(_)
        | Expr::Value(_)
        | Expr::TypedString(_)
        | Expr::Nested(_)
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsNotTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsNotFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotUnknown(_)
        | Expr::IsDistinctFrom(..)
        | Expr::IsNotDistinctFrom(..)
        | Expr::InList { .. }
        | Expr::Between { .. }
        // their queries are visited as well
        | Expr::InSubquery { .. }
        | Expr::Exists { .. }
        | Expr::Subquery(_)
        // an array of checked elements, as in `id = ANY (ARRAY[1, 2])`
        | Expr::Array(_) => true,
        Expr::BinaryOp { op, .. } => comparison(op) || matches!(op, B::And | B::Or),
        Expr::AnyOp { compare_op, .. } | Expr::AllOp { compare_op, .. } => comparison(compare_op),
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            ..
        } => true,
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        }
        | Expr::Cast { expr, .. } => constant(expr),
        _ => false,
    }
}

fn comparison(op: &B) -> bool {
    matches!(op, B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq)
}

fn constant(e: &Expr) -> bool {
    match e {
        Expr::Value(_) | Expr::TypedString(_) => true,
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } => matches!(**expr, Expr::Value(_)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn fenced(sql: &str) -> bool {
        let mut p = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(sql)
            .expect("tokenizes");
        query_needs_fence(&p.parse_query().expect("parses"))
    }

    #[test]
    fn plain_conditions_are_planned_freely() {
        for sql in [
            "SELECT * FROM payments WHERE id = 5",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "SELECT id, amount * 2, upper(method) FROM payments WHERE paid_at >= '2024-01-01'::date AND (method IN ('card', 'wire') OR amount BETWEEN -1 AND 10) AND card_last4 IS NOT NULL ORDER BY lower(method)",
            "SELECT date_trunc('month', paid_at), sum(amount) FROM payments p JOIN orders o ON o.id = p.order_id WHERE NOT o.status <> 'paid' GROUP BY 1",
            "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.id > 10)",
            "SELECT (SELECT amount FROM payments WHERE order_id = o.id LIMIT 1) FROM orders o",
            "SELECT * FROM customers WHERE id = ANY($1) AND owner <> ALL (ARRAY['a', 'b'])",
        ] {
            assert!(!fenced(sql), "{sql}");
        }
    }

    #[test]
    fn conditions_that_can_fail_on_a_row_need_the_fence() {
        for sql in [
            "SELECT count(*) FROM payments WHERE 1 / (id - 143) > 0",
            "SELECT count(*) FROM payments WHERE (CASE WHEN id = 143 THEN amount::text ELSE 'true' END)::bool",
            "SELECT count(*) FROM customers WHERE name::bool",
            "SELECT * FROM customers WHERE id + 2147483000 > 0",
            "SELECT * FROM customers WHERE name LIKE 'a\\'",
            "SELECT * FROM payments p JOIN orders o ON o.id / (p.id - 143) = 1",
            "SELECT * FROM (SELECT id, 1 / (id - 143) AS x FROM payments) s",
            "WITH s AS (SELECT 1 / (id - 143) AS x FROM payments) SELECT * FROM s",
            "SELECT * FROM payments p, LATERAL (SELECT 1 / (p.id - 143)) x",
            "SELECT * FROM payments p, generate_series(1, 1 / (p.id - 143)) g",
            "SELECT (SELECT max(1 / (id - 143)) FROM payments) FROM orders",
            "SELECT count(*) FROM payments HAVING count(*) > 1 / (min(id) - 143)",
            "SELECT 1 FROM payments UNION SELECT 1 / (id - 143) FROM payments",
            "SELECT -id FROM payments WHERE -id < 0",
            "SELECT * FROM customers WHERE id = ANY (ARRAY[1 / (id - 143)])",
            // a nested query is checked whole (PostgreSQL may pull it up into the outer one)
            "SELECT (SELECT max(amount) FROM payments WHERE order_id = o.id) FROM orders o",
            "SELECT * FROM orders WHERE id IN (SELECT abs(order_id) FROM payments)",
        ] {
            assert!(fenced(sql), "{sql}");
        }
    }
}
