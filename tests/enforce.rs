//! Issue 4: restricted users get exactly their rows and fields, and cannot write outside
//! their permissions. Every check compares with ground truth read directly from PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
mod common;

use common::{code, expect_code, expect_code_extended, message, Env};

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_scopes_per_role() {
    let env = Env::start().await;
    let direct = env.direct().await;
    // rita: Sales Representative, customers assigned
    let rita = env.connect("rita").await;
    assert_eq!(
        count(&rita, "SELECT count(*) FROM customers").await,
        count(
            &direct,
            "SELECT count(*) FROM customers WHERE owner = 'rita'"
        )
        .await
    );
    // orders inherit from customers (parent scope)
    assert_eq!(
        count(&rita, "SELECT count(*) FROM orders").await,
        count(&direct, "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.owner = 'rita'").await
    );
    // maria: Manager, department tree of sales
    let maria = env.connect("maria").await;
    assert_eq!(
        count(&maria, "SELECT count(*) FROM customers").await,
        count(&direct, "SELECT count(*) FROM customers WHERE department IN ('sales','sales_east','sales_west')").await
    );
    // tom: Telemarketer, department sales_west, phone invisible
    let tom = env.connect("tom").await;
    assert_eq!(
        count(&tom, "SELECT count(*) FROM customers").await,
        count(
            &direct,
            "SELECT count(*) FROM customers WHERE department = 'sales_west'"
        )
        .await
    );
    assert_eq!(count(&tom, "SELECT count(phone) FROM customers").await, 0);
    assert_eq!(
        count(
            &tom,
            "SELECT count(*) FROM customers WHERE phone LIKE '+1%'"
        )
        .await,
        0,
        "no probing"
    );
    // gina: Guest, 5 assigned customers, email partially masked
    let gina = env.connect("gina").await;
    let rows = gina
        .query(
            "SELECT id, email, credit_limit, notes FROM customers ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    for r in &rows {
        let email: String = r.get(1);
        assert!(
            email.starts_with('*') && !email.contains("contact"),
            "{email}"
        );
        assert!(r.get::<_, Option<rust_decimal_stub::Dec>>(2).is_none());
    }
    // admin sees everything
    let admin = env.connect("admin").await;
    assert_eq!(count(&admin, "SELECT count(*) FROM customers").await, 2000);
}

