//! Adversarial end-to-end tests: every bypass we know of, tried with a real client against a
//! real PostgreSQL through pgveil. Each asserts that nothing leaked and nothing was written.
//! THREAT_MODEL.md names these tests per vector.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
mod common;

use common::{code, expect_code_extended, scalar, Env};
use tokio_postgres::Client;

/// Integer cells of every row of every result of a simple query, or the SQLSTATE.
async fn ints(c: &Client, sql: &str) -> Result<Vec<i64>, String> {
    let rows = common::simple_rows(c, sql).await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.first()?.as_deref()?.parse::<i64>().ok())
        .collect())
}

/// A digest of every row of each table, read directly: equal before and after a statement
/// means the statement wrote nothing at all (not just nothing in the column a test looks at).
async fn digest(direct: &Client, tables: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        let sql = format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {t} t"
        );
        out.push(direct.query_one(&sql, &[]).await.unwrap().get(0));
    }
    out
}

/// `sql` (extended protocol) fails with `expected` and leaves `tables` exactly as they were.
async fn refused_unchanged(
    direct: &Client,
    c: &Client,
    sql: &str,
    expected: &str,
    tables: &[&str],
) -> tokio_postgres::Error {
    let before = digest(direct, tables).await;
    let e = expect_code_extended(c, sql, expected).await;
    assert_eq!(
        digest(direct, tables).await,
        before,
        "{sql} wrote something"
    );
    e
}

/// A direct (superuser) connection, and how many customers rita owns, read through it.
async fn direct_and_ritas_count(env: &Env) -> (Client, i64) {
    let direct = env.direct().await;
    let mine = scalar(
        &direct,
        "SELECT count(*) FROM customers WHERE owner = 'rita'",
    )
    .await;
    (direct, mine)
}

/// Reads of customers outside rita's scope, in every disguise: each must be refused or
/// return counts no larger than her scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_scope_cannot_be_bypassed() {
    let env = Env::start().await;
    let (direct, mine) = direct_and_ritas_count(&env).await;
    let total = scalar(&direct, "SELECT count(*) FROM customers").await;
    assert!(mine < total);
    let rita = env.connect("rita").await;
    let attacks = [
        "SELECT count(*) FROM customers",
        "SELECT count(*) FROM public.customers",
        "SELECT count(*) FROM \"customers\"",
        "SELECT count(*) FROM CUSTOMERS",
        "SELECT count(*) FROM crm.public.customers",
        "SELECT count(*) FROM public . customers",
        "WITH c AS (SELECT * FROM customers) SELECT count(*) FROM c",
        "WITH customers AS (SELECT * FROM customers) SELECT count(*) FROM customers",
        "WITH a AS (SELECT 1), customers AS (SELECT * FROM public.customers) SELECT count(*) FROM customers",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1) SELECT count(*) FROM customers, r",
        "SELECT count(*) FROM (SELECT * FROM customers) s",
        "SELECT (SELECT count(*) FROM customers)",
        "SELECT count(*) FROM customers UNION ALL SELECT count(*) FROM customers",
        "SELECT count(*) FROM customers INTERSECT SELECT count(*) FROM customers",
        "SELECT count(*) FROM LATERAL (SELECT * FROM customers) x",
        "SELECT count(*) FROM customers c1 JOIN customers c2 USING (id)",
        "SELECT count(*) FROM customers c1 LEFT JOIN customers c2 ON c1.id = c2.id",
        "/* hi */ SELECT count(*) FROM customers -- there",
        "SELECT count(*) FROM customers /* nested /* comment */ */",
        "SELECT count(*) FROM customers WHERE id IN (SELECT customer_id FROM orders)",
        "SELECT count(*) FROM customers WHERE EXISTS (SELECT 1)",
        "SELECT count(*) FROM customers WHERE owner <> 'rita' OR true",
        "SELECT count(*) FROM customers, pg_catalog.pg_class c WHERE c.relname = 'pg_class'",
        "SELECT count(*) FROM (VALUES (1)) v, customers",
        "SELECT count(*) FROM customers GROUP BY () HAVING true",
        "SELECT count(*) FROM customers; SELECT count(*) FROM customers",
        "SELECT 'x\\'' UNION SELECT count(*)::text FROM customers --'",
        "SELECT \"count\"(*) FROM customers",
        "SELECT count(*) FROM ONLY customers",
        "SELECT count(*) FROM customers TABLESAMPLE SYSTEM (100)",
        "SELECT count(*) FROM customers AS c(a, b, c)",
        "SELECT count(*) FROM customers FOR UPDATE",
        "SELECT count(*) FROM (TABLE customers) t",
        "SELECT count(*) FROM rows from (generate_series(1,1)), customers",
        "SELECT sum(x) FROM (SELECT 1 AS x FROM customers) s",
    ];
    for sql in attacks {
        match ints(&rita, sql).await {
            Ok(values) => {
                for v in values {
                    assert!(v <= mine, "LEAK: {sql} returned {v} > {mine}");
                }
            }
            Err(code) => assert!(
                ["42501", "0A000", "42P01", "42601", "42703", "54000", "42803"]
                    .contains(&code.as_str()),
                "{sql}: unexpected {code}"
            ),
        }
    }
    // other owners are simply not there
    assert_eq!(
        scalar(&rita, "SELECT count(*) FROM customers WHERE owner = 'sam'").await,
        0
    );
    // joins through a child table only reach her customers
    let mine_orders = scalar(&direct, "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.owner = 'rita'").await;
    assert_eq!(
        scalar(
            &rita,
            "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id"
        )
        .await,
        mine_orders
    );
    assert_eq!(scalar(&rita, "SELECT count(*) FROM orders o LEFT JOIN customers c ON c.id = o.customer_id WHERE c.id IS NULL").await, 0);
    // payments inherit through orders → customers (two levels)
    let mine_pay = scalar(&direct, "SELECT count(*) FROM payments p JOIN orders o ON o.id = p.order_id JOIN customers c ON c.id = o.customer_id WHERE c.owner = 'rita'").await;
    let maria = env.connect("maria").await;
    let maria_pay = scalar(&direct, "SELECT count(*) FROM payments p JOIN orders o ON o.id = p.order_id JOIN customers c ON c.id = o.customer_id WHERE c.department IN ('sales', 'sales_east', 'sales_west')").await;
    assert_eq!(
        scalar(&maria, "SELECT count(*) FROM payments").await,
        maria_pay
    );
    let e = rita
        .simple_query("SELECT count(*) FROM payments")
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        "42501",
        "rita has no payments permission ({mine_pay} would be hers)"
    );
}

