//! Enforcement: parse → allow-list by statement kind → rewrite reads and writes → print →
//! re-parse and re-check (the printer is not trusted) → forward. Anything not fully
//! understood is refused for restricted users. Rewrites are cached in moka, keyed by the
//! policy generation, the user's effective roles and the SQL text.

mod admin;
pub mod bind;
mod functions;
mod leakproof;
mod normalize;
mod password;
mod policy_sql;
mod read;
mod resolve;
mod statement;
mod write;

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlparser::ast::{Expr, Query, SelectItem, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::error::ClientError;
use crate::policy::compile::ObjectPolicy;
use crate::policy::{Effective, Snapshot};
use crate::server::Server;
pub use policy_sql::mask_sql as mask_expr;
use read::Mode;
pub use statement::settable;

/// What to send upstream for a message carrying SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Unrestricted user: forward the original bytes.
    PassThrough,
    /// Forward this (rewritten) SQL.
    Forward(String),
    /// Run `prefix` (checked statements before the refused one), then fail with `error`.
    Refuse { prefix: String, error: ClientError },
}

/// Everything a rewrite depends on.
pub struct Cx<'a> {
    pub eff: &'a Effective,
    pub snap: &'a Snapshot,
    pub search_path: &'a [String],
    pub database: &'a str,
    pub max_depth: usize,
    generated: RefCell<HashSet<Query>>,
    /// Generated flat scopes: (schema, table, alias, predicate) of tables read in place.
    flat: RefCell<HashSet<(String, String, String, Expr)>>,
    memo: Option<&'a PolicyMemo>,
    /// Objects read by the statement (for export checks).
    touched: RefCell<Vec<String>>,
}

impl<'a> Cx<'a> {
    pub fn new(
        eff: &'a Effective,
        snap: &'a Snapshot,
        search_path: &'a [String],
        database: &'a str,
        max_depth: usize,
    ) -> Self {
        Cx {
            eff,
            snap,
            search_path,
            database,
            max_depth,
            generated: RefCell::new(HashSet::new()),
            flat: RefCell::new(HashSet::new()),
            memo: None,
            touched: RefCell::new(Vec::new()),
        }
    }

    /// Reuse parsed policy subqueries across statements (keyed by policy generation and user).
    pub fn with_memo(mut self, memo: &'a PolicyMemo) -> Self {
        self.memo = Some(memo);
        self
    }

