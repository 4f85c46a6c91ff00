//! Criterion benchmarks: parse + rewrite + print + re-check of realistic CRM queries, the
//! cached path, and policy compilation at scale (10,000 users, 200 roles, 300 tables).
//! Run: cargo bench --bench rewrite

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use pgveil::policy::model::*;
use pgveil::policy::{PolicyStore, Snapshot};
use pgveil::sql::{enforce_text, Cx, Limits, PolicyMemo, RewriteCache, Simple, Verdict};

fn rel(name: &str, cols: &[(&str, &str)]) -> ((String, String), Relation) {
    (
        ("public".into(), name.into()),
        Relation {
            schema: "public".into(),
            name: name.into(),
            columns: cols
                .iter()
                .map(|(n, t)| Column {
                    name: (*n).into(),
                    type_name: (*t).into(),
                    is_text: *t == "text",
                })
                .collect(),
        },
    )
}

fn demo_relations() -> RelationMap {
    let t = "text";
    let n = "numeric";
    let i = "integer";
    let ts = "timestamp with time zone";
    BTreeMap::from([
        rel(
            "customers",
            &[
                ("id", i),
                ("name", t),
                ("email", t),
                ("phone", t),
                ("owner", t),
                ("department", t),
                ("team", t),
                ("region", t),
                ("credit_limit", n),
                ("notes", t),
                ("created_at", ts),
            ],
        ),
        rel(
            "orders",
            &[
                ("id", i),
                ("customer_id", i),
                ("amount", n),
                ("status", t),
                ("owner", t),
                ("department", t),
                ("created_at", ts),
            ],
        ),
        rel(
            "payments",
            &[
                ("id", i),
                ("order_id", i),
                ("amount", n),
                ("method", t),
                ("card_last4", t),
                ("paid_at", ts),
            ],
        ),
        rel(
            "products",
            &[
                ("id", i),
                ("sku", t),
                ("name", t),
                ("price", n),
                ("cost", n),
                ("stock", i),
            ],
        ),
        rel(
            "tickets",
            &[
                ("id", i),
                ("customer_id", i),
                ("subject", t),
                ("status", t),
                ("priority", t),
                ("assignee", t),
                ("department", t),
                ("team", t),
            ],
        ),
        rel(
            "opportunities",
            &[
                ("id", i),
                ("customer_id", i),
                ("title", t),
                ("value", n),
                ("stage", t),
                ("owner", t),
                ("department", t),
            ],
        ),
    ])
}

const QUERIES: &[(&str, &str)] = &[
    ("point_lookup", "SELECT id, name, email, phone FROM customers WHERE id = $1"),
    ("join3", "SELECT c.name, o.amount, p.method FROM customers c JOIN orders o ON o.customer_id = c.id JOIN payments p ON p.order_id = o.id WHERE c.region = 'east'"),
    ("join5", "SELECT c.name, count(DISTINCT o.id), sum(p.amount), max(t.priority), count(op.id) FROM customers c JOIN orders o ON o.customer_id = c.id LEFT JOIN payments p ON p.order_id = o.id LEFT JOIN tickets t ON t.customer_id = c.id LEFT JOIN opportunities op ON op.customer_id = c.id GROUP BY c.name ORDER BY 2 DESC LIMIT 20"),
    ("aggregate", "SELECT department, count(*), avg(credit_limit) FROM customers GROUP BY department HAVING count(*) > 10"),
    ("cte", "WITH big AS (SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id) SELECT c.name, b.total FROM customers c JOIN big b ON b.customer_id = c.id WHERE b.total > 1000 ORDER BY b.total DESC"),
    ("update", "UPDATE customers SET notes = $1 WHERE id = $2"),
];

