//! The read pass: every reference to a protected table, wherever it appears, is replaced by
//! its policy subquery (in `post_visit_table_factor`, so inserted subqueries are never
//! revisited). CTE names shadow tables with PostgreSQL's visibility rules: in a plain WITH a
//! CTE is visible to later CTEs and the body; in WITH RECURSIVE to all of them. Functions are
//! checked against the allow-list; string literals with backslashes are printed as E''.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, Ident, ObjectName, Query, Select, SetExpr, TableAlias, TableFactor,
    Value, ValueWithSpan, Visit, VisitMut, VisitorMut,
};

use super::resolve::{fold, parts, resolve, Resolved};
use super::{functions, leakproof, Cx};
use crate::error::ClientError;

struct Frame {
    query: usize,
    visible: Vec<String>,
    pending: Vec<(usize, String)>,
}

/// A relation read with `view` but not `list`: needs a primary-key lookup.
struct ViewOnly {
    alias: String,
    table: String,
    pk: String,
}

/// One SELECT being visited.
#[derive(Default)]
struct SelectFrame {
    view_only: Vec<ViewOnly>,
    /// Address of its only FROM relation when that is a plain table (0 otherwise): a table
    /// the user sees in full may be read there in place, with the scope added to WHERE.
    in_place: usize,
    /// Rewrite: the scope to put first in WHERE.
    scope: Option<Expr>,
    /// Verify: `in_place` is read in place under the scope pgveil generated for it.
    scope_verified: bool,
}

fn tf_addr(tf: &TableFactor) -> usize {
    tf as *const TableFactor as usize
}

/// The only FROM relation of `s`, if it is a plain table without column aliases.
fn single_table(s: &Select) -> Option<&TableFactor> {
    let [twj] = s.from.as_slice() else {
        return None;
    };
    match &twj.relation {
        tf @ TableFactor::Table {
            alias, args: None, ..
        } if twj.joins.is_empty() && alias.as_ref().is_none_or(|a| a.columns.is_empty()) => {
            Some(tf)
        }
        _ => None,
    }
}

/// System columns: readable on a table, absent from a policy subquery.
const SYSTEM_COLUMNS: &[&str] = &["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"];