    /// The compiled policy of a protected table.
    pub fn object(&self, schema: &str, table: &str) -> Result<&'a ObjectPolicy, ClientError> {
        let o = self.eff.object(schema, table).ok_or_else(|| {
            ClientError::denied(format!("relation {schema}.{table} is unknown to pgveil"))
        })?;
        if o.missing {
            return Err(ClientError::denied(format!(
                "object {} refers to {schema}.{table}, which does not exist upstream",
                o.object
            )));
        }
        Ok(o)
    }

    fn parser(&self, sql: &str) -> Result<Parser<'static>, ClientError> {
        static DIALECT: PostgreSqlDialect = PostgreSqlDialect {};
        Parser::new(&DIALECT)
            .with_recursion_limit(self.max_depth * 4)
            .try_with_sql(sql)
            .map_err(|e| ClientError::denied(format!("pgveil internal error building SQL: {e}")))
    }

    /// Parse SQL pgveil generated; registers its parent-scope policy subqueries as trusted.
    pub fn parse_generated_expr(&self, sql: &str) -> Result<Expr, ClientError> {
        let e = self
            .parser(sql)?
            .parse_expr()
            .map_err(|e| ClientError::denied(format!("pgveil internal error: {e}")))?;
        self.register_parent_subqueries(&e);
        Ok(e)
    }

    pub fn parse_generated_query(&self, sql: &str) -> Result<Query, ClientError> {
        let q = self
            .parser(sql)?
            .parse_query()
            .map_err(|e| ClientError::denied(format!("pgveil internal error: {e}")))?;
        self.register_parent_subqueries(&q);
        Ok(*q)
    }

    pub fn parse_select_item(&self, sql: &str) -> Result<SelectItem, ClientError> {
        let q = self.parse_generated_query(&format!("SELECT {sql}"))?;
        match *q.body {
            sqlparser::ast::SetExpr::Select(mut s) if s.projection.len() == 1 => {
                Ok(s.projection.remove(0))
            }
            _ => Err(ClientError::denied(
                "pgveil internal error building RETURNING",
            )),
        }
    }

    /// Register a generated query (policy subquery) as trusted for the re-check.
    pub fn register_query_text(&self, sql: &str) -> Result<Query, ClientError> {
        let q = self.parse_generated_query(sql)?;
        self.generated.borrow_mut().insert(q.clone());
        Ok(q)
    }

    fn register_parent_subqueries<T: Visit>(&self, node: &T) {
        struct Reg<'r>(&'r RefCell<HashSet<Query>>);
        impl Visitor for Reg<'_> {
            type Break = ();
            fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
                if let TableFactor::Derived {
                    subquery,
                    alias: Some(a),
                    ..
                } = tf
                {
                    if a.name.value == "pgveil_parent" {
                        self.0.borrow_mut().insert((**subquery).clone());
                    }
                }
                ControlFlow::Continue(())
            }
        }
        let _ = node.visit(&mut Reg(&self.generated));
    }

    pub fn is_generated(&self, q: &Query) -> bool {
        self.generated.borrow().contains(q)
    }

    /// The read policy subquery for `o`.
    pub fn policy_subquery(&self, o: &ObjectPolicy) -> Result<Query, ClientError> {
        self.touched.borrow_mut().push(o.object.clone());
        let Some(memo) = self.memo else {
            return self.register_query_text(&policy_sql::read_subquery(self.eff, o, 0));
        };
        let key = (
            self.snap.generation,
            self.eff.user.clone(),
            self.eff.roles.clone(),
            o.object.clone(),
        );
        let entry = memo
            .0
            .try_get_with_by_ref(&key, || {
                let before: HashSet<Query> = self.generated.borrow().clone();
                let q = self.register_query_text(&policy_sql::read_subquery(self.eff, o, 0))?;
                let trusted: Vec<Query> = self
                    .generated
                    .borrow()
                    .difference(&before)
                    .cloned()
                    .collect();
                Ok::<_, ClientError>(Arc::new((q, trusted)))
            })
            .map_err(|e| (*e).clone())?;
        self.generated.borrow_mut().extend(entry.1.iter().cloned());
        Ok(entry.0.clone())
    }

    /// The policy subquery of `o` behind a fence (`OFFSET 0`): PostgreSQL neither flattens it
    /// nor pushes conditions into it, so its scope filters every row first (see
    /// [`leakproof`]); registered as trusted for the re-check.
    pub fn fenced_policy_subquery(&self, o: &ObjectPolicy) -> Result<Query, ClientError> {
        use sqlparser::ast::{LimitClause, Offset, OffsetRows, Value};
        let mut q = self.policy_subquery(o)?;
        q.limit_clause = Some(LimitClause::LimitOffset {
            limit: None,
            offset: Some(Offset {
                value: Expr::value(Value::Number("0".into(), false)),
                rows: OffsetRows::None,
            }),
            limit_by: Vec::new(),
        });
        self.generated.borrow_mut().insert(q.clone());
        Ok(q)
    }

    /// The scope of `o` as a predicate on `alias`, when the table may be read in place
    /// (see [`policy_sql::flat_scope`]); registered as trusted for the re-check.
    pub fn flat_scope(&self, o: &ObjectPolicy, alias: &str) -> Result<Option<Expr>, ClientError> {
        // Only when pgveil hears of new columns: the subquery lists the columns it knows.
        if !self.snap.relations_tracked {
            return Ok(None);
        }
        let Some(sql) = policy_sql::flat_scope(self.eff, o, alias) else {
            return Ok(None);
        };
        self.touched.borrow_mut().push(o.object.clone());
        let pred = Expr::Nested(Box::new(self.parse_generated_expr(&sql)?));
        self.flat.borrow_mut().insert((
            o.schema.clone(),
            o.table.clone(),
            alias.to_owned(),
            pred.clone(),
        ));
        Ok(Some(pred))
    }

    /// Is `pred` the scope pgveil generated for `schema.table` read in place as `alias`?
    pub fn is_flat_scope(&self, schema: &str, table: &str, alias: &str, pred: &Expr) -> bool {
        // a statement generates a handful of flat scopes: compare in place, no key to build
        self.flat
            .borrow()
            .iter()
            .any(|(s, t, a, p)| s == schema && t == table && a == alias && p == pred)
    }

    pub fn touched(&self) -> Vec<String> {
        self.touched.borrow().clone()
    }
}