/// Data-exposing functions, catalogs and statements are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangerous_functions_catalogs_and_statements_are_refused() {
    let env = Env::start().await;
    let rita = env.connect("rita").await;
    let direct = env.direct().await;
    let tables = ["customers", "orders", "payments"];
    let before = digest(&direct, &tables).await;
    for sql in [
        "SELECT query_to_xml('select * from customers', true, true, '')",
        "SELECT * FROM query_to_xml('select * from customers', true, true, '')",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT set_config('search_path', 'pg_temp', false)",
        "SELECT pg_sleep(1)",
        "SELECT * FROM pg_stats WHERE tablename = 'customers'",
        "SELECT * FROM pg_statistic",
        "SELECT query FROM pg_stat_activity",
        "SELECT * FROM pg_catalog.pg_authid",
        "SELECT * FROM pg_largeobject",
        "SELECT * FROM pgveil.users",
        "SELECT * FROM internal_salaries",
        "SELECT * FROM public.internal_salaries s JOIN customers c ON true",
        "SET search_path = pg_temp, public",
        "SET \"Search_Path\" = pg_temp, public",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "SET standard_conforming_strings = off",
        "RESET ALL",
        "DO $$ BEGIN PERFORM 1; END $$",
        "CALL some_proc()",
        "CREATE TABLE x AS SELECT * FROM customers",
        "SELECT * INTO stolen FROM customers",
        "CREATE VIEW v AS SELECT * FROM customers",
        "GRANT ALL ON customers TO public",
        "COPY customers TO '/tmp/x'",
        "COPY customers TO PROGRAM 'cat'",
        "COPY customers FROM '/etc/passwd'",
        "COPY customers TO STDOUT",
        "LOAD 'auto_explain'",
        "ALTER SYSTEM SET fsync = off",
        "TRUNCATE customers",
        "WITH d AS (DELETE FROM customers RETURNING *) SELECT count(*) FROM d",
        "WITH u AS (UPDATE customers SET notes = 'x' RETURNING 1) SELECT 1",
        "MERGE INTO customers c USING (SELECT 1 AS id) s ON c.id = s.id WHEN MATCHED THEN DELETE",
        "EXPLAIN ANALYZE SELECT * FROM customers",
        "PREPARE p AS DELETE FROM customers",
        "VACUUM customers",
        "SELECT * FROM dblink('dbname=crm', 'select 1') AS t(x int)",
    ] {
        let e = rita.simple_query(sql).await.expect_err(sql);
        assert!(
            ["42501", "0A000"].contains(&code(&e).as_str()),
            "{sql}: {e}"
        );
    }
    // settings that only shape the session stay the user's, however the name is spelled
    // (PostgreSQL's setting names are case-insensitive, quoted or not)
    rita.batch_execute("SET statement_timeout = '1234ms'; SET \"DateStyle\" = 'German'")
        .await
        .unwrap();
    let shown = common::simple_rows(&rita, "SHOW statement_timeout; SHOW datestyle")
        .await
        .unwrap();
    assert_eq!(
        shown,
        [
            [Some("1234ms".to_owned())],
            [Some("German, DMY".to_owned())]
        ]
    );
    // nothing was created or changed
    assert_eq!(digest(&direct, &tables).await, before);
    assert_eq!(
        scalar(
            &direct,
            "SELECT count(*) FROM pg_class WHERE relname IN ('x', 'v', 'stolen')"
        )
        .await,
        0
    );
    // structural catalogs stay readable (BI introspection)
    assert!(
        scalar(
            &rita,
            "SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'customers'"
        )
        .await
            == 1
    );
    assert!(
        scalar(
            &rita,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'customers'"
        )
        .await
            > 5
    );
}

