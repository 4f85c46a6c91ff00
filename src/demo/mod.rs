//! `pgveil demo`: an ephemeral PostgreSQL with a sample CRM and pgveil in front of it.

/// Run the demo until Ctrl-C.
pub async fn run(_port: u16) -> anyhow::Result<()> {
    anyhow::bail!("demo not built yet")
}
