//! Property test: random SQL (from a grammar of CRM fragments plus random mutations) through
//! the rewriter. It must never panic, and every statement it forwards must never read a
//! protected table outside a policy subquery — checked by an AST walk written independently
//! of the rewriter's own re-check.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
use std::ops::ControlFlow;

use pgveil::policy::PolicyStore;
use pgveil::sql::{enforce_text, policy_query_texts, Cx, Limits, RewriteCache, Simple, Verdict};
use rand::{rngs::StdRng, Rng, SeedableRng};
use sqlparser::ast::{
    BinaryOperator, Expr, ObjectName, Select, SelectItem, SetExpr, Statement, TableFactor, Visit,
    Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

const TABLES: &[&str] = &[
    "customers",
    "public.customers",
    "\"customers\"",
    "CUSTOMERS",
    "orders",
    "payments",
    "tickets",
    "products",
    "opportunities",
    "internal_salaries",
    "pg_class",
    "pg_stats",
    "pgveil.users",
    "crm.public.orders",
    "ONLY customers",
];
const COLS: &[&str] = &[
    "id",
    "name",
    "phone",
    "owner",
    "amount",
    "*",
    "count(*)",
    "c.phone",
    "x.id",
    "customer_id",
];
const PREDS: &[&str] = &[
    "id = 1",
    "phone LIKE '%5%'",
    "owner = 'sam'",
    "true",
    "id IN (SELECT customer_id FROM orders)",
    "EXISTS (SELECT 1 FROM customers c2 WHERE c2.id = x.id)",
    "amount > 10",
    "name = 'a\\'' OR 1=1 --'",
    "amount > -5",
    "amount + -1 > 2.5",
    "amount > 5*-2",
    "id = ANY(ARRAY[1, -2, 3])",
    "amount BETWEEN 1.5 AND 2e3",
    "name = E'a\\\\b' OR name = $$x'y$$",
    "id = -(3) OR name || 'x' = 'yx'",
];

fn pick<'a>(r: &mut StdRng, v: &[&'a str]) -> &'a str {
    v[r.gen_range(0..v.len())]
}

fn query(r: &mut StdRng, depth: u32) -> String {
    let from = if depth < 2 && r.gen_bool(0.3) {
        format!("({}) AS x", query(r, depth + 1))
    } else {
        format!("{} AS x", pick(r, TABLES))
    };
    let mut q = format!("SELECT {} FROM {from}", pick(r, COLS));
    if r.gen_bool(0.4) {
        q.push_str(&format!(" JOIN {} AS c ON c.id = x.id", pick(r, TABLES)));
    }
    if r.gen_bool(0.6) {
        q.push_str(&format!(" WHERE {}", pick(r, PREDS)));
    }
    match r.gen_range(0..8) {
        0 => format!("WITH w AS ({q}) SELECT * FROM w"),
        1 => format!(
            "{q} UNION SELECT {} FROM {}",
            pick(r, COLS),
            pick(r, TABLES)
        ),
        2 => format!(
            "UPDATE {} SET name = 'x' WHERE {}",
            pick(r, TABLES),
            pick(r, PREDS)
        ),
        3 => format!("DELETE FROM {} WHERE {}", pick(r, TABLES), pick(r, PREDS)),
        4 => format!("INSERT INTO {} (name) {q}", pick(r, TABLES)),
        5 => format!("COPY ({q}) TO STDOUT"),
        _ => q,
    }
}

fn mutate(r: &mut StdRng, s: &str) -> String {
    let mut b: Vec<char> = s.chars().collect();
    for _ in 0..r.gen_range(1..4) {
        if b.is_empty() {
            break;
        }
        let i = r.gen_range(0..b.len());
        match r.gen_range(0..4) {
            0 => {
                b.remove(i);
            }
            1 => b.insert(
                i,
                ['(', ')', '\'', '"', ';', '\\', ' ', '$', '-', '/', '*'][r.gen_range(0..11)],
            ),
            2 => {
                let j = r.gen_range(0..b.len());
                b.swap(i, j);
            }
            _ => b.truncate(i),
        }
    }
    b.into_iter().collect()
}

/// Independent checker: protected tables only inside derived tables that are policy
/// subqueries, or read in place as the only table of a SELECT whose WHERE starts with
/// `(<scope>) AND`, where the scope is a policy subquery's WHERE (of a policy that masks no
/// column) with the columns qualified by the table's alias.
struct Check<'a> {
    known: &'a Known<'a>,
    trusted: Vec<bool>,
    in_place: Vec<usize>,
    violation: Option<String>,
}

/// What the checker trusts for one user, computed once: the policy subqueries, the scopes
/// of unmasked policies, and the protected table names.
struct Known<'a> {
    policies: Vec<String>,
    scopes: Vec<(String, String)>,
    protected: &'a [&'a str],
}