/// Invisible fields are NULL before any filter, sort, group, aggregate or whole-row access.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_fields_cannot_be_probed() {
    let env = Env::start().await;
    let tom = env.connect("tom").await;
    for sql in [
        "SELECT count(*) FROM customers WHERE phone IS NOT NULL",
        "SELECT count(*) FROM customers WHERE phone LIKE '+1-555-%'",
        "SELECT count(*) FROM customers c WHERE c.phone = '+1-555-1002'",
        "SELECT count(*) FROM customers WHERE length(phone) > 0",
        "SELECT count(DISTINCT phone) FROM customers",
        "SELECT count(*) FROM customers c WHERE c::text LIKE '%+1-555%'",
        "SELECT count(*) FROM customers c WHERE row_to_json(c)::text LIKE '%+1-555%'",
        "SELECT count(*) FROM (SELECT * FROM customers) s WHERE s.phone IS NOT NULL",
        "SELECT count(*) FROM customers WHERE credit_limit > 0",
        "SELECT count(*) FROM customers WHERE notes IS NOT NULL",
        "SELECT count(*) FROM (SELECT count(*) OVER (PARTITION BY phone) AS n FROM customers) w WHERE n < 10",
        "SELECT count(*) FROM customers GROUP BY phone HAVING phone IS NOT NULL",
        "SELECT count(*) FROM customers WHERE (phone, 1) IS NOT NULL",
    ] {
        match ints(&tom, sql).await {
            Ok(v) => assert!(v.iter().all(|n| *n == 0), "LEAK: {sql} -> {v:?}"),
            Err(c) => assert!(["42501", "0A000"].contains(&c.as_str()), "{sql}: {c}"),
        }
    }
    let max: Option<String> = tom
        .query_one("SELECT max(phone) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(max, None);
    // star expansion keeps the column (as NULL) so apps keep working
    let row = tom
        .query_one("SELECT * FROM customers ORDER BY id LIMIT 1", &[])
        .await
        .unwrap();
    assert!(row.columns().iter().any(|c| c.name() == "phone"));
    assert!(row.get::<_, Option<String>>("phone").is_none());
    // inherited field rule (Telemarketer inherits Guest): email partially masked
    let email: String = tom
        .query_one("SELECT email FROM customers ORDER BY id LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        email.starts_with('*') && !email.contains("contact"),
        "{email}"
    );
}

/// Stacked roles: a field is visible on the records of the role that shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_roles_merge_per_record() {
    let env = Env::start().await;
    let direct = env.direct().await;
    let dana = env.connect("dana").await;
    // union of scopes: her assigned customers + the sales_west department
    let expected = scalar(
        &direct,
        "SELECT count(*) FROM customers WHERE owner = 'dana' OR department = 'sales_west'",
    )
    .await;
    assert_eq!(
        scalar(&dana, "SELECT count(*) FROM customers").await,
        expected
    );
    // phone visible exactly on her own customers (Sales Representative), hidden elsewhere
    let own = scalar(
        &direct,
        "SELECT count(*) FROM customers WHERE owner = 'dana'",
    )
    .await;
    assert_eq!(
        scalar(&dana, "SELECT count(phone) FROM customers").await,
        own
    );
    assert_eq!(
        scalar(
            &dana,
            "SELECT count(phone) FROM customers WHERE owner <> 'dana'"
        )
        .await,
        0
    );
}

