//! Issue 3: the catalog rejects bad policy, reloads live, round-trips as a file, explains
//! itself; several pgveil instances converge; temporary roles expire inside a session.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
mod common;

use std::time::{Duration, Instant};

use common::{code, expect_code, Env};

async fn count(c: &tokio_postgres::Client, sql: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(c.query_one(sql, &[]).await?.get(0))
}

/// Poll until `f` holds (policy reload is asynchronous); returns how long it took.
async fn eventually<F, Fut>(what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if f().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

/// Poll until reading customers is refused (42501) for `c`.
async fn eventually_refused(c: &tokio_postgres::Client, what: &str) {
    eventually(what, || async {
        matches!(c.simple_query("SELECT count(*) FROM customers").await, Err(e) if code(&e) == "42501")
    })
    .await;
}

fn write_config(env: &Env, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("pgveil.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"crm\"\nuser = \"{}\"\npassword = \"{}\"\n",
            env.pg.port(),
            pgveil::demo::SERVICE_USER,
            pgveil::demo::SERVICE_PASSWORD
        ),
    )
    .unwrap();
    path
}

fn pgveil(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_reject_invalid_policy() {
    let env = Env::start().await;
    let d = env.direct().await;
    let bad = [
        ("SELECT pgveil.set_scope('Staff', 'customers', 'everything')", "23514"),
        ("SELECT pgveil.set_field('Staff', 'customers', 'phone', 'hidden')", "23514"),
        ("SELECT pgveil.grant_permission('No Such Role', 'customers', ARRAY['list'])", "23503"),
        ("SELECT pgveil.grant_permission('Staff', 'no_such_object', ARRAY['list'])", "23503"),
        ("UPDATE pgveil.roles SET parent_role = 'Telemarketer' WHERE name = 'Guest'", "23514"),
        ("INSERT INTO pgveil.assignments (role, user_name, group_name) VALUES ('Staff', 'rita', 'service-desk')", "23514"),
        ("INSERT INTO pgveil.assignments (role, user_name, valid_from, valid_until) VALUES ('Staff', 'rita', now(), now() - interval '1 day')", "23514"),
        ("UPDATE pgveil.users SET password_verifier = 'plaintext' WHERE name = 'rita'", "23514"),
        ("DELETE FROM pgveil.roles WHERE name = 'CRM Administrator'", "42501"),
        ("UPDATE pgveil.departments SET parent_id = 'sales_east' WHERE id = 'sales'", "23514"),
        ("SELECT pgveil.set_primary_role('rita', 'Manager')", "23514"),
    ];
    for (sql, want) in bad {
        let e = d.batch_execute(sql).await.expect_err(sql);
        assert_eq!(code(&e), want, "{sql}: {e}");
    }
    // remove_all_roles keeps CRM Administrator; copy_roles superimposes
    d.batch_execute("SELECT pgveil.assign_role('maria', 'CRM Administrator')")
        .await
        .unwrap();
    d.batch_execute("SELECT pgveil.remove_all_roles('maria')")
        .await
        .unwrap();
    let roles = common::first_column(
        &d,
        "SELECT role FROM pgveil.assignments WHERE user_name = 'maria'",
    )
    .await;
    assert_eq!(roles, vec!["CRM Administrator".to_owned()]);
    d.batch_execute("SELECT pgveil.copy_roles('dana', 'sam')")
        .await
        .unwrap();
    let n: i64 = d
        .query_one(
            "SELECT count(*) FROM pgveil.assignments WHERE user_name = 'sam'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "Staff + Sales Representative + Telemarketer");
    d.batch_execute("SELECT pgveil.set_primary_role('sam', 'Telemarketer')")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reload_live_in_open_sessions_and_instances_converge() {
    let env = Env::start().await;
    // a second pgveil on the same catalog
    let second = pgveil::server::start(env.cfg.clone()).await.unwrap();
    let rita = env.connect("rita").await;
    let rita2 = common::connect_str(&format!(
        "host=127.0.0.1 port={} user=rita password={} dbname=crm",
        second.addr.port(),
        pgveil::demo::password("rita")
    ))
    .await
    .unwrap();
    let before = count(&rita, "SELECT count(*) FROM customers")
        .await
        .unwrap();
    assert!(before < 2000);
    // SQL-level prepared statements are scoped to the policy they were enforced under
    rita.batch_execute("PREPARE mine AS SELECT count(*) FROM customers")
        .await
        .unwrap();
    assert_eq!(count(&rita, "EXECUTE mine").await.unwrap(), before);
    let d = env.direct().await;
    // a reload that changes someone else's policy leaves them working
    let tom = env.connect("tom").await;
    d.batch_execute("SELECT pgveil.revoke_role('tom', 'Telemarketer')")
        .await
        .unwrap();
    eventually_refused(&tom, "tom refused").await;
    assert_eq!(count(&rita, "EXECUTE mine").await.unwrap(), before);
    d.batch_execute("SELECT pgveil.set_scope('Sales Representative', 'customers', 'all')")
        .await
        .unwrap();
    let took = eventually("rita sees all customers", || async {
        count(&rita, "SELECT count(*) FROM customers").await.ok() == Some(2000)
    })
    .await;
    eventually("second instance converges", || async {
        count(&rita2, "SELECT count(*) FROM customers").await.ok() == Some(2000)
    })
    .await;
    println!("reload visible after {took:?}");
    // the statement prepared under the old policy is gone for rita; preparing again works
    expect_code(&rita, "EXECUTE mine", "26000").await;
    rita.batch_execute("PREPARE mine AS SELECT count(*) FROM customers")
        .await
        .unwrap();
    assert_eq!(count(&rita, "EXECUTE mine").await.unwrap(), 2000);
    rita.batch_execute("DEALLOCATE mine; DEALLOCATE ALL")
        .await
        .unwrap();
    // a field rule change applies to the same open session
    d.batch_execute(
        "SELECT pgveil.set_field('Sales Representative', 'customers', 'phone', 'invisible')",
    )
    .await
    .unwrap();
    eventually("phone hidden", || async {
        count(&rita, "SELECT count(phone) FROM customers")
            .await
            .ok()
            == Some(0)
    })
    .await;
    // revoking the role: next statement refused
    d.batch_execute("SELECT pgveil.revoke_role('rita', 'Sales Representative')")
        .await
        .unwrap();
    eventually_refused(&rita, "rita refused").await;
    // a reload that fails keeps the last good policy: break a catalog table, change nothing else
    d.batch_execute("ALTER TABLE pgveil.safe_functions RENAME TO safe_functions_gone")
        .await
        .unwrap();
    d.batch_execute("NOTIFY pgveil_policy, 'test'")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let maria = env.connect("maria").await;
    assert!(
        count(&maria, "SELECT count(*) FROM customers")
            .await
            .unwrap()
            > 0
    );
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_role_expires_inside_a_session() {
    let env = Env::start().await;
    let d = env.direct().await;
    d.batch_execute(
        "UPDATE pgveil.assignments SET valid_until = now() + interval '3 seconds' WHERE user_name = 'gina'",
    )
    .await
    .unwrap();
    let gina = env.connect("gina").await;
    eventually("gina reads while valid", || async {
        count(&gina, "SELECT count(*) FROM customers").await.ok() == Some(5)
    })
    .await;
    eventually("gina refused after expiry", || async {
        matches!(gina.simple_query("SELECT count(*) FROM customers").await, Err(e) if code(&e) == "42501")
    })
    .await;
    // expired and conditional assignments from the demo
    let ex = env.connect("ex").await;
    assert_eq!(
        code(
            &ex.simple_query("SELECT * FROM customers")
                .await
                .unwrap_err()
        ),
        "42501"
    );
    let nora = env.connect("nora").await; // Manager only from 10.0.0.0/8: from 127.0.0.1 she is Staff
    let n = count(&nora, "SELECT count(*) FROM customers")
        .await
        .unwrap();
    assert_eq!(
        n,
        count(&d, "SELECT count(*) FROM customers WHERE owner = 'nora'")
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_permissions_are_queryable() {
    let env = Env::start().await;
    let tom = env.connect("tom").await;
    let rows = tom
        .query(
            "SELECT kind, object, name, detail FROM pgveil_my_permissions ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .unwrap();
    let flat: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}|{}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3)
            )
        })
        .collect();
    assert!(
        flat.iter().any(|l| l.starts_with("role||Telemarketer")),
        "{flat:?}"
    );
    assert!(
        flat.iter()
            .any(|l| l.starts_with("field|customers|phone|invisible")),
        "{flat:?}"
    );
    assert!(
        flat.iter()
            .any(|l| l.starts_with("action|customers|list|department in")),
        "{flat:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_policy_roundtrip_passwd_explain_check() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&env, dir.path());
    let cfg = cfg.to_str().unwrap();
    let (ok, out, err) = pgveil(&["check", "--config", cfg], None);
    assert!(ok, "{out}{err}");
    std::fs::write(dir.path().join("bad.toml"), "[server]\nlisten = 'x'\nmax_connections = 0\n[upstream]\nhost='h'\ndatabase='d'\nuser='u'\n").unwrap();
    let (ok, _, err) = pgveil(
        &[
            "check",
            "--config",
            dir.path().join("bad.toml").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        !ok && err.contains("server.listen") && err.contains("server.max_connections"),
        "{err}"
    );
    // export → file equals the applied demo policy; re-applying changes nothing
    let (ok, exported, err) = pgveil(&["policy", "export", "--config", cfg], None);
    assert!(ok, "{err}");
    let demo = pgveil::policy::file::parse(pgveil::demo::POLICY_TOML).unwrap();
    let back = pgveil::policy::file::parse(&exported).unwrap();
    assert_eq!(demo, back, "export is the applied policy");
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, &exported).unwrap();
    let (ok, out, err) = pgveil(
        &["policy", "apply", file.to_str().unwrap(), "--config", cfg],
        None,
    );
    assert!(ok && out.contains("already matches"), "{out}{err}");
    // a change shows in --dry-run and is not applied
    std::fs::write(
        &file,
        exported
            .replace("name = \"Shipping Personnel\"", "name = \"Shipping Crew\"")
            .replace("role = \"Shipping Personnel\"", "role = \"Shipping Crew\""),
    )
    .unwrap();
    let (ok, out, err) = pgveil(
        &[
            "policy",
            "apply",
            file.to_str().unwrap(),
            "--dry-run",
            "--config",
            cfg,
        ],
        None,
    );
    assert!(
        ok && out.contains("+ role Shipping Crew") && out.contains("- role Shipping Personnel"),
        "{out}{err}"
    );
    let (ok, out, err) = pgveil(
        &["policy", "apply", file.to_str().unwrap(), "--config", cfg],
        None,
    );
    assert!(ok, "{out}{err}");
    let d = env.direct().await;
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM pgveil.roles WHERE name = 'Shipping Crew'"
        )
        .await
        .unwrap(),
        1
    );
    // passwords: policy enforced, verifier stored, login works
    let (ok, _, err) = pgveil(
        &["user", "passwd", "rita", "--config", cfg],
        Some("short\n"),
    );
    assert!(!ok && err.contains("password policy"), "{err}");
    let (ok, _, err) = pgveil(
        &["user", "passwd", "rita", "--config", cfg],
        Some("NewSecret2026x\n"),
    );
    assert!(ok, "{err}");
    let v = common::verifier(&d, "rita").await;
    assert!(v.starts_with("SCRAM-SHA-256$") && !v.contains("NewSecret"));
    eventually("new password accepted", || async {
        common::connect_str(&format!(
            "host=127.0.0.1 port={} user=rita password=NewSecret2026x dbname=crm",
            env.port()
        ))
        .await
        .is_ok()
    })
    .await;
    // explain
    let (ok, out, err) = pgveil(&["explain", "--user", "dana", "--config", cfg], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("Telemarketer")
            && out.contains("Sales Representative")
            && out.contains("field phone"),
        "{out}"
    );
    let (ok, out, _) = pgveil(&["explain", "--user", "nora", "--config", cfg], None);
    assert!(ok && out.contains("outside the allowed networks"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_user_password_through_pgveil() {
    let env = Env::start().await;
    let rita = env.connect("rita").await;
    let e = rita
        .batch_execute("ALTER USER rita PASSWORD 'weak'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023", "{e}");
    let e = rita
        .batch_execute("ALTER USER sam PASSWORD 'Another-Pass-2026'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    rita.batch_execute("ALTER USER rita PASSWORD 'Another-Pass-2026'")
        .await
        .unwrap();
    let d = env.direct().await;
    let v = common::verifier(&d, "rita").await;
    assert!(v.starts_with("SCRAM-SHA-256$"));
    // no PostgreSQL role was created or changed
    assert_eq!(
        count(&d, "SELECT count(*) FROM pg_roles WHERE rolname = 'rita'")
            .await
            .unwrap(),
        0
    );
    eventually("new password works", || async {
        common::connect_str(&format!(
            "host=127.0.0.1 port={} user=rita password=Another-Pass-2026 dbname=crm",
            env.port()
        ))
        .await
        .is_ok()
    })
    .await;
    // psql's \password sends a verifier computed on the client: accepted as is
    let verifier = pgveil::policy::password::make_verifier("Client-Side-2026");
    let admin = env.connect("admin").await;
    admin
        .batch_execute(&format!("ALTER USER sam PASSWORD '{verifier}'"))
        .await
        .unwrap();
    eventually("verifier password works", || async {
        common::connect_str(&format!(
            "host=127.0.0.1 port={} user=sam password=Client-Side-2026 dbname=crm",
            env.port()
        ))
        .await
        .is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_do_not_outlive_a_policy_change() {
    let env = Env::start().await;
    let rita = env.connect("rita").await;
    let stmt = rita
        .prepare("SELECT count(*) FROM customers")
        .await
        .unwrap();
    let before: i64 = rita.query_one(&stmt, &[]).await.unwrap().get(0);
    assert!(before > 0);
    let d = env.direct().await;
    d.batch_execute("SELECT pgveil.revoke_role('rita', 'Sales Representative')")
        .await
        .unwrap();
    eventually("prepared statement refused after revoke", || async {
        matches!(rita.query_one(&stmt, &[]).await, Err(e) if code(&e) == "42501")
    })
    .await;
    // an unchanged policy keeps prepared statements working (no spurious refusals)
    let maria = env.connect("maria").await;
    let s2 = maria
        .prepare("SELECT count(*) FROM products")
        .await
        .unwrap();
    d.batch_execute("SELECT pgveil.set_field('Telemarketer', 'customers', 'region', 'read_only')")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n: i64 = maria.query_one(&s2, &[]).await.unwrap().get(0);
    assert_eq!(n, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_through_pgveil_without_escalation() {
    let env = Env::start().await;
    let d = env.direct().await;
    // maria: Manager (manage_users, manage_roles)
    let maria = env.connect("maria").await;
    maria
        .batch_execute("SELECT pgveil.assign_role('sam', 'Telemarketer')")
        .await
        .unwrap();
    assert_eq!(
        count(&d, "SELECT count(*) FROM pgveil.assignments WHERE user_name = 'sam' AND role = 'Telemarketer'").await.unwrap(),
        1
    );
    for (sql, why) in [
        (
            "SELECT pgveil.assign_role('maria', 'CRM Administrator')",
            "full access",
        ),
        ("SELECT pgveil.assign_role('sam', 'Owner')", "full access"),
        (
            "SELECT pgveil.set_scope('Staff', 'customers', 'all')",
            "manage_policies",
        ),
        (
            "SELECT pgveil.revoke_role('admin', 'CRM Administrator')",
            "CRM Administrator",
        ),
        (
            "SELECT pgveil.assign_role((SELECT 'sam'), 'Staff')",
            "literals",
        ),
        ("SELECT pgveil.copy_roles('olivia', 'sam')", "full access"),
    ] {
        let e = maria.batch_execute(sql).await.unwrap_err();
        assert_eq!(code(&e), "42501", "{sql}");
        assert!(
            common::message(&e).contains(why),
            "{sql}: {}",
            common::message(&e)
        );
    }
    // rita holds no management permission
    let rita = env.connect("rita").await;
    let e = rita
        .batch_execute("SELECT pgveil.assign_role('rita', 'Manager')")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    // admin functions cannot be smuggled into ordinary queries
    let e = maria
        .batch_execute("SELECT pgveil.assign_role('sam', 'Staff') FROM customers")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    assert_eq!(count(&d, "SELECT count(*) FROM pgveil.assignments WHERE role IN ('CRM Administrator', 'Owner') AND user_name <> 'admin' AND user_name <> 'olivia'").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segregation_of_duties_audit_trail_and_idempotent_init() {
    let env = Env::start().await;
    let d = env.direct().await;
    d.batch_execute(
        "INSERT INTO pgveil.role_conflicts (role_a, role_b, reason) VALUES ('Shipping Personnel', 'Customer Service Rep', 'ships what it sells')",
    )
    .await
    .unwrap();
    // carl holds Customer Service Rep through the service-desk group
    let e = d
        .batch_execute("SELECT pgveil.assign_role('carl', 'Shipping Personnel')")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23514", "{e}");
    assert!(common::message(&e).contains("segregation of duties"));
    d.batch_execute("SELECT pgveil.assign_role('sam', 'Shipping Personnel')")
        .await
        .unwrap();
    // every change is audited, without password verifiers
    let n = count(&d, "SELECT count(*) FROM pgveil.audit_log WHERE table_name = 'assignments' AND new_row->>'user_name' = 'sam' AND new_row->>'role' = 'Shipping Personnel'").await.unwrap();
    assert_eq!(n, 1);
    let leaked = count(&d, "SELECT count(*) FROM pgveil.audit_log WHERE new_row ? 'password_verifier' OR old_row ? 'password_verifier'").await.unwrap();
    assert_eq!(leaked, 0);
    // init is idempotent and versioned
    let mut c = pgveil::control::connect(&env.cfg, "crm", None)
        .await
        .unwrap();
    assert!(pgveil::policy::migrate::migrate(&mut c)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        count(&d, "SELECT max(version)::bigint FROM pgveil.schema_version")
            .await
            .unwrap(),
        2
    );
    // the CLI says so, and says whether structure changes reload the policy
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&env, dir.path());
    let (ok, out, err) = pgveil(&["init", "--config", cfg.to_str().unwrap()], None);
    assert!(ok, "{err}");
    assert!(out.contains("catalog is up to date (version 2)"), "{out}");
    assert!(
        out.contains("DDL event trigger pgveil_ddl is enabled"),
        "{out}"
    );
}

/// A reload that finds nothing changed (DDL fires one for every index or temporary table)
/// keeps the policy generation, so rewrite caches and prepared statements stay as they are;
/// a real change (a new column) still reloads. Without the DDL trigger, a column added
/// upstream stays unreadable (tables go through policy subqueries of known columns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_follow_structure_changes_and_skip_no_ops() {
    let env = Env::start().await;
    let store = env.running.server.store.clone();
    let looked = |n: u64| {
        let store = store.clone();
        move || {
            let store = store.clone();
            async move { store.reloads_checked() > n }
        }
    };
    eventually("the reloader's first look", looked(0)).await;
    assert!(
        store.snapshot().relations_tracked,
        "the demo installs the DDL trigger"
    );
    let g0 = store.snapshot().generation;
    let seen = store.reloads_checked();
    let d = env.direct().await;
    d.batch_execute("CREATE INDEX customers_name_idx ON customers (name)")
        .await
        .unwrap();
    eventually("the DDL reload looked at", looked(seen)).await;
    assert_eq!(
        store.snapshot().generation,
        g0,
        "an index changed nothing pgveil reads"
    );
    d.batch_execute("ALTER TABLE customers ADD COLUMN loyalty int")
        .await
        .unwrap();
    eventually("a new column reloads", || {
        let store = store.clone();
        async move { store.snapshot().generation > g0 }
    })
    .await;
    // without the trigger: a column added later is not readable until pgveil knows it
    let seen = store.reloads_checked();
    d.batch_execute("ALTER EVENT TRIGGER pgveil_ddl DISABLE; NOTIFY pgveil_policy, 'test'")
        .await
        .unwrap();
    eventually("untracked reload", looked(seen)).await;
    assert!(!store.snapshot().relations_tracked);
    d.batch_execute("ALTER TABLE customers ADD COLUMN secret text DEFAULT 's3cret'")
        .await
        .unwrap();
    let rita = env.connect("rita").await;
    expect_code(&rita, "SELECT secret FROM customers", "42703").await;
    let rows = rita
        .simple_query("SELECT * FROM customers LIMIT 1")
        .await
        .unwrap();
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            assert!(r.columns().iter().all(|c| c.name() != "secret"));
        }
    }
}

/// First cell of a simple-protocol query as a number, or the SQLSTATE.
async fn simple_count(c: &tokio_postgres::Client, sql: &str) -> Result<i64, String> {
    let rows = common::simple_rows(c, sql).await?;
    rows.iter()
        .find_map(|r| r.first()?.as_deref()?.parse().ok())
        .ok_or_else(|| "no row".to_owned())
}

/// Simple-protocol statements that pgveil runs as its own prepared statements upstream follow
/// a policy change within the same session: a wider scope, a hidden field, a revoked role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_simple_statements_follow_policy_changes() {
    let env = Env::start().await;
    let rita = env.connect("rita").await;
    let d = env.direct().await;
    let all = "SELECT count(*) FROM customers WHERE id > 0";
    let phones = "SELECT count(phone) FROM customers WHERE id > 0";
    let mine = simple_count(&rita, all).await.unwrap();
    assert_eq!(simple_count(&rita, all).await.unwrap(), mine);
    assert!(mine > 0 && mine < 2000);
    assert!(simple_count(&rita, phones).await.unwrap() > 0);
    d.batch_execute("SELECT pgveil.set_scope('Sales Representative', 'customers', 'all')")
        .await
        .unwrap();
    eventually("wider scope", || async {
        simple_count(&rita, all).await == Ok(2000)
    })
    .await;
    d.batch_execute(
        "SELECT pgveil.set_field('Sales Representative', 'customers', 'phone', 'invisible')",
    )
    .await
    .unwrap();
    eventually("phone hidden", || async {
        simple_count(&rita, phones).await == Ok(0)
    })
    .await;
    d.batch_execute("SELECT pgveil.revoke_role('rita', 'Sales Representative')")
        .await
        .unwrap();
    eventually("refused after revoke", || async {
        simple_count(&rita, all).await == Err("42501".into())
    })
    .await;
}