/// Scopes of unmasked policies, by table: the WHERE of every policy subquery whose select
/// list is plain columns.
fn unmasked_scopes(policies: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for text in policies {
        let Ok(q) = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(text)
            .and_then(|mut p| p.parse_query())
        else {
            continue;
        };
        let SetExpr::Select(sel) = &*q.body else {
            continue;
        };
        let plain = sel
            .projection
            .iter()
            .all(|i| matches!(i, SelectItem::UnnamedExpr(Expr::Identifier(_))));
        if let (true, [twj], Some(w)) = (plain, sel.from.as_slice(), &sel.selection) {
            if let TableFactor::Table { name, .. } = &twj.relation {
                out.push((last_part(name), format!("({w})")));
            }
        }
    }
    out
}

fn last_part(name: &ObjectName) -> String {
    name.0
        .last()
        .map(|p| p.to_string().trim_matches('"').to_lowercase())
        .unwrap_or_default()
}

impl Visitor for Check<'_> {
    type Break = ();
    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        let [twj] = s.from.as_slice() else {
            return ControlFlow::Continue(());
        };
        let (
            TableFactor::Table {
                name,
                alias: Some(alias),
                ..
            },
            true,
            Some(w),
        ) = (&twj.relation, twj.joins.is_empty(), &s.selection)
        else {
            return ControlFlow::Continue(());
        };
        let lead = match w {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                ..
            } => left.as_ref(),
            e => e,
        };
        let folded = match alias.name.quote_style {
            Some(_) => alias.name.value.clone(),
            None => alias.name.value.to_lowercase(),
        };
        let unqualified = lead.to_string().replace(&format!("\"{folded}\"."), "");
        let table = last_part(name);
        if matches!(lead, Expr::Nested(_)) && self.known.scopes.contains(&(table, unqualified)) {
            self.in_place
                .push(&twj.relation as *const TableFactor as usize);
        }
        ControlFlow::Continue(())
    }
    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        // a policy subquery, also behind pgveil's fence (OFFSET 0, for statements with
        // expressions that could fail on a row outside the scope)
        let is_policy = |q: &sqlparser::ast::Query| {
            let text = q.to_string();
            let unfenced = text.strip_suffix(" OFFSET 0").unwrap_or(&text);
            self.known.policies.iter().any(|p| p == unfenced)
        };
        let trusted = self.in_place.contains(&(tf as *const TableFactor as usize))
            || matches!(tf, TableFactor::Derived { subquery, .. } if is_policy(subquery));
        self.trusted.push(trusted);
        if let TableFactor::Table { name, .. } = tf {
            let last = last_part(name);
            if self.known.protected.contains(&last.as_str()) && !self.trusted.iter().any(|t| *t) {
                self.violation = Some(name.to_string());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
    fn post_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<()> {
        self.trusted.pop();
        ControlFlow::Continue(())
    }
}

#[test]
fn random_sql_never_panics_and_never_escapes_the_policy() {
    let catalog = pgveil::policy::file::parse(pgveil::demo::POLICY_TOML).unwrap();
    let relations = bench_relations();
    let store = PolicyStore::new(catalog, relations, true, 100);
    let snap = store.snapshot();
    let protected = [
        "customers",
        "orders",
        "payments",
        "tickets",
        "products",
        "opportunities",
        "internal_salaries",
    ];
    let path = vec!["public".to_owned()];
    let mut rng = StdRng::seed_from_u64(0x9e37_79b9);
    let mut forwarded = 0;
    let mut in_place = 0usize;
    let mut same_via_template = 0usize;
    let mut via_template = 0usize;
    let mut bindable = 0usize;
    let cache = RewriteCache::new(10_000);
    let limits = Limits {
        search_path: &path,
        database: "crm",
        max_depth: 64,
    };
    for user in ["rita", "tom", "dana", "sid", "carl", "gina"] {
        let eff = store
            .effective_in(&snap, user, chrono::Utc::now(), None)
            .unwrap();
        let policies = policy_query_texts(&eff);
        let known = Known {
            scopes: unmasked_scopes(&policies),
            policies,
            protected: &protected,
        };
        for i in 0..1500 {
            let mut sql = query(&mut rng, 0);
            if i % 3 == 0 {
                sql = mutate(&mut rng, &sql);
            }
            let cx = Cx::new(&eff, &snap, &path, "crm", 64);
            let prepared = i % 2 == 0;
            let verdict = enforce_text(&cx, &sql, prepared);
            if !prepared {
                // The simple-protocol path caches by shape and by literal-free template; a
                // variant with other digits then reuses what the first text cached.
                let variant = sql.replace('1', "4").replace('2', "9");
                let variant_verdict = enforce_text(&cx, &variant, false);
                for (text, full) in [(&sql, &verdict), (&variant, &variant_verdict)] {
                    let simple = cache.enforce_simple(&limits, &snap, &eff, text);
                    if let Simple::Template(t) = &simple {
                        // the prepared-statement form is the same checked template
                        if let Some((plan, _)) = t.bind_plan() {
                            let p = Parser::parse_sql(&PostgreSqlDialect {}, &plan.sql).unwrap();
                            check_all(&p, &known, text, &plan.sql, user);
                            bindable += 1;
                        }
                    }
                    let Verdict::Forward(c) = simple.into_verdict() else {
                        continue;
                    };
                    let a = Parser::parse_sql(&PostgreSqlDialect {}, &c)
                        .unwrap_or_else(|e| panic!("{text}\n→ {c}\n{e}"));
                    check_all(&a, &known, text, &c, user);
                    let Verdict::Forward(full) = full else {
                        panic!("template path allowed what the full path refuses: {text}\n→ {c}");
                    };
                    let b = Parser::parse_sql(&PostgreSqlDialect {}, full).unwrap();
                    via_template += 1;
                    same_via_template += usize::from(a == b);
                    // the template path gives exactly the full path's statement; only a
                    // dollar-quoted string comes back re-quoted as a standard string
                    assert!(
                        a == b || text.contains("$$"),
                        "template path differs: {text}\n  template {c}\n  full {full}"
                    );
                }
            }
            let Verdict::Forward(out) = verdict else {
                continue;
            };
            forwarded += 1;
            let stmts = Parser::parse_sql(&PostgreSqlDialect {}, &out)
                .unwrap_or_else(|e| panic!("{sql}\n→ {out}\n{e}"));
            in_place += check_all(&stmts, &known, &sql, &out, user);
        }
    }
    assert!(
        forwarded > 500,
        "the grammar should produce many allowed statements ({forwarded})"
    );
    println!(
        "template path: {via_template} forwarded, {same_via_template} identical to the full path, {bindable} bindable; {in_place} tables read in place"
    );
    assert!(
        bindable > 100,
        "the grammar should reach templates that run as prepared statements ({bindable})"
    );
    assert!(
        in_place > 100,
        "the grammar should reach tables read in place under a flat scope ({in_place})"
    );
    assert!(
        same_via_template > 100,
        "the template path should give the full path's statements ({same_via_template})"
    );
}

/// Run the independent checker over every statement; the number of tables read in place.
fn check_all(stmts: &[Statement], known: &Known<'_>, sql: &str, out: &str, user: &str) -> usize {
    let mut in_place = 0;
    for s in stmts {
        let mut c = Check {
            known,
            trusted: vec![],
            in_place: vec![],
            violation: None,
        };
        // DML targets are not reads: check every other part of the statement.
        let _ = match s {
            Statement::Update(u) => {
                let _ = u.from.visit(&mut c);
                let _ = u.assignments.visit(&mut c);
                let _ = u.selection.visit(&mut c);
                u.returning.visit(&mut c)
            }
            Statement::Delete(d) => {
                let _ = d.using.visit(&mut c);
                let _ = d.selection.visit(&mut c);
                d.returning.visit(&mut c)
            }
            Statement::Insert(i) => {
                let _ = i.source.visit(&mut c);
                let _ = i.on.visit(&mut c);
                i.returning.visit(&mut c)
            }
            other => other.visit(&mut c),
        };
        assert!(
            c.violation.is_none(),
            "ESCAPE for {user}: {sql}\n→ {out}\nraw {:?}",
            c.violation
        );
        in_place += c.in_place.len();
    }
    in_place
}

fn bench_relations() -> pgveil::policy::model::RelationMap {
    use pgveil::policy::model::{Column, Relation};
    let t = |n: &str, cols: &[&str]| {
        (
            ("public".to_owned(), n.to_owned()),
            Relation {
                schema: "public".into(),
                name: n.into(),
                columns: cols
                    .iter()
                    .map(|c| Column {
                        name: (*c).into(),
                        type_name: "text".into(),
                        is_text: true,
                    })
                    .collect(),
            },
        )
    };
    [
        t(
            "customers",
            &[
                "id",
                "name",
                "email",
                "phone",
                "owner",
                "department",
                "team",
                "region",
                "credit_limit",
                "notes",
                "created_at",
            ],
        ),
        t(
            "orders",
            &[
                "id",
                "customer_id",
                "amount",
                "status",
                "owner",
                "department",
                "created_at",
            ],
        ),
        t(
            "payments",
            &[
                "id",
                "order_id",
                "amount",
                "method",
                "card_last4",
                "paid_at",
            ],
        ),
        t("products", &["id", "sku", "name", "price", "cost", "stock"]),
        t(
            "tickets",
            &[
                "id",
                "customer_id",
                "subject",
                "status",
                "priority",
                "assignee",
                "department",
                "team",
            ],
        ),
        t(
            "opportunities",
            &[
                "id",
                "customer_id",
                "title",
                "value",
                "stage",
                "owner",
                "department",
            ],
        ),
        t("internal_salaries", &["employee", "salary"]),
    ]
    .into_iter()
    .collect()
}