/// Writes: permissions, field levels, scopes, bulk limits; nothing partial remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_confined() {
    let env = Env::start().await;
    let direct = env.direct().await;
    let rita = env.connect("rita").await;
    let before: i64 = scalar(&direct, "SELECT count(*) FROM customers").await;

    // out-of-scope update touches nothing
    let n = rita
        .execute(
            "UPDATE customers SET notes = 'pwned' WHERE owner = 'sam'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        scalar(
            &direct,
            "SELECT count(*) FROM customers WHERE notes = 'pwned'"
        )
        .await,
        0
    );
    // in-scope single-row update works (and the digest sees a one-cell change)
    let tables = ["customers", "orders", "payments"];
    let id: i32 = direct
        .query_one("SELECT min(id) FROM customers WHERE owner = 'rita'", &[])
        .await
        .unwrap()
        .get(0);
    let before_update = digest(&direct, &tables).await;
    assert_eq!(
        rita.execute(
            "UPDATE customers SET notes = 'called' WHERE id = $1",
            &[&id]
        )
        .await
        .unwrap(),
        1
    );
    assert_ne!(digest(&direct, &tables).await, before_update);
    // refused writes leave every table exactly as it was
    // reassigning a record away from her scope
    let reassign = format!("UPDATE customers SET owner = 'sam' WHERE id = {id}");
    refused_unchanged(&direct, &rita, &reassign, "42501", &tables).await;
    // bulk update (rita has 500 customers, threshold 100, bulk off): undone atomically
    let bulk = "UPDATE customers SET region = 'bulk'";
    refused_unchanged(&direct, &rita, bulk, "42501", &tables).await;
    // no delete permission
    let delete = format!("DELETE FROM customers WHERE id = {id}");
    refused_unchanged(&direct, &rita, &delete, "42501", &tables).await;
    // insert for another owner
    let foreign =
        "INSERT INTO customers (name, owner, department) VALUES ('evil', 'sam', 'sales_east')";
    refused_unchanged(&direct, &rita, foreign, "42501", &tables).await;
    // insert with the owner omitted: filled from her identity
    rita.execute(
        "INSERT INTO customers (name, department) VALUES ('mine', 'sales_east')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(
            &direct,
            "SELECT count(*) FROM customers WHERE name = 'mine' AND owner = 'rita'"
        )
        .await,
        1
    );
    // prepared insert with parameters
    rita.execute(
        "INSERT INTO customers (name, department, credit_limit) VALUES ($1, $2, 10)",
        &[&"mine2", &"sales_east"],
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(
            &direct,
            "SELECT count(*) FROM customers WHERE name = 'mine2' AND owner = 'rita'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(&direct, "SELECT count(*) FROM customers").await,
        before + 2
    );
    // ON CONFLICT DO UPDATE cannot reach someone else's record
    let other: i32 = direct
        .query_one("SELECT min(id) FROM customers WHERE owner = 'dana'", &[])
        .await
        .unwrap()
        .get(0);
    let before = digest(&direct, &tables).await;
    let _ = rita
        .execute(
            "INSERT INTO customers (id, name, department) VALUES ($1, 'x', 'sales_east') ON CONFLICT (id) DO UPDATE SET name = 'hijacked'",
            &[&other],
        )
        .await;
    assert_eq!(digest(&direct, &tables).await, before);
    // Staff: credit_limit is read-only
    let sam = env.connect("sam").await;
    let read_only = "UPDATE customers SET credit_limit = 1 WHERE owner = 'sam' AND id < 20";
    let e = refused_unchanged(&direct, &sam, read_only, "42501", &tables).await;
    assert!(
        common::message(&e).contains("credit_limit"),
        "{}",
        common::message(&e)
    );
    // Telemarketer: no edit at all
    let tom = env.connect("tom").await;
    let no_edit = "UPDATE customers SET notes = 'x' WHERE id = 4";
    refused_unchanged(&direct, &tom, no_edit, "42501", &tables).await;
    // copying an invisible value into a visible one is refused (dana: phone hidden off her records)
    let dana = env.connect("dana").await;
    let copy_hidden = "UPDATE customers SET notes = phone WHERE owner = 'dana' AND id < 20";
    refused_unchanged(&direct, &dana, copy_hidden, "42501", &tables).await;
    // RETURNING obeys field rules
    let carl = env.connect("carl").await;
    let returning = "UPDATE orders SET status = status WHERE id = 1 RETURNING amount";
    refused_unchanged(&direct, &carl, returning, "42501", &tables).await;
}