mod rust_decimal_stub {
    /// Accepts a numeric column only to check it is NULL.
    pub struct Dec;
    impl<'a> tokio_postgres::types::FromSql<'a> for Dec {
        fn from_sql(
            _: &tokio_postgres::types::Type,
            _: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Dec)
        }
        fn accepts(_: &tokio_postgres::types::Type) -> bool {
            true
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_postgres_errors_and_sessions_survive() {
    let env = Env::start().await;
    let rita = env.connect("rita").await;
    // not a pgveil object
    expect_code(&rita, "SELECT * FROM internal_salaries", "42501").await;
    // no permission on tickets
    let e = expect_code_extended(&rita, "SELECT * FROM tickets", "42501").await;
    assert!(message(&e).contains("tickets"), "{}", message(&e));
    // unparseable
    let e = rita
        .simple_query("SELECT * FROM customers WHERE id = ANY( OPERATOR(pg_catalog.=) )")
        .await
        .unwrap_err();
    assert!(["0A000", "42501"].contains(&code(&e).as_str()), "{e}");
    // DDL
    expect_code(&rita, "DROP TABLE customers", "42501").await;
    // session still usable
    assert_eq!(count(&rita, "SELECT count(*) FROM products").await, 200);
    // inside a transaction a refusal aborts it
    rita.simple_query("BEGIN").await.unwrap();
    expect_code(&rita, "SELECT * FROM tickets", "42501").await;
    expect_code(&rita, "SELECT 1", "25P02").await;
    rita.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(count(&rita, "SELECT count(*) FROM products").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_without_list_deny_max_rows_and_export() {
    let env = Env::start().await;
    // sid: customers.view (details) but not list → primary-key lookups only
    let sid = env.connect("sid").await;
    let e = expect_code_extended(&sid, "SELECT * FROM customers", "42501").await;
    assert!(message(&e).contains("list"), "{}", message(&e));
    expect_code_extended(&sid, "SELECT * FROM customers WHERE id > 5", "42501").await;
    let row = sid
        .query_one(
            "SELECT name, credit_limit::text FROM customers WHERE id = $1",
            &[&5i32],
        )
        .await
        .unwrap();
    let truth: String = env
        .direct()
        .await
        .query_one("SELECT name FROM customers WHERE id = 5", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(row.get::<_, String>(0), truth);
    assert!(
        row.get::<_, Option<String>>(1).is_none(),
        "credit_limit invisible for shipping"
    );
    // explicit deny on opportunities
    let e = expect_code_extended(&sid, "SELECT * FROM opportunities", "42501").await;
    assert!(message(&e).contains("deny"), "{}", message(&e));
    // carl: max 500 rows per query; tickets scope is all (1500): fails cleanly, no partial rows
    let carl = env.connect("carl").await;
    expect_code_extended(&carl, "SELECT id FROM tickets", "54000").await;
    assert_eq!(
        carl.query("SELECT id FROM tickets ORDER BY id LIMIT 500", &[])
            .await
            .unwrap()
            .len(),
        500
    );
    // export: maria may export customers (COPY returns only her scope)
    let maria = env.connect("maria").await;
    let bytes = common::copy_out_bytes(&maria, "COPY customers TO STDOUT").await;
    let lines = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as i64;
    let direct = env.direct().await;
    let expected: i64 = direct
        .query_one("SELECT count(*) FROM customers WHERE department IN ('sales', 'sales_east', 'sales_west')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lines, expected);
    // carl has data_export but no tickets.export permission
    let Err(e) = carl
        .copy_out("COPY (SELECT id FROM tickets LIMIT 1) TO STDOUT")
        .await
    else {
        panic!("export allowed")
    };
    assert_eq!(code(&e), "42501");
    // rita: data export disabled for her role
    let rita = env.connect("rita").await;
    let Err(e) = rita
        .copy_out("COPY (SELECT id FROM customers) TO STDOUT")
        .await
    else {
        panic!("export allowed")
    };
    assert_eq!(code(&e), "42501");
    // COPY FROM: rita's create scope is not `all` → refused; nothing imported
    let Err(e) = rita
        .copy_in::<_, bytes::Bytes>("COPY customers (name, department) FROM STDIN")
        .await
    else {
        panic!("import allowed")
    };
    assert_eq!(code(&e), "42501");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_sql_prepare_pipelines_and_multi_statements() {
    let env = Env::start().await;
    let direct = env.direct().await;
    let mine: i64 = direct
        .query_one("SELECT count(*) FROM customers WHERE owner = 'rita'", &[])
        .await
        .unwrap()
        .get(0);
    let rita = env.connect("rita").await;
    // cursors read through the policy
    rita.batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT id FROM customers")
        .await
        .unwrap();
    let msgs = rita.simple_query("FETCH ALL FROM c").await.unwrap();
    let n = msgs
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count() as i64;
    assert_eq!(n, mine);
    rita.batch_execute("CLOSE c; COMMIT").await.unwrap();
    // SQL-level PREPARE / EXECUTE
    rita.batch_execute("PREPARE p(int) AS SELECT count(*) FROM customers WHERE id > $1")
        .await
        .unwrap();
    let msgs = rita.simple_query("EXECUTE p(0)").await.unwrap();
    let got: i64 = msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(got, mine);
    // multi-statement: statements before the refused one run, the refused one fails, later ones do not
    let e = rita
        .simple_query("SELECT 1; SELECT * FROM internal_salaries; SELECT 2")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    // pipelined extended-protocol batch: refused statement fails at its position, others succeed
    let (a, b, c) = tokio::join!(
        rita.query_one("SELECT count(*) FROM customers", &[]),
        rita.query("SELECT * FROM internal_salaries", &[]),
        rita.query_one("SELECT count(*) FROM products", &[])
    );
    assert_eq!(a.unwrap().get::<_, i64>(0), mine);
    assert_eq!(code(&b.unwrap_err()), "42501");
    assert_eq!(c.unwrap().get::<_, i64>(0), 200);
    // EXPLAIN shows only the user's view
    let plan = rita
        .simple_query("EXPLAIN SELECT * FROM customers")
        .await
        .unwrap();
    let text: String = plan
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert!(text.contains("rita"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_untrusted_sql_and_startup_options() {
    let env = Env::start().await;
    let rita = env.connect("rita").await;
    let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    expect_code(&rita, &deep, "54000").await;
    let nested = format!(
        "SELECT count(*) FROM {}customers{}",
        "(SELECT * FROM ".repeat(100),
        ") s".repeat(100)
    );
    expect_code(&rita, &nested, "54000").await;
    let huge = format!("SELECT '{}'", "x".repeat(2 * 1024 * 1024));
    expect_code(&rita, &huge, "54000").await;
    expect_code(&rita, "SELECT * FROM \"cust\\omers\"", "0A000").await;
    // the session survives all of it
    assert_eq!(count(&rita, "SELECT count(*) FROM products").await, 200);
    // `options` from the client is never forwarded: search_path stays pinned
    let evil = common::connect_str(&format!(
        "{} options='-c search_path=pg_temp'",
        env.conn_str("rita")
    ))
    .await
    .unwrap();
    let sp = evil.simple_query("SHOW search_path").await.unwrap();
    let value = sp.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("public"));
}