fn bench_rewrite(c: &mut Criterion) {
    let catalog = pgveil::policy::file::parse(pgveil::demo::POLICY_TOML).expect("demo policy");
    let store = PolicyStore::new(catalog, demo_relations(), true, 1000);
    let snap = store.snapshot();
    let now = chrono::Utc::now();
    let search_path = vec!["public".to_owned()];
    let limits = Limits {
        search_path: &search_path,
        database: "crm",
        max_depth: 64,
    };
    for user in ["maria", "dana"] {
        let eff = store
            .effective_in(&snap, user, now, None)
            .expect("demo user");
        for (name, sql) in QUERIES {
            let cx = Cx::new(&eff, &snap, &search_path, "crm", 64);
            if !matches!(enforce_text(&cx, sql, true), Verdict::Forward(_)) {
                // e.g. dana has no payments permission: a refusal is not the path measured here
                assert_ne!(user, "maria", "{name}");
                continue;
            }
            c.bench_function(&format!("rewrite/{user}/{name}"), |b| {
                b.iter(|| {
                    let cx = Cx::new(&eff, &snap, &search_path, "crm", 64);
                    black_box(enforce_text(&cx, black_box(sql), true))
                })
            });
        }
        let memo = PolicyMemo::new(1000);
        for (name, sql) in QUERIES {
            c.bench_function(
                &format!("rewrite_memo/{user}/{name} (new SQL text, policy subqueries memoised)"),
                |b| {
                    b.iter(|| {
                        let cx = Cx::new(&eff, &snap, &search_path, "crm", 64).with_memo(&memo);
                        black_box(enforce_text(&cx, black_box(sql), true))
                    })
                },
            );
        }
        let cache = RewriteCache::new(10_000);
        let (_, sql) = QUERIES[2];
        c.bench_function(
            &format!("cached/{user}/join5 (policy lookup + rewrite cache hit)"),
            |b| {
                b.iter(|| {
                    let eff = store
                        .effective_in(&snap, user, chrono::Utc::now(), None)
                        .expect("user");
                    black_box(cache.enforce(&limits, &snap, &eff, black_box(sql), true))
                })
            },
        );
        // simple protocol with inlined literals: a new SQL text every time, one template; a
        // comment makes the shape scan decline, so sqlparser's lexer normalises the text
        let mut id = 0u64;
        for (what, tail) in [
            (
                "new literal each time (shape scan + shape hit + splice)",
                "",
            ),
            (
                "with a comment (lexer + template hit + splice)",
                " /* app */",
            ),
        ] {
            c.bench_function(&format!("cached_simple/{user}/point lookup, {what}"), |b| {
                b.iter(|| {
                    id += 1;
                    let sql = format!(
                        "SELECT name, email FROM customers WHERE id = {id} AND name <> 'x'{tail}"
                    );
                    black_box(
                        cache
                            .enforce_simple(&limits, &snap, &eff, black_box(&sql))
                            .into_verdict(),
                    )
                })
            });
        }
        // the same statement as parameters of pgveil's prepared statement (what the session
        // sends when `server.prepare_simple_statements` is on)
        c.bench_function(
            &format!(
                "cached_simple/{user}/point lookup, bound (shape scan + shape hit + parameters)"
            ),
            |b| {
                b.iter(|| {
                    id += 1;
                    let sql = format!(
                        "SELECT name, email FROM customers WHERE id = {id} AND name <> 'x'"
                    );
                    match cache.enforce_simple(&limits, &snap, &eff, black_box(&sql)) {
                        Simple::Template(t) => {
                            black_box(t.bind_plan().map(|(_, p)| p).expect("bindable"));
                        }
                        Simple::Verdict(_) => panic!("expected a cached template"),
                    }
                })
            },
        );
    }
}