/// Does any identifier in `node` name a system column?
fn names_system_column<T: Visit>(node: &T) -> bool {
    let is_system = |id: &Ident| {
        SYSTEM_COLUMNS
            .iter()
            .any(|c| id.value.eq_ignore_ascii_case(c))
    };
    let found = sqlparser::ast::visit_expressions(node, |e| match e {
        Expr::Identifier(id) if is_system(id) => ControlFlow::Break(()),
        Expr::CompoundIdentifier(ids) if ids.iter().any(is_system) => ControlFlow::Break(()),
        // functional notation `ctid(t)` reaches a column too
        Expr::Function(f)
            if f.name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(is_system) =>
        {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    found.is_break()
}

/// The first conjunct of a WHERE clause.
fn leading_conjunct(selection: Option<&Expr>) -> Option<&Expr> {
    match selection? {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            ..
        } => Some(left),
        e => Some(e),
    }
}

/// Rewrite, or verify an already rewritten statement (the printer is not trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Rewrite,
    Verify,
}

/// Rewrites (or verifies) reads in whatever it visits.
pub struct ReadPass<'c, 'a> {
    cx: &'c Cx<'a>,
    mode: Mode,
    frames: Vec<Frame>,
    selects: Vec<SelectFrame>,
    /// Verify mode: nesting inside generated policy subqueries.
    trusted: Vec<bool>,
    /// Tables may be read in place (rewrite), or accepted as read in place (verify): the
    /// statement names no system column, which a table read in place would expose and a
    /// policy subquery does not.
    in_place_ok: bool,
    /// Rewrite: the statement has an expression that could fail on a row outside the scope,
    /// so every protected table is read through a fenced policy subquery (see `leakproof`).
    fence: bool,
}

fn addr(q: &Query) -> usize {
    q as *const Query as usize
}

impl<'c, 'a> ReadPass<'c, 'a> {
    pub fn new(cx: &'c Cx<'a>, mode: Mode) -> Self {
        ReadPass {
            cx,
            mode,
            frames: Vec::new(),
            selects: Vec::new(),
            trusted: Vec::new(),
            in_place_ok: false,
            fence: false,
        }
    }

    /// Rewrite (or verify) any visitable node.
    pub fn run<T: VisitMut + Visit>(
        cx: &'c Cx<'a>,
        mode: Mode,
        node: &mut T,
    ) -> Result<(), ClientError> {
        let fence = mode == Mode::Rewrite && leakproof::needs_fence(node);
        Self::run_fenced(cx, mode, node, fence)
    }

    /// Rewrite (or verify) a whole query (whose outermost output clauses run last).
    pub fn run_query(cx: &'c Cx<'a>, mode: Mode, q: &mut Query) -> Result<(), ClientError> {
        let fence = mode == Mode::Rewrite && leakproof::query_needs_fence(q);
        Self::run_fenced(cx, mode, q, fence)
    }

    /// Rewrite (or verify) `node`, with or without fenced policy subqueries.
    pub fn run_fenced<T: VisitMut + Visit>(
        cx: &'c Cx<'a>,
        mode: Mode,
        node: &mut T,
        fence: bool,
    ) -> Result<(), ClientError> {
        let mut pass = ReadPass::new(cx, mode);
        pass.fence = fence;
        pass.in_place_ok = !fence && !names_system_column(node);
        match node.visit(&mut pass) {
            ControlFlow::Break(e) => Err(e),
            ControlFlow::Continue(()) => Ok(()),
        }
    }

    fn cte_visible(&self, name: &str) -> bool {
        self.frames
            .iter()
            .rev()
            .any(|f| f.visible.iter().any(|v| v == name))
    }

    fn rewrite_table(&mut self, tf: &mut TableFactor) -> Result<(), ClientError> {
        let here = tf_addr(tf);
        let TableFactor::Table {
            name,
            alias,
            args,
            with_hints,
            version,
            with_ordinality,
            partitions,
            json_path,
            sample,
            index_hints,
        } = tf
        else {
            return Ok(());
        };
        if let Some(args) = args {
            let _ = args;
            return functions::check_function(&parts(name)?, &self.cx.snap.safe_functions);
        }
        if !with_hints.is_empty()
            || version.is_some()
            || *with_ordinality
            || !partitions.is_empty()
            || json_path.is_some()
            || sample.is_some()
            || !index_hints.is_empty()
        {
            return Err(ClientError::unsupported(format!(
                "pgveil does not support this table modifier on {name}"
            )));
        }
        if name.0.len() == 1 {
            let n = parts(name)?.remove(0);
            if self.cte_visible(&n) {
                return Ok(());
            }
            if n == super::MY_PERMISSIONS {
                let subquery = self
                    .cx
                    .parse_generated_query(&super::my_permissions_sql(self.cx.eff))?;
                let alias = alias.take().unwrap_or_else(|| TableAlias {
                    explicit: true,
                    at: None,
                    name: sqlparser::ast::Ident::new(super::MY_PERMISSIONS),
                    columns: vec![],
                });
                *tf = TableFactor::Derived {
                    lateral: false,
                    subquery: Box::new(subquery),
                    alias: Some(alias),
                    sample: None,
                };
                return Ok(());
            }
        }
        let (schema, table) =
            match resolve(self.cx.snap, self.cx.search_path, self.cx.database, name)? {
                Resolved::Catalog(..) => return Ok(()),
                Resolved::Object(s, t) => (s, t),
            };
        if self.mode == Mode::Verify {
            let in_place = self
                .selects
                .last()
                .is_some_and(|f| f.in_place == here && f.scope_verified);
            return if in_place || self.trusted.iter().any(|t| *t) {
                Ok(())
            } else {
                Err(ClientError::denied(format!(
                    "pgveil internal check failed: {schema}.{table} would be read outside its policy"
                )))
            };
        }
        let o = self.cx.object(&schema, &table)?;
        let list = o.allows("list");
        if !list && !o.allows("view") {
            return Err(super::denied_action(o, "list"));
        }
        let alias_slot = alias;
        let alias = alias_slot.take().unwrap_or_else(|| TableAlias {
            explicit: true,
            at: None,
            name: sqlparser::ast::Ident::with_quote('"', table.clone()),
            columns: vec![],
        });
        if !list {
            let pk = o.primary_key.clone();
            let alias_name = fold(&alias.name)?;
            if let Some(top) = self.selects.last_mut() {
                top.view_only.push(ViewOnly {
                    alias: alias_name,
                    table: table.clone(),
                    pk,
                });
            } else {
                return Err(super::denied_action(o, "list"));
            }
        }
        if self.selects.last().is_some_and(|f| f.in_place == here) {
            if let Some(scope) = self.cx.flat_scope(o, &fold(&alias.name)?)? {
                // Read in place, by its resolved name, with the scope first in WHERE.
                *name = ObjectName::from(vec![
                    Ident::with_quote('"', schema),
                    Ident::with_quote('"', table),
                ]);
                *alias_slot = Some(alias);
                if let Some(top) = self.selects.last_mut() {
                    top.scope = Some(scope);
                }
                return Ok(());
            }
        }
        let subquery = if self.fence {
            self.cx.fenced_policy_subquery(o)?
        } else {
            self.cx.policy_subquery(o)?
        };
        *tf = TableFactor::Derived {
            lateral: false,
            subquery: Box::new(subquery),
            alias: Some(alias),
            sample: None,
        };
        Ok(())
    }
}

impl ReadPass<'_, '_> {
    /// Verify: is the only table of `s` read under the scope pgveil generated for it (the
    /// first conjunct of WHERE, for that table under that alias)?
    fn scope_verified(&self, s: &Select) -> bool {
        let Some(TableFactor::Table {
            name,
            alias: Some(alias),
            ..
        }) = single_table(s)
        else {
            return false;
        };
        let (Ok(alias), Some(lead)) = (fold(&alias.name), leading_conjunct(s.selection.as_ref()))
        else {
            return false;
        };
        match resolve(self.cx.snap, self.cx.search_path, self.cx.database, name) {
            Ok(Resolved::Object(schema, table)) => {
                self.cx.is_flat_scope(&schema, &table, &alias, lead)
            }
            _ => false,
        }
    }
}

fn check_set_expr(body: &SetExpr) -> Result<(), ClientError> {
    match body {
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
            Err(ClientError::unsupported(
                "pgveil does not support data-modifying statements inside WITH or subqueries",
            ))
        }
        SetExpr::Table(_) => Err(ClientError::unsupported(
            "pgveil does not support the TABLE command; use SELECT",
        )),
        SetExpr::SetOperation { left, right, .. } => {
            check_set_expr(left)?;
            check_set_expr(right)
        }
        _ => Ok(()),
    }
}

