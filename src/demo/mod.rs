//! `pgveil demo`: an ephemeral PostgreSQL (machine binaries, temp dir, removed on exit) with
//! the sample CRM and its policy, and pgveil in front of it.

use crate::config::Config;
use crate::embedded_pg::EmbeddedPg;

/// The demo CRM schema and data.
pub const CRM_SQL: &str = include_str!("../../config/demo/crm.sql");
/// The demo policy (also at config/demo-policy.toml).
pub const POLICY_TOML: &str = include_str!("../../config/demo-policy.toml");
/// Name of the service account pgveil uses upstream.
pub const SERVICE_USER: &str = "pgveil_service";
/// Service account password in the ephemeral cluster.
pub const SERVICE_PASSWORD: &str = "svc-demo-password";

/// Demo users and their passwords (all satisfy the default password policy).
pub const USERS: &[&str] = &[
    "admin", "olivia", "maria", "sam", "rita", "carl", "tom", "dana", "gina", "sid", "nora", "ex",
    "dis",
];

/// A demo user's password.
pub fn password(user: &str) -> String {
    format!("Demo-{user}-2026")
}

/// Configuration pointing at an embedded cluster (listen address left to the caller).
pub fn config_for(pg: &EmbeddedPg, listen: &str) -> Config {
    let mut cfg = Config::default();
    cfg.server.listen = listen.to_owned();
    cfg.upstream.host = "127.0.0.1".into();
    cfg.upstream.port = pg.port();
    cfg.upstream.database = "crm".into();
    cfg.upstream.user = SERVICE_USER.into();
    cfg.upstream.password = Some(SERVICE_PASSWORD.into());
    cfg.upstream.connect_timeout_ms = 5_000;
    cfg
}

/// Create the service account, the CRM database and data, the catalog, the demo policy and
/// the demo users' passwords.
pub async fn provision(pg: &EmbeddedPg, cfg: &Config) -> anyhow::Result<()> {
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {SERVICE_USER} LOGIN PASSWORD '{SERVICE_PASSWORD}'"),
    )?;
    pg.psql(
        "postgres",
        &format!("CREATE DATABASE crm OWNER {SERVICE_USER}"),
    )?;
    let mut client = crate::control::connect(cfg, "crm", None).await?;
    client.batch_execute(CRM_SQL).await?;
    crate::policy::migrate::migrate(&mut client).await?;
    // as `pgveil init` run by a superuser would: structure changes reload the policy
    pg.psql("crm", crate::policy::migrate::DDL_TRIGGER_SQL)?;
    let policy = crate::policy::file::parse(POLICY_TOML)?;
    crate::policy::file::apply(&mut client, &policy).await?;
    for u in USERS {
        client
            .execute(
                "UPDATE pgveil.users SET password_verifier = $2 WHERE name = $1",
                &[u, &crate::policy::password::make_verifier(&password(u))],
            )
            .await?;
    }
    Ok(())
}

/// Run the demo until Ctrl-C / SIGTERM.
pub async fn run(port: u16) -> anyhow::Result<()> {
    crate::logging::init("info");
    println!("starting an ephemeral PostgreSQL ...");
    let pg = tokio::task::spawn_blocking(|| EmbeddedPg::start(&[])).await??;
    let cfg = config_for(&pg, &format!("127.0.0.1:{port}"));
    provision(&pg, &cfg).await?;
    let running = crate::server::start(cfg).await?;
    println!();
    println!(
        "pgveil demo is running on {} (PostgreSQL on port {})",
        running.addr,
        pg.port()
    );
    println!("connect as any demo user (password Demo-<user>-2026), e.g.:");
    for u in ["admin", "maria", "rita", "carl", "tom", "gina", "sid"] {
        println!(
            "  psql \"postgresql://{u}:{}@127.0.0.1:{port}/crm\"",
            password(u)
        );
    }
    println!(
        "PostgreSQL directly (superuser): psql \"postgresql://{}:{}@127.0.0.1:{}/crm\"",
        pg.superuser,
        pg.password,
        pg.port()
    );
    println!("press Ctrl-C to stop (the database is deleted)");
    crate::cli::wait_for_signal().await;
    running.shutdown().await;
    drop(pg);
    Ok(())
}