/// Error-message oracle: an error-raising predicate must not be evaluated on rows outside the
/// scope (that would reveal their existence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_oracle_does_not_reveal_out_of_scope_rows() {
    let env = Env::start().await;
    let direct = env.direct().await;
    let other: i32 = direct
        .query_one("SELECT min(id) FROM customers WHERE owner = 'sam'", &[])
        .await
        .unwrap()
        .get(0);
    let name: String = direct
        .query_one("SELECT name FROM customers WHERE id = $1", &[&other])
        .await
        .unwrap()
        .get(0);
    let rita = env.connect("rita").await;
    for sql in [
        "SELECT count(*) FROM customers WHERE 1 / (CASE WHEN owner = 'sam' THEN 0 ELSE 1 END) = 1".to_owned(),
        format!("SELECT count(*) FROM customers WHERE CASE WHEN name = '{name}' THEN 1 / (id - id) ELSE 1 END = 1"),
        format!("SELECT count(*) FROM customers WHERE (CASE WHEN id = {other} THEN 'x' ELSE '1' END)::int = 1"),
        "SELECT count(*) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE 1 / (CASE WHEN c.owner = 'sam' THEN 0 ELSE 1 END) = 1".to_owned(),
    ] {
        let r = rita.simple_query(&sql).await;
        assert!(r.is_ok(), "ORACLE: {sql} raised {:?}", r.err());
    }
    // a costlier scope qual (department IN-list) must still be evaluated first
    let svc: i32 = direct
        .query_one(
            "SELECT min(id) FROM customers WHERE department = 'service'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let maria = env.connect("maria").await;
    // a parent scope (payments of orders of maria's customers) is a semi-join PostgreSQL may
    // run after the scan's own conditions; a cast of a value to bool failing on a row outside
    // the scope would show that value (it did: the amount of a payment she cannot see)
    let (pay, amount): (i32, String) = {
        let row = direct
            .query_one(
                "SELECT p.id, p.amount::text FROM payments p JOIN orders o ON o.id = p.order_id \
                 JOIN customers c ON c.id = o.customer_id WHERE c.department = 'service' \
                 ORDER BY p.id LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let visible = scalar(&maria, "SELECT count(*) FROM payments").await;
    assert!(visible > 0);
    let counts = [
        format!("SELECT count(*) FROM payments WHERE (CASE WHEN id = {pay} THEN amount::text ELSE 'true' END)::bool"),
        format!("SELECT count(*) FROM payments WHERE 1 / (id - {pay}) > -100"),
        format!("SELECT count(*) FROM payments p JOIN orders o ON o.id = p.order_id WHERE 1 / (p.id - {pay}) > -100"),
        format!("WITH s AS (SELECT id FROM payments WHERE 1 / (id - {pay}) > -100) SELECT count(*) FROM s"),
        format!("SELECT count(*) FROM (SELECT id, 1 / (id - {pay}) AS x FROM payments) s WHERE x > -100"),
        format!("SELECT count(*) FROM payments WHERE id IN (SELECT id FROM payments WHERE 1 / (id - {pay}) > -100)"),
    ];
    for sql in &counts {
        for extended in [false, true] {
            let r = if extended {
                maria
                    .query_one(sql.as_str(), &[])
                    .await
                    .map(|r| r.get::<_, i64>(0))
            } else {
                maria.simple_query(sql).await.map(|m| match &m[1] {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        r.get(0).unwrap().parse().unwrap()
                    }
                    other => panic!("{other:?}"),
                })
            };
            match r {
                Ok(n) => assert_eq!(n, visible, "{sql}"),
                Err(e) => panic!("ORACLE ({amount}): {sql} raised {e}"),
            }
        }
    }
    let r = maria
        .simple_query(&format!(
            "SELECT id FROM payments WHERE id = {pay} AND 1 / (id - {pay}) > 0"
        ))
        .await
        .unwrap_or_else(|e| panic!("ORACLE: payment {pay} exists: {e}"));
    assert!(
        !r.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))),
        "no row: {r:?}"
    );
    // the outermost select list, aggregates, GROUP BY and ORDER BY are not fenced: they run
    // after every filter, so they never see the row outside her scope either
    for sql in [
        format!("SELECT sum(1 / (id - {pay})) FROM payments"),
        format!("SELECT 1 / (id - {pay}), count(*) FROM payments GROUP BY 1"),
        format!("SELECT id FROM payments ORDER BY 1 / (id - {pay}) LIMIT 5"),
        format!(
            "SELECT sum(1 / (p.id - {pay})) FROM payments p JOIN orders o ON o.id = p.order_id"
        ),
    ] {
        let r = maria.simple_query(&sql).await;
        assert!(r.is_ok(), "ORACLE: {sql} raised {:?}", r.err());
    }
    // an error on a row she sees may show that row's value, never one outside her scope
    let e = maria
        .simple_query("SELECT count(*) FROM customers WHERE (CASE WHEN department = 'service' THEN name ELSE department END)::bool")
        .await
        .expect_err("her departments are not booleans");
    assert!(common::message(&e).contains("\"sales"), "{e}");
    for sql in [
        format!("SELECT count(*) FROM customers WHERE 1 / (id - {svc}) > -100"),
        format!("SELECT count(*) FROM customers WHERE (id - {svc}) / (id - {svc}) = 1"),
        format!("SELECT count(*) FROM orders WHERE customer_id / (customer_id - {svc}) >= 0"),
        format!("SELECT count(*) FROM customers WHERE credit_limit / (id - {svc}) >= 0"),
    ] {
        let r = maria.simple_query(&sql).await;
        assert!(r.is_ok(), "ORACLE: {sql} raised {:?}", r.err());
    }
}