/// Printed policy subqueries of every object for `eff` (for independent checks in tests).
pub fn policy_query_texts(eff: &Effective) -> Vec<String> {
    static DIALECT: PostgreSqlDialect = PostgreSqlDialect {};
    let mut out = Vec::new();
    for o in eff.objects.values() {
        let texts = (0..3)
            .map(|d| policy_sql::read_subquery(eff, o, d))
            .chain([&o.edit, &o.delete].map(|p| policy_sql::scoped_rows(eff, o, p)));
        for text in texts {
            if let Ok(mut p) = Parser::new(&DIALECT).try_with_sql(&text) {
                if let Ok(q) = p.parse_query() {
                    out.push(q.to_string());
                }
            }
        }
    }
    out
}

/// Virtual relation listing the current user's effective permissions.
pub const MY_PERMISSIONS: &str = "pgveil_my_permissions";

/// `(kind, object, name, detail)` rows describing `eff`.
pub fn my_permissions_sql(eff: &Effective) -> String {
    use crate::policy::compile::{describe_pred, ColumnRead};
    use policy_sql::literal;
    let mut rows: Vec<[String; 4]> = Vec::new();
    for r in &eff.roles {
        rows.push(["role".into(), String::new(), r.clone(), String::new()]);
    }
    for p in &eff.system_permissions {
        rows.push(["system".into(), String::new(), p.clone(), String::new()]);
    }
    let r = &eff.restrictions;
    rows.push([
        "restriction".into(),
        String::new(),
        "limits".into(),
        format!(
            "bulk_operations={} bulk_threshold={} data_export={} max_rows={}",
            r.bulk_operations,
            r.bulk_threshold,
            r.data_export,
            r.max_rows.map_or("unlimited".to_owned(), |m| m.to_string())
        ),
    ]);
    for o in eff.objects.values() {
        for a in &o.actions {
            let scope = match a.as_str() {
                "list" | "view" => describe_pred(&o.read, o),
                "edit" => describe_pred(&o.edit, o),
                "create" => describe_pred(&o.create, o),
                "delete" => describe_pred(&o.delete, o),
                _ => String::new(),
            };
            rows.push(["action".into(), o.object.clone(), a.clone(), scope]);
        }
        for c in &o.columns {
            let read = match &c.read {
                ColumnRead::Visible => None,
                ColumnRead::Hidden(m) => Some(format!("invisible (mask {})", m.as_str())),
                ColumnRead::When(p, m) => Some(format!(
                    "visible where {}, else mask {}",
                    describe_pred(p, o),
                    m.as_str()
                )),
            };
            if read.is_some() || c.level != crate::policy::model::FieldLevel::ReadWrite {
                rows.push([
                    "field".into(),
                    o.object.clone(),
                    c.name.clone(),
                    read.unwrap_or_else(|| c.level.as_str().to_owned()),
                ]);
            }
        }
    }
    let values: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "({}, {}, {}, {})",
                literal(&r[0]),
                literal(&r[1]),
                literal(&r[2]),
                literal(&r[3])
            )
        })
        .collect();
    format!(
        "SELECT * FROM (VALUES {}) AS p(kind, object, name, detail)",
        values.join(", ")
    )
}

