//! Control plane: catalog connections (tokio-postgres), the initial load, and live reload on
//! `NOTIFY pgveil_policy`. A failed reload keeps the last good policy and logs why; after a
//! lost connection everything is reloaded.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use crate::config::Config;
use crate::policy::load::{load_catalog, load_relations, LoadError};
use crate::policy::PolicyStore;
use crate::server::Server;
use crate::upstream::UpstreamTarget;

/// Control-plane errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect to the catalog database: {0}")]
    Connect(String),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Open a tokio-postgres connection to `database` as the service account (over pgveil's own
/// upstream stream, so upstream TLS applies here too). Notifications go to `notify`.
pub async fn connect(
    config: &Config,
    database: &str,
    notify: Option<mpsc::UnboundedSender<String>>,
) -> Result<Client, ControlError> {
    let target =
        UpstreamTarget::from_config(config).map_err(|e| ControlError::Connect(e.to_string()))?;
    let stream = target
        .open_stream()
        .await
        .map_err(|e| ControlError::Connect(e.to_string()))?;
    let mut pg = tokio_postgres::Config::new();
    pg.user(&config.upstream.user)
        .dbname(database)
        .application_name("pgveil-control");
    if let Some(pw) = config.upstream_password() {
        pg.password(pw);
    }
    pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, mut conn) = pg
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(|e| ControlError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Some(tx) = &notify {
                        let _ = tx.send(n.payload().to_owned());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "catalog connection lost");
                    break;
                }
            }
        }
        // Dropping the sender tells the reloader the connection is gone.
    });
    Ok(client)
}

/// Load catalog and relations (relations come from the upstream database).
pub async fn load_all(
    config: &Config,
    catalog: &Client,
) -> Result<
    (
        crate::policy::model::Catalog,
        crate::policy::model::RelationMap,
    ),
    ControlError,
> {
    let cat = load_catalog(catalog).await?;
    let rels = if config.catalog_database() == config.upstream.database {
        load_relations(catalog).await?
    } else {
        let up = connect(config, &config.upstream.database, None).await?;
        load_relations(&up).await?
    };
    Ok((cat, rels))
}

/// The first policy snapshot; pgveil does not start without a valid catalog.
pub async fn initial_store(config: &Config) -> Result<Arc<PolicyStore>, ControlError> {
    let client = connect(config, config.catalog_database(), None).await?;
    let (cat, rels) = load_all(config, &client).await?;
    Ok(Arc::new(PolicyStore::new(
        cat,
        rels,
        config.catalog.cache_capacity,
    )))
}

/// Keep the policy current: LISTEN, reload on each notification burst, reconnect on loss.
pub fn spawn_reloader(server: Arc<Server>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            if server.shutdown.is_cancelled() {
                return;
            }
            match listen_and_reload(&server).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::warn!(error = %e, "policy reloader: will retry"),
            }
            tokio::select! {
                _ = server.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

async fn listen_and_reload(server: &Arc<Server>) -> Result<(), ControlError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = connect(&server.config, server.config.catalog_database(), Some(tx)).await?;
    client
        .batch_execute("LISTEN pgveil_policy")
        .await
        .map_err(LoadError::from)?;
    // Anything may have changed while we were not listening.
    reload(server, &client).await;
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => return Ok(()),
            msg = rx.recv() => {
                if msg.is_none() {
                    return Err(ControlError::Connect("notification stream closed".into()));
                }
                // Coalesce a burst of notifications into one reload.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while rx.try_recv().is_ok() {}
                reload(server, &client).await;
            }
        }
    }
}

async fn reload(server: &Arc<Server>, client: &Client) {
    match load_all(&server.config, client).await {
        Ok((cat, rels)) => {
            let generation = server.store.install(cat, rels);
            server.rewrites.invalidate_all();
            tracing::info!(generation, "policy reloaded");
        }
        Err(e) => tracing::error!(error = %e, "policy reload failed; keeping the last good policy"),
    }
}