/// The error oracle through writes: the WHERE of an UPDATE, a DELETE or an INSERT's ON
/// CONFLICT DO UPDATE (and the count behind the bulk limit) never sees a row outside the
/// scope, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_oracle_through_writes_reveals_nothing() {
    let env = Env::start().await;
    let direct = env.direct().await;
    let outside = |owner_cond: &'static str| {
        let direct = &direct;
        async move {
            let row = direct
                .query_one(
                    &format!(
                        "SELECT o.id, o.amount::text FROM orders o JOIN customers c \
                         ON c.id = o.customer_id WHERE {owner_cond} ORDER BY o.id LIMIT 1"
                    ),
                    &[],
                )
                .await
                .unwrap();
            (row.get::<_, i32>(0), row.get::<_, String>(1))
        }
    };
    let before = scalar(&direct, "SELECT count(*) FROM orders WHERE status = 'paid'").await;
    // rita edits her customers' orders (a parent scope); maria deletes her departments' orders
    let (ord, amount) = outside("c.owner <> 'rita'").await;
    let rita = env.connect("rita").await;
    let mine: i32 = direct
        .query_one("SELECT min(id) FROM customers WHERE owner = 'rita'", &[])
        .await
        .unwrap()
        .get(0);
    let (svc, svc_amount) = outside("c.department = 'service'").await;
    let maria = env.connect("maria").await;
    let oracle = |id: i32| format!("(CASE WHEN id = {id} THEN amount::text ELSE 'true' END)::bool");
    let cases = [
        (&rita, format!("UPDATE orders SET status = status WHERE id = {ord} AND {}", oracle(ord)), &amount),
        (&rita, format!("UPDATE orders SET status = 'paid' WHERE {}", oracle(ord)), &amount),
        (&rita, format!("UPDATE orders SET status = status WHERE id = {ord} AND 1 / (id - {ord}) > 0"), &amount),
        (&rita, format!("UPDATE customers SET name = name FROM orders o WHERE o.customer_id = customers.id AND o.id = {ord} AND {}", oracle(ord).replace("id =", "o.id =").replace("amount", "o.amount")), &amount),
        (&rita, format!("INSERT INTO orders (id, customer_id, amount, status) VALUES ({ord}, {mine}, 1, 'new') ON CONFLICT (id) DO UPDATE SET status = excluded.status WHERE {}", oracle(ord).replace("id =", "orders.id =").replace("amount", "orders.amount")), &amount),
        (&maria, format!("DELETE FROM orders WHERE id = {svc} AND {}", oracle(svc)), &svc_amount),
        (&maria, format!("DELETE FROM orders WHERE 1 / (id - {svc}) > 1"), &svc_amount),
    ];
    for (client, sql, secret) in cases {
        client.batch_execute("BEGIN").await.unwrap();
        let r = client.execute(sql.as_str(), &[]).await;
        client.batch_execute("ROLLBACK").await.unwrap();
        match r {
            Ok(n) => assert!(n == 0 || sql.contains("'paid'"), "{sql}: {n} rows"),
            Err(e) => {
                // refusals such as the bulk limit are fine; an error from a row outside is not
                let text = format!("{e} {}", common::message(&e));
                assert!(
                    !text.contains(secret.as_str()),
                    "ORACLE ({secret}): {sql} raised {text}"
                );
                assert!(
                    !text.contains("division by zero") && !text.contains("invalid input syntax"),
                    "ORACLE: {sql} raised {text}"
                );
            }
        }
    }
    assert_eq!(
        scalar(&direct, "SELECT count(*) FROM orders WHERE status = 'paid'").await,
        before,
        "nothing written"
    );
}

/// Reads hidden inside writes: UPDATE … FROM, DELETE … USING, INSERT … SELECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_inside_writes_are_scoped() {
    let env = Env::start().await;
    let direct = env.direct().await;
    let rita = env.connect("rita").await;
    let before = scalar(&direct, "SELECT count(*) FROM customers").await;
    // copying someone else's customers via INSERT … SELECT: the source only sees her rows
    let n = rita
        .execute("INSERT INTO customers (name, department) SELECT name, department FROM customers WHERE owner = 'sam'", &[])
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        scalar(&direct, "SELECT count(*) FROM customers").await,
        before
    );
    // UPDATE … FROM another user's customers touches nothing
    let n = rita
        .execute("UPDATE orders SET status = 'hijacked' FROM customers c WHERE c.owner = 'sam' AND orders.customer_id = c.id", &[])
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        scalar(
            &direct,
            "SELECT count(*) FROM orders WHERE status = 'hijacked'"
        )
        .await,
        0
    );
    // maria may delete orders, but only in her scope, even with USING another table
    let maria = env.connect("maria").await;
    let service_orders = scalar(
        &direct,
        "SELECT count(*) FROM orders WHERE department = 'service'",
    )
    .await;
    let _ = maria
        .execute("DELETE FROM orders USING customers c WHERE c.department = 'service' AND orders.customer_id = c.id", &[])
        .await;
    assert_eq!(
        scalar(
            &direct,
            "SELECT count(*) FROM orders WHERE department = 'service'"
        )
        .await,
        service_orders
    );
}