/// 42501 for a missing object permission.
pub fn denied_action(o: &ObjectPolicy, action: &str) -> ClientError {
    let why = if o.denied.contains(action) {
        "an explicit deny rule removes it"
    } else {
        "none of your roles grants it"
    };
    ClientError::Denied {
        message: format!(
            "permission denied for table {}: {} requires {}.{action} ({why})",
            o.table, action, o.object
        ),
        hint: Some(
            "see your effective permissions with: SELECT * FROM pgveil_my_permissions".into(),
        ),
    }
}

/// Parse user SQL with pgveil's limits.
fn parse_user_sql(sql: &str, max_depth: usize) -> Result<Vec<Statement>, ClientError> {
    static DIALECT: PostgreSqlDialect = PostgreSqlDialect {};
    Parser::new(&DIALECT)
        .with_recursion_limit(max_depth)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| match e {
            sqlparser::parser::ParserError::RecursionLimitExceeded => {
                ClientError::TooComplex("statement nesting is too deep for pgveil".into())
            }
            e => ClientError::Unsupported {
                message: format!("pgveil does not support this SQL syntax: {e}"),
                hint: Some(
                    "pgveil refuses statements it cannot parse for users with restricted access"
                        .into(),
                ),
            },
        })
}

/// Re-parse printed SQL and check it: one statement, a fixed point of print∘parse, and no
/// protected table read outside a generated policy subquery.
fn recheck(cx: &Cx<'_>, rewritten: &Statement, printed: &str) -> Result<(), ClientError> {
    let internal = |why: &str| ClientError::denied(format!("pgveil internal check failed: {why}"));
    let mut stmts = parse_user_sql(printed, cx.max_depth * 4)
        .map_err(|_| internal("rewritten SQL does not parse"))?;
    if stmts.len() != 1 {
        return Err(internal("rewritten SQL is not one statement"));
    }
    let mut stmt = stmts.remove(0);
    if &stmt != rewritten {
        return Err(internal(
            "rewritten SQL does not parse back to the same statement",
        ));
    }
    statement::visit_read_parts(cx, Mode::Verify, &mut stmt)
}

/// Enforce one unit of SQL text (a Query message, or a Parse message when `prepared`).
pub fn enforce_text(cx: &Cx<'_>, sql: &str, prepared: bool) -> Verdict {
    let stmts = match parse_user_sql(sql, cx.max_depth) {
        Ok(s) => s,
        Err(error) => {
            return Verdict::Refuse {
                prefix: String::new(),
                error,
            }
        }
    };
    if prepared && stmts.len() > 1 {
        return Verdict::Refuse {
            prefix: String::new(),
            error: ClientError::unsupported(
                "cannot insert multiple commands into a prepared statement",
            ),
        };
    }
    let mut done: Vec<String> = Vec::new();
    for mut stmt in stmts {
        let checked = statement::enforce(cx, &mut stmt).and_then(|extra| {
            let printed = stmt.to_string();
            recheck(cx, &stmt, &printed)?;
            Ok(match extra {
                Some(wrap) => wrap(printed),
                None => printed,
            })
        });
        match checked {
            Ok(text) => done.push(text),
            Err(error) => {
                return Verdict::Refuse {
                    prefix: done.join(";\n"),
                    error,
                }
            }
        }
    }
    Verdict::Forward(done.join(";\n"))
}

