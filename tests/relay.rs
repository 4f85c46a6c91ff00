//! Issue 2: the relay is faithful for an unrestricted user; auth and sessions behave.
mod common;

use common::{code, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrestricted_user_sees_same_results_as_direct() {
    let env = Env::start().await;
    let admin = env.connect("admin").await;
    let direct = env.direct().await;
    for sql in [
        "SELECT id, name, phone, credit_limit, created_at FROM customers ORDER BY id LIMIT 50",
        "SELECT 1.5::numeric, '{\"a\":1}'::jsonb, ARRAY[1,2,3], now()::date, '\\xdeadbeef'::bytea, 'x'::text",
        "SELECT count(*), sum(amount) FROM orders",
    ] {
        let a = admin.simple_query(sql).await.unwrap();
        let d = direct.simple_query(sql).await.unwrap();
        assert_eq!(format!("{a:?}"), format!("{d:?}"), "{sql}");
    }
    // extended protocol, binary results, parameters
    let stmt = "SELECT id, name, credit_limit::float8, created_at FROM customers WHERE id = $1";
    let a = admin.query_one(stmt, &[&7i32]).await.unwrap();
    let d = direct.query_one(stmt, &[&7i32]).await.unwrap();
    assert_eq!(a.get::<_, String>(1), d.get::<_, String>(1));
    assert_eq!(a.get::<_, f64>(2), d.get::<_, f64>(2));
    env.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_get_the_same_error() {
    let env = Env::start().await;
    let bad = common::connect_str(&format!("host=127.0.0.1 port={} user=admin password=nope dbname=crm", env.port()))
        .await
        .unwrap_err();
    let unknown = common::connect_str(&format!("host=127.0.0.1 port={} user=nobody password=nope dbname=crm", env.port()))
        .await
        .unwrap_err();
    assert_eq!(code(&bad), "28P01");
    assert_eq!(code(&unknown), "28P01");
    assert_eq!(
        common::message(&bad).replace("admin", "X"),
        common::message(&unknown).replace("nobody", "X")
    );
    // disabled user cannot log in either, same error
    let dis = env.try_connect("dis").await.unwrap_err();
    assert_eq!(code(&dis), "28P01");
}
