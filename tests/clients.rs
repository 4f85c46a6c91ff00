//! Client libraries other than tokio-postgres, as BI tools and analysts use them, through
//! pgveil as a restricted and an unrestricted user, checked against PostgreSQL and
//! tokio-postgres: psycopg2 (simple protocol with client-side parameters, server-side cursors,
//! COPY, error codes) and SQLAlchemy (catalog introspection, bound parameters), as pandas and
//! notebooks use them; pgjdbc (extended protocol, server-side prepared statements, a fetch size
//! through a named portal, DatabaseMetaData) as DBeaver and Metabase use it.
//!
//! The Python packages (pinned) are installed with pip into this test's target directory on
//! first use; pgjdbc is Debian's `libpostgresql-jdbc-java` (`.ci/run` installs it). Without
//! them the tests fail, they do not skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{scalar, Env};
use serde_json::{json, Value};

const PACKAGES: &[&str] = &["psycopg2-binary==2.9.10", "SQLAlchemy==2.0.36"];

/// A directory under the target dir holding `packages`, installed once by `installer` (which
/// gets the directory and the packages as its last arguments). Fails, never skips.
fn installed(name: &str, packages: &[&str], mut installer: Command, needs: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let marker = dir.join(format!(".installed-{}", packages.join("-")));
    if !marker.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let status = installer
            .arg(&dir)
            .args(packages)
            .status()
            .unwrap_or_else(|e| panic!("{installer:?}: {e}; the client tests need {needs}"));
        assert!(
            status.success(),
            "{installer:?} failed: the client tests need {needs}"
        );
        std::fs::write(&marker, "").unwrap();
    }
    dir
}

fn python_packages() -> PathBuf {
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
    ]);
    installed(
        "python-clients",
        PACKAGES,
        pip,
        "python3 with pip, and PyPI",
    )
}

const NODE_PACKAGES: &[&str] = &["pg@8.13.1"];

fn node_packages() -> PathBuf {
    let mut npm = Command::new("npm");
    npm.args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"]);
    installed(
        "node-clients",
        NODE_PACKAGES,
        npm,
        "node with npm, and the npm registry",
    )
    .join("node_modules")
}

/// pgjdbc from Debian's package.
const PGJDBC: &str = "/usr/share/java/postgresql.jar";

/// Run a client program (`cmd` + `args`, then port, user, password) as `user`; its JSON.
async fn client(env: &Env, mut cmd: Command, user: &str) -> Value {
    cmd.arg(env.port().to_string())
        .arg(user)
        .arg(pgveil::demo::password(user));
    let shown = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} as {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn script(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn python_client(env: &Env, packages: &PathBuf, user: &str) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg(script("psycopg_client.py"))
        .env("PYTHONPATH", packages);
    client(env, cmd, user).await
}

async fn node_client(env: &Env, modules: &PathBuf, user: &str) -> Value {
    let mut cmd = Command::new("node");
    cmd.arg(script("node_client.js")).env("NODE_PATH", modules);
    client(env, cmd, user).await
}

async fn jdbc_client(env: &Env, user: &str) -> Value {
    assert!(
        std::path::Path::new(PGJDBC).exists(),
        "{PGJDBC} missing: install Debian's libpostgresql-jdbc-java (.ci/run does)"
    );
    let mut cmd = Command::new("java");
    cmd.args(["-cp", PGJDBC]).arg(script("JdbcClient.java"));
    client(env, cmd, user).await
}

/// The ids `user` sees through pgveil (tokio-postgres), the first `n`.
async fn first_ids(env: &Env, user: &str, n: i64) -> Value {
    let c = env.connect(user).await;
    let rows = c
        .query("SELECT id FROM customers ORDER BY id LIMIT $1", &[&n])
        .await
        .unwrap();
    rows.iter().map(|r| json!(r.get::<_, i32>(0))).collect()
}

/// What the catalog says: public tables and the columns of customers, as JSON lists.
async fn structure(direct: &tokio_postgres::Client) -> (Value, Value) {
    let names = |sql: &'static str| async move {
        let rows = direct.query(sql, &[]).await.unwrap();
        rows.iter()
            .map(|r| json!(r.get::<_, String>(0)))
            .collect::<Value>()
    };
    let tables =
        names("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1");
    let columns = names(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'customers' ORDER BY ordinal_position",
    );
    (tables.await, columns.await)
}