/// A stable, non-reversible fingerprint of text (16 hex digits): SQL in logs, policy
/// identities in prepared-statement names.
fn fingerprint(sql: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, sql.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Cache of rewrites: keyed by everything a rewrite depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RewriteKey {
    generation: u64,
    /// Digest of the user's effective policy (user, roles, scopes, fields…): no allocation.
    policy: Arc<str>,
    prepared: bool,
    sql: String,
}

impl RewriteKey {
    fn new(snap: &Snapshot, eff: &Effective, sql: String, prepared: bool) -> Self {
        RewriteKey {
            generation: snap.generation,
            policy: eff.content_digest.clone(),
            prepared,
            sql,
        }
    }
}

/// Parsed policy subqueries (and the generated queries they trust), per generation, user,
/// roles and object.
type MemoKey = (u64, String, Vec<String>, String);
/// A parsed policy subquery and the generated queries it trusts.
type MemoEntry = Arc<(Query, Vec<Query>)>;

pub struct PolicyMemo(moka::sync::Cache<MemoKey, MemoEntry>);

impl PolicyMemo {
    pub fn new(capacity: u64) -> Self {
        PolicyMemo(moka::sync::Cache::new(capacity))
    }
}

/// A simple-protocol statement, enforced.
pub enum Simple {
    Verdict(Verdict),
    /// A cached enforced template and the statement's literals (`Template::text` puts them
    /// back; `Template::bind_plan` runs them as parameters).
    Template(Template),
}

impl Simple {
    /// The statement as text.
    pub fn into_verdict(self) -> Verdict {
        match self {
            Simple::Verdict(v) => v,
            Simple::Template(t) => Verdict::Forward(t.text()),
        }
    }
}

/// A cached enforced template with one statement's literals.
pub struct Template {
    splice: Arc<normalize::Splice>,
    literals: Vec<String>,
}

impl Template {
    /// The enforced statement as text, literals re-quoted by pgveil.
    pub fn text(&self) -> String {
        self.splice.fill(&self.literals).unwrap_or_default()
    }

    /// The prepared-statement form and this statement's parameters, if it has one.
    pub fn bind_plan(&self) -> Option<(&bind::BindPlan, bind::Params)> {
        let plan = self.splice.bind.as_ref()?;
        Some((plan, plan.params(&self.literals)?))
    }
}

/// moka caches of verdicts for restricted users.
pub struct RewriteCache {
    verdicts: moka::sync::Cache<RewriteKey, Arc<Verdict>>,
    /// Simple-protocol templates, cut at their placeholders (None: enforce the full text).
    templates: moka::sync::Cache<RewriteKey, Option<Arc<normalize::Splice>>>,
    /// The same, by the shape `normalize::quick` gives (None: use `normalize`).
    shapes: moka::sync::Cache<RewriteKey, Option<Arc<normalize::Splice>>>,
    memo: PolicyMemo,
    /// Identifies each cached template's prepared-statement form.
    next_plan: std::sync::atomic::AtomicU64,
}

impl RewriteCache {
    pub fn new(capacity: u64) -> Self {
        RewriteCache {
            verdicts: moka::sync::Cache::new(capacity),
            templates: moka::sync::Cache::new(capacity),
            shapes: moka::sync::Cache::new(capacity),
            memo: PolicyMemo::new(capacity / 10 + 100),
            next_plan: std::sync::atomic::AtomicU64::new(1),
        }
    }
    pub fn invalidate_all(&self) {
        self.verdicts.invalidate_all();
        self.templates.invalidate_all();
        self.shapes.invalidate_all();
        self.memo.0.invalidate_all();
    }

    /// Enforce `sql` for `eff`, using the cache; simple-protocol texts are cached by their
    /// literal-free template (see `normalize`), found through their shape when they are plain.
    pub fn enforce_simple(
        &self,
        limits: &Limits<'_>,
        snap: &Snapshot,
        eff: &Effective,
        sql: &str,
    ) -> Simple {
        if let Some((shape, literals)) = normalize::quick(sql) {
            if literals.is_empty() {
                // BEGIN, END: nothing to lex
                return Simple::Verdict(self.enforce(limits, snap, eff, sql, false));
            }
            let key = RewriteKey::new(snap, eff, shape, false);
            let splice = self.shapes.get_with_by_ref(&key, || {
                // Trust this shape only if `normalize` finds the very same literals.
                let (template, full) = normalize::normalize(sql)?.into_parts();
                (full == literals)
                    .then(|| self.template_splice(limits, snap, eff, template))
                    .flatten()
            });
            if let Some(splice) = splice.filter(|s| s.fits(literals.len())) {
                return Simple::Template(Template { splice, literals });
            }
        }
        if let Some(n) = normalize::normalize(sql) {
            let (template, literals) = n.into_parts();
            let splice = self.template_splice(limits, snap, eff, template);
            if let Some(splice) = splice.filter(|s| s.fits(literals.len())) {
                return Simple::Template(Template { splice, literals });
            }
        }
        Simple::Verdict(self.enforce(limits, snap, eff, sql, false))
    }

    /// The enforced `template`, cut at its placeholders (cached); None if it is refused or
    /// cannot be cut safely.
    fn template_splice(
        &self,
        limits: &Limits<'_>,
        snap: &Snapshot,
        eff: &Effective,
        template: String,
    ) -> Option<Arc<normalize::Splice>> {
        let key = RewriteKey::new(snap, eff, template, false);
        self.templates.get_with_by_ref(&key, || {
            match self.enforce(limits, snap, eff, &key.sql, false) {
                Verdict::Forward(template) => {
                    let splice = normalize::splice(&template)?;
                    let plan = parse_user_sql(&template, limits.max_depth * 4)
                        .ok()
                        .filter(|stmts| stmts.len() == 1)
                        .and_then(|stmts| {
                            let id = self.next_plan.fetch_add(1, Ordering::Relaxed);
                            bind::plan(id, &template, &stmts[0])
                        });
                    Some(Arc::new(splice.with_bind(plan)))
                }
                _ => None,
            }
        })
    }

    /// Enforce `sql` for `eff` (computed from `snap`), using the cache.
    pub fn enforce(
        &self,
        limits: &Limits<'_>,
        snap: &Snapshot,
        eff: &Effective,
        sql: &str,
        prepared: bool,
    ) -> Verdict {
        let key = RewriteKey::new(snap, eff, sql.to_owned(), prepared);
        let verdict = self.verdicts.get_with_by_ref(&key, || {
            let cx = Cx::new(
                eff,
                snap,
                limits.search_path,
                limits.database,
                limits.max_depth,
            )
            .with_memo(&self.memo);
            Arc::new(enforce_text(&cx, sql, prepared))
        });
        (*verdict).clone()
    }
}

/// Session-independent settings a rewrite depends on.
pub struct Limits<'a> {
    pub search_path: &'a [String],
    pub database: &'a str,
    pub max_depth: usize,
}