/// Tables the user sees in full are read in place with the scope first in WHERE (PostgreSQL
/// plans that faster than a policy subquery). That form must keep the subquery's guarantees:
/// system columns stay unreadable, and aliases cannot capture the scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_read_in_place_keep_the_scope() {
    let env = Env::start().await;
    let (_, mine) = direct_and_ritas_count(&env).await;
    let rita = env.connect("rita").await;
    // system columns would reveal physical layout (and so out-of-scope rows): never readable
    for sql in [
        "SELECT ctid FROM customers",
        "SELECT count(*) FROM customers c WHERE c.xmin::text <> ''",
        "SELECT id FROM customers ORDER BY ctid LIMIT 1",
        "SELECT tableoid, cmin, cmax, xmax FROM customers",
        "SELECT count(*) FROM customers WHERE EXISTS (SELECT 1 FROM orders WHERE orders.ctid IS NOT NULL)",
    ] {
        let e = rita.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&e), "42703", "{sql}: {e}");
    }
    // functional notation for a column: not an allowed function either
    for sql in [
        "SELECT ctid(customers) FROM customers",
        "SELECT xmin(c) FROM customers c",
    ] {
        let e = rita.simple_query(sql).await.expect_err(sql);
        assert!(
            ["42703", "42501"].contains(&code(&e).as_str()),
            "{sql}: {e}"
        );
    }
    // same alias inside and outside, correlated references, no WHERE, OR at the top level
    for (sql, want) in [
        ("SELECT count(*) FROM customers", mine),
        ("SELECT count(*) FROM customers WHERE true OR owner <> 'rita'", mine),
        ("SELECT count(*) FROM customers c WHERE EXISTS (SELECT 1 FROM customers c WHERE c.owner = 'sam')", 0),
        ("SELECT count(*) FROM customers x WHERE NOT EXISTS (SELECT 1 FROM customers y WHERE y.id = x.id)", 0),
        ("SELECT count(*) FROM (SELECT * FROM customers WHERE owner <> 'rita') s", 0),
        ("SELECT count(*) FROM \"customers\" AS \"C\" WHERE \"C\".owner = 'rita'", mine),
    ] {
        assert_eq!(ints(&rita, sql).await, Ok(vec![want]), "{sql}");
    }
}

/// Simple-protocol texts are cached by their shape (the text without its literals). A later
/// text of a cached shape whose literals try to close the string and add SQL must still be
/// one literal: rita sees exactly her rows, and a same-shape write changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_shapes_cannot_carry_another_statement() {
    let env = Env::start().await;
    let (direct, mine) = direct_and_ritas_count(&env).await;
    let rita = env.connect("rita").await;
    let shapes: [(&str, &[&str]); 2] = [
        (
            "SELECT count(*) FROM customers WHERE name <> 'a' AND id > 0",
            &[
                "SELECT count(*) FROM customers WHERE name <> 'a'' OR true OR ''b' AND id > 0",
                "SELECT count(*) FROM customers WHERE name <> ''' UNION ALL SELECT count(*) FROM public.customers --' AND id > 0",
                "SELECT count(*) FROM customers WHERE name <> '''; SELECT count(*) FROM public.customers; --' AND id > 0",
                "SELECT count(*) FROM customers WHERE name <> '/* ''' AND id > 0",
            ],
        ),
        (
            "SELECT count(*) FROM customers WHERE id > 0 OR id = 5",
            &[
                "SELECT count(*) FROM customers WHERE id > 0 OR id = 99999999999999999999",
                "SELECT count(*) FROM customers WHERE id > 0 OR id = 5.5",
            ],
        ),
    ];
    for (prime, hostile) in shapes {
        assert_eq!(ints(&rita, prime).await.unwrap(), vec![mine], "{prime}");
        for sql in hostile {
            assert_eq!(ints(&rita, sql).await.unwrap(), vec![mine], "{sql}");
        }
    }
    let tables = ["customers", "orders", "payments"];
    let before = digest(&direct, &tables).await;
    let prime = "UPDATE customers SET notes = 'x' WHERE id = -1";
    rita.simple_query(prime).await.unwrap();
    let hostile = "UPDATE customers SET notes = 'x'' WHERE true; UPDATE customers SET owner = ''rita''; --' WHERE id = -1";
    rita.simple_query(hostile).await.unwrap();
    assert_eq!(
        digest(&direct, &tables).await,
        before,
        "{hostile} wrote something"
    );
}

