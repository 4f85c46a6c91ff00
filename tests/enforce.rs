//! Issue 4: restricted users get exactly their rows and fields, and cannot write outside
//! their permissions. Every check compares with ground truth read directly from PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
mod common;

use common::{code, expect_code, expect_code_extended, message, scalar, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_scopes_per_role() {
    let env = Env::start().await;
    let direct = env.direct().await;
    // rita: Sales Representative, customers assigned
    let rita = env.connect("rita").await;
    assert_eq!(
        scalar(&rita, "SELECT count(*) FROM customers").await,
        scalar(
            &direct,
            "SELECT count(*) FROM customers WHERE owner = 'rita'"
        )
        .await
    );
    // orders inherit from customers (parent scope)
    assert_eq!(
        scalar(&rita, "SELECT count(*) FROM orders").await,
        scalar(&direct, "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.owner = 'rita'").await
    );
    // maria: Manager, department tree of sales
    let maria = env.connect("maria").await;
    assert_eq!(
        scalar(&maria, "SELECT count(*) FROM customers").await,
        scalar(&direct, "SELECT count(*) FROM customers WHERE department IN ('sales','sales_east','sales_west')").await
    );
    // tom: Telemarketer, department sales_west, phone invisible
    let tom = env.connect("tom").await;
    assert_eq!(
        scalar(&tom, "SELECT count(*) FROM customers").await,
        scalar(
            &direct,
            "SELECT count(*) FROM customers WHERE department = 'sales_west'"
        )
        .await
    );
    assert_eq!(scalar(&tom, "SELECT count(phone) FROM customers").await, 0);
    assert_eq!(
        scalar(
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
    assert_eq!(scalar(&admin, "SELECT count(*) FROM customers").await, 2000);
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
    assert_eq!(scalar(&rita, "SELECT count(*) FROM products").await, 200);
    // inside a transaction a refusal aborts it
    rita.simple_query("BEGIN").await.unwrap();
    expect_code(&rita, "SELECT * FROM tickets", "42501").await;
    expect_code(&rita, "SELECT 1", "25P02").await;
    rita.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(scalar(&rita, "SELECT count(*) FROM products").await, 200);
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
    assert_eq!(scalar(&rita, "SELECT count(*) FROM products").await, 200);
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

/// First cell of each row of a simple query, as text; or the SQLSTATE.
async fn cells(c: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, String> {
    let rows = common::simple_rows(c, sql).await?;
    Ok(rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| v.as_deref().unwrap_or("∅"))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect())
}

/// Restricted simple-protocol statements with literals run as pgveil's prepared statements
/// upstream (`server.prepare_simple_statements`): the rows, errors and transaction states are
/// those of the text they replace, whatever the client does around them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_statements_bound_upstream_behave_like_text() {
    let env = Env::start().await;
    let direct = env.direct().await;
    let rita = common::connect_str(&format!(
        "{} application_name=bound_rita",
        env.conn_str("rita")
    ))
    .await
    .unwrap();
    let truth = |cond: String| {
        let direct = &direct;
        async move {
            let sql = format!("SELECT count(*) FROM customers WHERE owner = 'rita' AND {cond}");
            vec![direct
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                .to_string()]
        }
    };
    // the same shape with other literals: rita's rows every time, through a prepared statement
    for id in [0, 700, 1400] {
        let got = cells(
            &rita,
            &format!("SELECT count(*) FROM customers WHERE id > {id}"),
        )
        .await;
        assert_eq!(got.unwrap(), truth(format!("id > {id}")).await, "id > {id}");
    }
    let upstream: String = direct
        .query_one(
            "SELECT query FROM pg_stat_activity WHERE application_name = 'bound_rita'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        upstream.contains("$1") && !upstream.contains("1400"),
        "{upstream}"
    );
    // literal types are PostgreSQL's: int4, int8, numeric
    assert_eq!(
        cells(&rita, "SELECT 7 / 2, 3000000000 * 2, 1.5 * 2, 7 / 2")
            .await
            .unwrap(),
        vec!["3|6000000000|3.0|3"]
    );
    // … also where a minus sign makes PostgreSQL's literal narrower than a parameter would be
    for (sql, types) in [
        (
            "SELECT pg_typeof(5), pg_typeof(0.5), pg_typeof(-2147483649)",
            "integer|numeric|bigint",
        ),
        ("SELECT pg_typeof(-2147483648)", "integer"),
        ("SELECT pg_typeof(-9223372036854775808)", "bigint"),
    ] {
        for _ in 0..2 {
            assert_eq!(cells(&rita, sql).await.unwrap(), vec![types], "{sql}");
        }
    }
    // strings where the context types them; elsewhere (IS NULL) the text path, same answer
    assert_eq!(
        cells(
            &rita,
            "SELECT count(*) FROM customers WHERE name <> 'O''Brien' AND id > 0"
        )
        .await
        .unwrap(),
        truth("name <> 'O''Brien' AND id > 0".into()).await
    );
    assert_eq!(
        cells(&rita, "SELECT 'x' IS NULL, concat('a', 1)")
            .await
            .unwrap(),
        vec!["f|a1"]
    );
    // an integer in ORDER BY stays a column position
    let top = cells(&rita, "SELECT id FROM customers ORDER BY 1 DESC LIMIT 3")
        .await
        .unwrap();
    let want = common::first_column(
        &direct,
        "SELECT id::text FROM customers WHERE owner = 'rita' ORDER BY customers.id DESC LIMIT 3",
    )
    .await;
    assert_eq!(top, want);
    // an error inside a transaction aborts it; the same shapes work again after ROLLBACK
    rita.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        cells(&rita, "SELECT count(*) FROM customers WHERE id > 'abc'").await,
        Err("22P02".into())
    );
    assert_eq!(
        cells(&rita, "SELECT count(*) FROM customers WHERE id > 5").await,
        Err("25P02".into())
    );
    assert_eq!(
        cells(
            &rita,
            "SELECT count(*) FROM customers WHERE name = 'q' OR id > 7"
        )
        .await,
        Err("25P02".into())
    );
    rita.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        cells(&rita, "SELECT count(*) FROM customers WHERE id > 5")
            .await
            .unwrap(),
        truth("id > 5".into()).await
    );
    assert_eq!(
        cells(
            &rita,
            "SELECT count(*) FROM customers WHERE name = 'q' OR id > 7"
        )
        .await
        .unwrap(),
        truth("(name = 'q' OR id > 7)".into()).await
    );
    // DISCARD ALL and DEALLOCATE ALL drop prepared statements: pgveil prepares again
    for reset in ["DISCARD ALL", "DEALLOCATE ALL"] {
        rita.batch_execute(reset).await.unwrap();
        assert_eq!(
            cells(&rita, "SELECT count(*) FROM customers WHERE id > 9")
                .await
                .unwrap(),
            truth("id > 9".into()).await,
            "after {reset}"
        );
    }
    // the client's own prepared statements and pipelined queries interleave correctly
    let stmt = rita
        .prepare("SELECT count(*) FROM customers WHERE id > $1")
        .await
        .unwrap();
    for id in [3i32, 11] {
        let (first, last) = (
            format!("SELECT count(*) FROM customers WHERE id > {id}"),
            format!("SELECT count(*) FROM customers WHERE id > {}", id + 1),
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let (a, b, c) = tokio::join!(
            cells(&rita, &first),
            rita.query_one(&stmt, &params),
            cells(&rita, &last),
        );
        assert_eq!(a.unwrap(), truth(format!("id > {id}")).await);
        assert_eq!(
            vec![b.unwrap().get::<_, i64>(0).to_string()],
            truth(format!("id > {id}")).await
        );
        assert_eq!(c.unwrap(), truth(format!("id > {}", id + 1)).await);
    }
    // more shapes than a session keeps: the oldest are closed, and prepared again when reused
    for round in 0..2 {
        for n in (1..=300).step_by(if round == 0 { 1 } else { 37 }) {
            let list = (1..=n)
                .map(|i| (i * 7).to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let cond = format!("id IN ({list})");
            let got = cells(
                &rita,
                &format!("SELECT count(*) FROM customers WHERE {cond}"),
            )
            .await;
            assert_eq!(got.unwrap(), truth(cond).await, "{n} literals");
        }
    }
    // a role's maximum rows fails the bound statement cleanly, below it the rows come
    let carl = env.connect("carl").await;
    for _ in 0..2 {
        assert_eq!(
            cells(&carl, "SELECT id FROM tickets WHERE id > 0").await,
            Err("54000".into())
        );
        assert_eq!(
            cells(&carl, "SELECT id FROM tickets WHERE id < 11")
                .await
                .unwrap()
                .len(),
            10
        );
    }
    // a bound statement can be cancelled like any other
    let slow = "SELECT count(*) FROM customers a, customers b, customers c WHERE a.id > 0";
    let token = rita.cancel_token();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    assert_eq!(cells(&rita, slow).await, Err("57014".into()));
    cancel.await.unwrap();
    assert_eq!(
        cells(&rita, "SELECT count(*) FROM customers WHERE id > 13")
            .await
            .unwrap(),
        truth("id > 13".into()).await
    );
    // writes: a string assigned, only in scope
    let (theirs, mine): (i32, i32) = {
        let r = direct
            .query_one(
                "SELECT (SELECT min(id) FROM customers WHERE owner <> 'rita'), (SELECT min(id) FROM customers WHERE owner = 'rita')",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    for id in [theirs, mine] {
        rita.simple_query(&format!(
            "UPDATE customers SET notes = 'bound ''note''' WHERE id = {id}"
        ))
        .await
        .unwrap();
    }
    let notes: Vec<Option<String>> = direct
        .query(
            "SELECT notes FROM customers WHERE id IN ($1, $2) ORDER BY id = $2",
            &[&theirs, &mine],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_ne!(
        notes[0].as_deref(),
        Some("bound 'note'"),
        "out of scope row written"
    );
    assert_eq!(notes[1].as_deref(), Some("bound 'note'"));
}