/// Per-session enforcement context (owned by the session's client pump).
pub struct EnforceCtx {
    server: Arc<Server>,
    user: String,
    ip: Option<IpAddr>,
    /// The user's effective policy, reused within one catalog generation for up to a second
    /// (role validity and time windows are evaluated at most a second late).
    memo: EffMemo,
    /// Bumped whenever `memo` changes to another compiled policy object (for stamps).
    epoch: u64,
}

struct EffMemo {
    snap: Arc<Snapshot>,
    /// Evaluated again from then on.
    until: Instant,
    eff: Option<Arc<Effective>>,
}

/// Identifies, within one session, the policy a statement was enforced under: the same
/// generation and the very same compiled policy object (same epoch) means enforcement would
/// give the same result again.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PolicyStamp {
    generation: u64,
    epoch: u64,
}

impl EnforceCtx {
    pub fn new(server: Arc<Server>, user: String, ip: Option<IpAddr>) -> Self {
        let memo = EffMemo {
            snap: server.store.snapshot(),
            until: Instant::now(), // already past: the first batch evaluates the policy
            eff: None,
        };
        EnforceCtx {
            server,
            user,
            ip,
            memo,
            epoch: 0,
        }
    }

    /// Bring the policy up to date; the client pump calls this once per batch of messages
    /// (what one read brought), and everything else uses what it found. Until the first call
    /// the user counts as unknown, so statements are refused. The common case (same
    /// generation, within the second) reads an atomic and the clock; it clones no `Arc`, whose
    /// counts every session would share.
    pub fn refresh(&mut self) {
        let store = &self.server.store;
        let now = Instant::now();
        if now < self.memo.until && self.memo.snap.generation == store.generation() {
            return;
        }
        let snap = store.snapshot();
        let eff = store.effective_in(&snap, &self.user, chrono::Utc::now(), self.ip);
        let same = match (&self.memo.eff, &eff) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.epoch += 1;
        }
        self.memo = EffMemo {
            snap,
            until: now + Duration::from_secs(1),
            eff,
        };
    }

    /// The policy statements are enforced under (as of the last [`EnforceCtx::refresh`]).
    pub fn stamp(&self) -> PolicyStamp {
        PolicyStamp {
            generation: self.memo.snap.generation,
            epoch: self.epoch,
        }
    }

    /// Is the user restricted? (Roles can expire inside a session.)
    pub fn is_restricted(&self) -> bool {
        !self.memo.eff.as_ref().is_some_and(|e| e.unrestricted)
    }

    /// Does a statement with this text go upstream as it is, without being read? So for an
    /// unrestricted user, unless it could be a password change (which pgveil answers
    /// itself); PostgreSQL checks its encoding.
    pub fn passes_unread(&self, sql: &[u8]) -> bool {
        !self.is_restricted() && !password::may_change_password(sql)
    }

    /// Enforce a Query message, keeping a cached template and its literals apart.
    pub fn enforce_simple_parts(&self, sql: &str) -> Simple {
        self.enforce_under(sql, false)
    }

    /// Enforce a Parse (under the policy of [`EnforceCtx::stamp`]).
    pub fn enforce_prepared(&self, sql: &str) -> Verdict {
        self.enforce_under(sql, true).into_verdict()
    }

    /// Enforce under the policy in the memo.
    fn enforce_under(&self, sql: &str, prepared: bool) -> Simple {
        let snap = &self.memo.snap;
        let eff = &self.memo.eff;
        let cfg = &self.server.config;
        let pw = password::PasswordCtx {
            user: &self.user,
            eff: eff.as_deref(),
            policy: &cfg.password_policy,
            catalog_upstream: cfg.catalog_database() == cfg.upstream.database,
        };
        if let Some(v) = password::intercept(&pw, sql) {
            return Simple::Verdict(v);
        }
        let Some(eff) = eff else {
            return Simple::Verdict(Verdict::Refuse {
                prefix: String::new(),
                error: ClientError::denied(format!(
                    "user \"{}\" is disabled or no longer exists",
                    self.user
                )),
            });
        };
        if eff.unrestricted {
            return Simple::Verdict(Verdict::PassThrough);
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            if cfg.log.log_sql {
                tracing::debug!(sql, prepared, "statement");
            } else {
                tracing::debug!(fingerprint = %fingerprint(sql), prepared, "statement");
            }
        }
        if sql.len() > cfg.server.max_query_bytes {
            return Simple::Verdict(Verdict::Refuse {
                prefix: String::new(),
                error: ClientError::TooComplex(format!(
                    "statement of {} bytes exceeds pgveil's limit of {} bytes",
                    sql.len(),
                    cfg.server.max_query_bytes
                )),
            });
        }
        let limits = Limits {
            search_path: &cfg.server.search_path,
            database: &cfg.upstream.database,
            max_depth: cfg.server.max_sql_depth,
        };
        if prepared {
            Simple::Verdict(self.server.rewrites.enforce(&limits, snap, eff, sql, true))
        } else {
            self.server.rewrites.enforce_simple(&limits, snap, eff, sql)
        }
    }
}
