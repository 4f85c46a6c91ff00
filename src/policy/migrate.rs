//! `pgveil init`: create and migrate the catalog schema, idempotently and versioned.

use tokio_postgres::Client;

/// Ordered migrations; never edit a released one, append a new version.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("catalog_v1.sql")),
    (2, include_str!("catalog_v2.sql")),
];

/// Apply pending migrations under an advisory lock; returns the versions applied.
pub async fn migrate(c: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('pgveil.migrate'));
         CREATE SCHEMA IF NOT EXISTS pgveil;
         CREATE TABLE IF NOT EXISTS pgveil.schema_version (
             version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pgveil.schema_version",
            &[],
        )
        .await?
        .get(0);
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if *version > current {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO pgveil.schema_version (version) VALUES ($1)",
                &[version],
            )
            .await?;
            applied.push(*version);
        }
    }
    tx.execute("SELECT pg_notify('pgveil_policy', 'migrate')", &[])
        .await?;
    tx.commit().await?;
    // Structure changes (new columns, tables) also reload policy; needs superuser, optional.
    let _ = c.batch_execute(DDL_TRIGGER_SQL).await;
    Ok(applied)
}

/// The event trigger that reloads policy on structure changes (needs a superuser). Without it
/// pgveil reads every protected table through policy subqueries (see `Snapshot`).
pub const DDL_TRIGGER_SQL: &str =
    "CREATE OR REPLACE FUNCTION pgveil.notify_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
     BEGIN PERFORM pg_notify('pgveil_policy', 'ddl'); END $$;
     DROP EVENT TRIGGER IF EXISTS pgveil_ddl;
     CREATE EVENT TRIGGER pgveil_ddl ON ddl_command_end EXECUTE FUNCTION pgveil.notify_ddl();";

/// Latest catalog version this binary knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}
