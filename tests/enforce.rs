//! Issue 4: restricted users get exactly their rows and fields, and cannot write outside
//! their permissions. Every check compares with ground truth read directly from PostgreSQL.
mod common;

use common::{code, message, Env};

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_scopes_per_role() {
    let env = Env::start().await;
    let direct = env.direct().await;
    // rita: Sales Representative, customers assigned
    let rita = env.connect("rita").await;
    assert_eq!(
        count(&rita, "SELECT count(*) FROM customers").await,
        count(&direct, "SELECT count(*) FROM customers WHERE owner = 'rita'").await
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
        count(&direct, "SELECT count(*) FROM customers WHERE department = 'sales_west'").await
    );
    assert_eq!(count(&tom, "SELECT count(phone) FROM customers").await, 0);
    assert_eq!(count(&tom, "SELECT count(*) FROM customers WHERE phone LIKE '+1%'").await, 0, "no probing");
    // gina: Guest, 5 assigned customers, email partially masked
    let gina = env.connect("gina").await;
    let rows = gina.query("SELECT id, email, credit_limit, notes FROM customers ORDER BY id", &[]).await.unwrap();
    assert_eq!(rows.len(), 5);
    for r in &rows {
        let email: String = r.get(1);
        assert!(email.starts_with('*') && !email.contains("contact"), "{email}");
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
        fn from_sql(_: &tokio_postgres::types::Type, _: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
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
    let e = rita.simple_query("SELECT * FROM internal_salaries").await.unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    // no permission on tickets
    let e = rita.query("SELECT * FROM tickets", &[]).await.unwrap_err();
    assert_eq!(code(&e), "42501");
    assert!(message(&e).contains("tickets"), "{}", message(&e));
    // unparseable
    let e = rita.simple_query("SELECT * FROM customers WHERE id = ANY( OPERATOR(pg_catalog.=) )").await.unwrap_err();
    assert!(["0A000", "42501"].contains(&code(&e).as_str()), "{e}");
    // DDL
    let e = rita.simple_query("DROP TABLE customers").await.unwrap_err();
    assert_eq!(code(&e), "42501");
    // session still usable
    assert_eq!(count(&rita, "SELECT count(*) FROM products").await, 200);
    // inside a transaction a refusal aborts it
    rita.simple_query("BEGIN").await.unwrap();
    let e = rita.simple_query("SELECT * FROM tickets").await.unwrap_err();
    assert_eq!(code(&e), "42501");
    let e = rita.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), "25P02");
    rita.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(count(&rita, "SELECT count(*) FROM products").await, 200);
}