/// pgveil runs a restricted user's simple statements as its own prepared statements
/// (`pgveilq_…`): a client cannot create, bind or describe a statement by such a name, and
/// sees exactly the messages a Query produces, also where PostgreSQL drops the unnamed
/// statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgveils_prepared_statements_are_out_of_reach() {
    use bytes::BytesMut;
    use pgwire::messages::extendedquery::{Bind, Describe, Execute, Parse, Sync};
    use pgwire::messages::simplequery::Query;
    use pgwire::messages::Message;
    let env = Env::start().await;
    let (_direct, mine) = direct_and_ritas_count(&env).await;
    let mut raw = common::RawClient::login(env.port(), "rita").await;
    let send = |msgs: &[&dyn Fn(&mut BytesMut)]| {
        let mut out = BytesMut::new();
        for m in msgs {
            m(&mut out);
        }
        out
    };
    let query =
        |sql: &'static str| move |b: &mut BytesMut| Query::new(sql.into()).encode(b).unwrap();
    let sync = |b: &mut BytesMut| Sync::new().encode(b).unwrap();
    let counted = "SELECT count(*) FROM customers WHERE id > 0";
    for _ in 0..3 {
        raw.send(&send(&[&query(counted)])).await;
        assert_eq!(raw.until_ready().await, ["T", "D", "C", "ZI"]);
    }
    let reserved = "pgveilq_0000000000000000_0";
    let parse = |b: &mut BytesMut| {
        Parse::new(
            Some(reserved.into()),
            "SELECT count(*) FROM customers".into(),
            vec![],
        )
        .encode(b)
        .unwrap()
    };
    raw.send(&send(&[&parse, &sync])).await;
    assert_eq!(raw.until_ready().await, ["E42501", "ZI"]);
    let bind = |b: &mut BytesMut| {
        Bind::new(None, Some(reserved.into()), vec![], vec![], vec![])
            .encode(b)
            .unwrap()
    };
    let execute = |b: &mut BytesMut| Execute::new(None, 0).encode(b).unwrap();
    raw.send(&send(&[&bind, &execute, &sync])).await;
    assert_eq!(raw.until_ready().await, ["E42501", "ZI"]);
    let describe_reserved = |b: &mut BytesMut| {
        Describe::new(b'S', Some(reserved.into()))
            .encode(b)
            .unwrap()
    };
    raw.send(&send(&[&describe_reserved, &sync])).await;
    assert_eq!(raw.until_ready().await, ["E42501", "ZI"]);
    // a Query drops the client's unnamed statement, bound or not, as in PostgreSQL
    let unnamed = |b: &mut BytesMut| {
        Parse::new(None, "SELECT 1".into(), vec![])
            .encode(b)
            .unwrap()
    };
    let describe = |b: &mut BytesMut| Describe::new(b'S', None).encode(b).unwrap();
    raw.send(&send(&[&unnamed, &sync])).await;
    assert_eq!(raw.until_ready().await, ["1", "ZI"]);
    raw.send(&send(&[&query(counted)])).await;
    assert_eq!(raw.until_ready().await, ["T", "D", "C", "ZI"]);
    raw.send(&send(&[&describe, &sync])).await;
    assert_eq!(raw.until_ready().await, ["E26000", "ZI"]);
    // … also in a failed transaction, where the bound statement itself fails
    raw.send(&send(&[&query("BEGIN")])).await;
    assert_eq!(raw.until_ready().await, ["C", "ZT"]);
    raw.send(&send(&[&unnamed, &sync])).await;
    assert_eq!(raw.until_ready().await, ["1", "ZT"]);
    let failing = |b: &mut BytesMut| {
        Parse::new(Some("x".into()), "SELECT 1/0".into(), vec![])
            .encode(b)
            .unwrap();
        Bind::new(None, Some("x".into()), vec![], vec![], vec![])
            .encode(b)
            .unwrap();
    };
    raw.send(&send(&[&failing, &execute, &sync])).await;
    assert_eq!(raw.until_ready().await, ["1", "E22012", "ZE"]); // folded while planning at Bind
                                                                // a shape not prepared yet: its Parse fails in the failed transaction
    raw.send(&send(&[&query(
        "SELECT count(*) FROM customers WHERE id < 5000",
    )]))
    .await;
    assert_eq!(raw.until_ready().await, ["E25P02", "ZE"]);
    raw.send(&send(&[&describe, &sync])).await;
    assert_eq!(raw.until_ready().await, ["E26000", "ZE"]);
    raw.send(&send(&[&query("ROLLBACK")])).await;
    assert_eq!(raw.until_ready().await, ["C", "ZI"]);
    raw.send(&send(&[&query(counted)])).await;
    assert_eq!(raw.until_ready().await, ["T", "D", "C", "ZI"]);
    // and the session still reads exactly rita's rows
    let rita = env.connect("rita").await;
    assert_eq!(ints(&rita, counted).await.unwrap(), vec![mine]);
    assert_eq!(ints(&rita, counted).await.unwrap(), vec![mine]);
}