/// Total customers and rita's (her scope: her own records).
async fn customer_counts(direct: &tokio_postgres::Client) -> (i64, i64) {
    let total = scalar(direct, "SELECT count(*) FROM customers").await;
    let ritas = scalar(
        direct,
        "SELECT count(*) FROM customers WHERE owner = 'rita'",
    )
    .await;
    assert!(ritas < total);
    (total, ritas)
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
    (Value::from(first_rows), first_ids(env, user, 10).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2_and_sqlalchemy_work_within_the_policy() {
    let packages = tokio::task::spawn_blocking(python_packages).await.unwrap();
    let env = Env::start().await;
    let direct = env.direct().await;
    let (total, ritas) = customer_counts(&direct).await;
    let (tables, columns) = structure(&direct).await;

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
        expect("tables", tables.clone());
        expect("columns", columns.clone());
        expect("pk", json!(["id"]));
        expect("fks", json!(["orders_customer_id_fkey"]));
        assert!(got["indexes"].is_array(), "{user}: indexes: {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_works_within_the_policy() {
    let env = Env::start().await;
    let direct = env.direct().await;
    let (total, ritas) = customer_counts(&direct).await;
    let (tables, columns) = structure(&direct).await;
    for (user, visible, refused) in [
        ("rita", ritas, json!("42501")),
        ("admin", total, Value::Null),
    ] {
        let got = jdbc_client(&env, user).await;
        let expect = |key: &str, want: Value| {
            assert_eq!(got[key], want, "{user}: {key} (all outcomes: {got})");
        };
        expect("count", json!(visible));
        expect("fetch_ids", first_ids(&env, user, 20).await);
        expect(
            "refused_then_usable",
            json!({"refused": refused, "after": 1}),
        );
        expect("tables", tables.clone());
        expect("columns", columns.clone());
        expect("pk", json!(["id"]));
        expect("fks", json!(["orders_customer_id_fkey"]));
        expect("indexes", json!(["customers_pkey"]));
        let schemas = got["schemas"].as_array().expect("schemas");
        assert!(schemas.contains(&json!("public")), "{user}: {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_works_within_the_policy() {
    let modules = tokio::task::spawn_blocking(node_packages).await.unwrap();
    let env = Env::start().await;
    let direct = env.direct().await;
    let (total, ritas) = customer_counts(&direct).await;
    for (user, visible, refused) in [
        ("rita", ritas, json!("42501")),
        ("admin", total, Value::Null),
    ] {
        let got = node_client(&env, &modules, user).await;
        let expect = |key: &str, want: Value| {
            assert_eq!(got[key], want, "{user}: {key} (all outcomes: {got})");
        };
        // the named statement, executed three times, gives what tokio-postgres gets
        let c = env.connect(user).await;
        let mut named = Vec::new();
        for i in [10, 11, 12] {
            let sql = "SELECT id FROM customers WHERE id >= $1 ORDER BY id LIMIT 1";
            let row = c.query_opt(sql, &[&i]).await.unwrap();
            named.push(row.map_or(Value::Null, |r| json!(r.get::<_, i32>(0))));
        }
        expect("count", json!(visible));
        expect("named", Value::from(named));
        expect(
            "refused_then_usable",
            json!({"refused": refused, "after": 1}),
        );
        expect("rolled_back_update", json!(1));
        expect("pool", json!(vec![visible; 8]));
    }
}