/// A synthetic large catalog: 10,000 users, 200 roles, 300 tables.
fn large_catalog() -> (Catalog, RelationMap) {
    let mut cat = Catalog::default();
    let mut rels = RelationMap::new();
    for d in 0..50 {
        cat.departments.push(Department {
            id: format!("d{d}"),
            name: format!("D{d}"),
            parent: (d > 0).then(|| format!("d{}", d / 5)),
        });
    }
    for t in 0..300 {
        let name = format!("t{t}");
        cat.objects.push(Object {
            name: name.clone(),
            schema: "public".into(),
            table: name.clone(),
            primary_key: "id".into(),
            owner_column: Some("owner".into()),
            department_column: Some("department".into()),
            team_column: None,
            parent_object: (t % 3 == 2).then(|| format!("t{}", t - 1)),
            parent_column: (t % 3 == 2).then(|| "parent_id".into()),
        });
        let cols: Vec<Column> = [
            "id",
            "owner",
            "department",
            "parent_id",
            "a",
            "b",
            "c",
            "d",
            "e",
            "f",
        ]
        .iter()
        .map(|c| Column {
            name: (*c).into(),
            type_name: "text".into(),
            is_text: true,
        })
        .collect();
        rels.insert(
            ("public".into(), name.clone()),
            Relation {
                schema: "public".into(),
                name,
                columns: cols,
            },
        );
    }
    let scopes = [
        Scope::All,
        Scope::Department,
        Scope::DepartmentTree,
        Scope::Assigned,
        Scope::Parent,
    ];
    for r in 0..200 {
        let role = format!("r{r}");
        cat.roles.push(Role {
            name: role.clone(),
            kind: RoleKind::Business,
            description: String::new(),
            parent: (r % 10 != 0).then(|| format!("r{}", r - 1)),
            builtin: false,
            unrestricted: false,
            bulk_operations: r % 2 == 0,
            bulk_threshold: 100,
            data_export: r % 3 == 0,
            max_rows: None,
            system_permissions: vec![],
        });
        for k in 0..15 {
            let object = format!("t{}", (r * 7 + k * 13) % 300);
            for action in ["list", "view", "edit"] {
                cat.permissions.push(Permission {
                    role: role.clone(),
                    object: object.clone(),
                    action: action.into(),
                    effect: Effect::Allow,
                });
            }
            cat.scopes.push(ScopeRule {
                role: role.clone(),
                object: object.clone(),
                scope: scopes[(r + k) % scopes.len()],
            });
            cat.fields.push(FieldRule {
                role: role.clone(),
                object,
                column: "e".into(),
                level: FieldLevel::Invisible,
                mask: None,
            });
        }
    }
    for u in 0..10_000 {
        let name = format!("u{u}");
        cat.users.push(User {
            name: name.clone(),
            owner_value: name.clone(),
            department: Some(format!("d{}", u % 50)),
            approval_department: None,
            teams: vec![],
            active: true,
            primary_role: None,
            password_verifier: None,
        });
        for k in 0..3 {
            cat.assignments.push(Assignment {
                role: format!("r{}", (u * 3 + k * 67) % 200),
                user: Some(name.clone()),
                group: None,
                valid_from: None,
                valid_until: None,
                allowed_networks: vec![],
                time_window: None,
            });
        }
    }
    (cat, rels)
}

fn bench_compile(c: &mut Criterion) {
    let (cat, rels) = large_catalog();
    c.bench_function(
        "policy/snapshot_index (10k users, 200 roles, 300 tables)",
        |b| b.iter(|| black_box(Snapshot::new(1, cat.clone(), rels.clone()))),
    );
    let store = PolicyStore::new(cat, rels, true, 100_000);
    let snap = store.snapshot();
    let user = snap.user("u4242").expect("user").clone();
    let now = chrono::Utc::now();
    c.bench_function("policy/compile_one_user (uncached)", |b| {
        b.iter(|| {
            let active = snap.active_assignments(&user.name, now, None);
            black_box(pgveil::policy::compile::compile(&snap, &user, &active))
        })
    });
    let _ = store.effective_in(&snap, "u4242", now, None);
    c.bench_function("policy/effective_lookup (cached, per statement)", |b| {
        b.iter(|| black_box(store.effective_in(&snap, black_box("u4242"), now, None)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench_rewrite, bench_compile
}
criterion_main!(benches);