/// Does `selection` pin `alias.pk` (or bare `pk`) to a constant or parameter?
fn has_pk_lookup(selection: Option<&Expr>, v: &ViewOnly) -> bool {
    let Some(e) = selection else { return false };
    match e {
        Expr::BinaryOp {
            left,
            op: sqlparser::ast::BinaryOperator::And,
            right,
        } => has_pk_lookup(Some(left), v) || has_pk_lookup(Some(right), v),
        Expr::Nested(inner) => has_pk_lookup(Some(inner), v),
        Expr::BinaryOp {
            left,
            op: sqlparser::ast::BinaryOperator::Eq,
            right,
        } => {
            (is_pk_ref(left, v) && is_constant(right)) || (is_pk_ref(right, v) && is_constant(left))
        }
        _ => false,
    }
}

fn is_pk_ref(e: &Expr, v: &ViewOnly) -> bool {
    match e {
        Expr::Identifier(id) => fold(id).is_ok_and(|n| n == v.pk),
        Expr::CompoundIdentifier(ids) if ids.len() == 2 => {
            fold(&ids[0]).is_ok_and(|a| a == v.alias) && fold(&ids[1]).is_ok_and(|n| n == v.pk)
        }
        _ => false,
    }
}

fn is_constant(e: &Expr) -> bool {
    match e {
        Expr::Value(_) => true,
        Expr::Cast { expr, .. } => is_constant(expr),
        Expr::Nested(inner) => is_constant(inner),
        _ => false,
    }
}

