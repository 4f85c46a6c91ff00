//! Client libraries other than tokio-postgres, as BI tools and analysts use them: psycopg2
//! (simple protocol with client-side parameters, server-side cursors, COPY, error codes) and
//! SQLAlchemy (catalog introspection as BI tools do it, bound parameters), through pgveil as a
//! restricted and an unrestricted user, checked against PostgreSQL and tokio-postgres.
//!
//! The Python packages (pinned) are installed with pip into this test's target directory on
//! first use; without them the test fails, it does not skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
mod common;

use std::path::PathBuf;

use common::Env;
use serde_json::{json, Value};

const PACKAGES: &[&str] = &["psycopg2-binary==2.9.10", "SQLAlchemy==2.0.36"];

/// A directory holding the client packages (installed once per target directory).
fn python_packages() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-clients");
    let marker = dir.join(format!(".installed-{}", PACKAGES.join("-")));
    if marker.exists() {
        return dir;
    }
    let status = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(&dir)
        .args(PACKAGES)
        .status()
        .expect("python3 with pip is needed for the client tests (.ci/run installs it)");
    assert!(
        status.success(),
        "pip install {PACKAGES:?} failed: the client tests need PyPI"
    );
    std::fs::write(&marker, "").unwrap();
    dir
}

/// Run the psycopg2/SQLAlchemy script as `user`; its JSON outcomes.
async fn python_client(env: &Env, packages: &PathBuf, user: &str) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/psycopg_client.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(env.port().to_string())
        .arg(user)
        .arg(pgveil::demo::password(user))
        .env("PYTHONPATH", packages)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "client script as {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// What tokio-postgres gets through pgveil as `user` for the script's first queries.
async fn seen_by(env: &Env, user: &str) -> (Value, Value) {
    let c = env.connect(user).await;
    let rows = c
        .query(
            "SELECT id, name, email FROM customers WHERE id > 0 ORDER BY id LIMIT 5",
            &[],
        )
        .await
        .unwrap();
    let first_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!([
                r.get::<_, i32>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, Option<String>>(2)
            ])
        })
        .collect();
    let ids = c
        .query("SELECT id FROM customers ORDER BY id LIMIT 10", &[])
        .await
        .unwrap();
    let ids: Vec<Value> = ids.iter().map(|r| json!(r.get::<_, i32>(0))).collect();
    (Value::from(first_rows), Value::from(ids))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2_and_sqlalchemy_work_within_the_policy() {
    let packages = tokio::task::spawn_blocking(python_packages).await.unwrap();
    let env = Env::start().await;
    let direct = env.direct().await;
    let total = count(&direct, "SELECT count(*) FROM customers").await;
    let ritas = count(
        &direct,
        "SELECT count(*) FROM customers WHERE owner = 'rita'",
    )
    .await;
    assert!(ritas < total);
    let columns: Vec<Value> = direct
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = 'customers' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| json!(r.get::<_, String>(0)))
        .collect();
    let tables: Vec<Value> = direct
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| json!(r.get::<_, String>(0)))
        .collect();

    for (user, visible, refused, copied) in [
        ("rita", ritas, json!("42501"), json!({"error": "42501"})),
        ("admin", total, Value::Null, json!(total)),
    ] {
        let got = python_client(&env, &packages, user).await;
        let (first_rows, ids) = seen_by(&env, user).await;
        let expect = |key: &str, want: Value| {
            assert_eq!(got[key], want, "{user}: {key} (all outcomes: {got})");
        };
        expect("count", json!(visible));
        expect("sqlalchemy_count", json!(visible));
        expect("first_rows", first_rows);
        expect("server_cursor", ids);
        expect(
            "refused_then_usable",
            json!({"refused": refused, "after": 1}),
        );
        expect("copy_out", copied);
        expect("rolled_back_update", json!(1));
        // structure stays readable for BI tools, restricted or not
        expect("tables", Value::from(tables.clone()));
        expect("columns", Value::from(columns.clone()));
        expect("pk", json!(["id"]));
        expect("fks", json!(["orders_customer_id_fkey"]));
        assert!(got["indexes"].is_array(), "{user}: indexes: {got}");
    }
}