impl VisitorMut for ReadPass<'_, '_> {
    type Break = ClientError;

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<ClientError> {
        if self.frames.len() >= self.cx.max_depth {
            return ControlFlow::Break(ClientError::TooComplex(
                "statement nesting is too deep for pgveil".into(),
            ));
        }
        if let Err(e) = check_set_expr(&q.body) {
            return ControlFlow::Break(e);
        }
        let mut frame = Frame {
            query: addr(q),
            visible: Vec::new(),
            pending: Vec::new(),
        };
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let name = match fold(&cte.alias.name) {
                    Ok(n) => n,
                    Err(e) => return ControlFlow::Break(e),
                };
                if let Err(e) = check_set_expr(&cte.query.body) {
                    return ControlFlow::Break(e);
                }
                if with.recursive {
                    frame.visible.push(name);
                } else {
                    frame.pending.push((addr(&cte.query), name));
                }
            }
        }
        self.frames.push(frame);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &mut Query) -> ControlFlow<ClientError> {
        let me = addr(q);
        if self.frames.last().is_some_and(|f| f.query == me) {
            self.frames.pop();
        }
        if let Some(top) = self.frames.last_mut() {
            if let Some(i) = top.pending.iter().position(|(a, _)| *a == me) {
                let (_, name) = top.pending.remove(i);
                top.visible.push(name);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &mut Select) -> ControlFlow<ClientError> {
        if s.into.is_some() {
            return ControlFlow::Break(ClientError::denied(
                "permission denied: SELECT INTO creates a table, which is not allowed for restricted users",
            ));
        }
        let mut frame = SelectFrame {
            in_place: single_table(s)
                .filter(|_| self.in_place_ok)
                .map_or(0, tf_addr),
            ..SelectFrame::default()
        };
        if self.mode == Mode::Verify && frame.in_place != 0 {
            frame.scope_verified = self.scope_verified(s);
        }
        self.selects.push(frame);
        ControlFlow::Continue(())
    }

    fn post_visit_select(&mut self, s: &mut Select) -> ControlFlow<ClientError> {
        let frame = self.selects.pop().unwrap_or_default();
        if self.mode == Mode::Verify {
            return ControlFlow::Continue(());
        }
        for v in frame.view_only {
            if !has_pk_lookup(s.selection.as_ref(), &v) {
                return ControlFlow::Break(ClientError::Denied {
                    message: format!(
                        "permission denied to list {}: your roles grant {}.view (details) but not {}.list",
                        v.table, v.table, v.table
                    ),
                    hint: Some(format!("read single records with WHERE {} = <value>", v.pk)),
                });
            }
        }
        // After the list/view check, which must see only the user's own WHERE.
        if let Some(scope) = frame.scope {
            s.selection = Some(match s.selection.take() {
                None => scope,
                Some(w) => Expr::BinaryOp {
                    left: Box::new(scope),
                    op: BinaryOperator::And,
                    right: Box::new(Expr::Nested(Box::new(w))),
                },
            });
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<ClientError> {
        if self.mode == Mode::Verify {
            let trusted = matches!(tf, TableFactor::Derived { subquery, .. } if self.cx.is_generated(subquery));
            self.trusted.push(trusted);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<ClientError> {
        if self.mode == Mode::Verify {
            self.trusted.pop();
        }
        let res = match tf {
            TableFactor::Table { .. } => self.rewrite_table(tf),
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::UNNEST { .. } => Ok(()),
            TableFactor::Function { name, .. } => parts(name)
                .and_then(|p| functions::check_function(&p, &self.cx.snap.safe_functions)),
            TableFactor::TableFunction { .. } => Ok(()),
            other => Err(ClientError::unsupported(format!(
                "pgveil does not support this FROM item: {other}"
            ))),
        };
        match res {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<ClientError> {
        // Functions were checked when rewriting (admin calls by their own rules); the
        // re-check is about relations.
        if self.mode == Mode::Verify {
            return ControlFlow::Continue(());
        }
        if let Expr::Function(f) = e {
            if let Err(err) = parts(&f.name)
                .and_then(|p| functions::check_function(&p, &self.cx.snap.safe_functions))
            {
                return ControlFlow::Break(err);
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_value(&mut self, v: &mut ValueWithSpan) -> ControlFlow<ClientError> {
        escape_backslashes(&mut v.value);
        ControlFlow::Continue(())
    }
}

/// Print string literals containing backslashes as E'' so that printing is unambiguous.
pub fn escape_backslashes(v: &mut Value) {
    if let Value::SingleQuotedString(s) = v {
        if s.contains('\\') {
            *v = Value::EscapedStringLiteral(std::mem::take(s));
        }
    }
}
