//! Control plane: catalog connections (tokio-postgres), the initial load, and live reload on
//! `NOTIFY pgveil_policy`. A failed reload keeps the last good policy and logs why; after a
//! lost connection everything is reloaded.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use crate::config::Config;
use crate::policy::load::{ddl_trigger_enabled, load_catalog, load_relations, LoadError};
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

/// What one load reads: the catalog, the upstream relations, and whether structure changes
/// upstream reach pgveil (the DDL event trigger notifies on the channel pgveil listens to,
/// which needs the catalog in the upstream database).
pub struct Loaded {
    pub catalog: crate::policy::model::Catalog,
    pub relations: crate::policy::model::RelationMap,
    pub relations_tracked: bool,
}

/// Load catalog and relations (relations come from the upstream database).
pub async fn load_all(config: &Config, catalog: &Client) -> Result<Loaded, ControlError> {
    let cat = load_catalog(catalog).await?;
    let (relations, relations_tracked) = if config.catalog_database() == config.upstream.database {
        (
            load_relations(catalog).await?,
            relations_tracked(config, catalog).await?,
        )
    } else {
        let up = connect(config, &config.upstream.database, None).await?;
        (load_relations(&up).await?, false)
    };
    Ok(Loaded {
        catalog: cat,
        relations,
        relations_tracked,
    })
}

/// Do structure changes upstream reach pgveil? Only with the catalog in the upstream database
/// (where pgveil listens) and pgveil's DDL event trigger enabled there.
pub async fn relations_tracked(config: &Config, catalog: &Client) -> Result<bool, LoadError> {
    Ok(config.catalog_database() == config.upstream.database
        && ddl_trigger_enabled(catalog).await?)
}

/// The first policy snapshot; pgveil does not start without a valid catalog.
pub async fn initial_store(config: &Config) -> Result<Arc<PolicyStore>, ControlError> {
    let client = connect(config, config.catalog_database(), None).await?;
    let l = load_all(config, &client).await?;
    if !l.relations_tracked {
        tracing::warn!(
            "pgveil's DDL event trigger is not installed where relations are read (run `pgveil init` as a superuser, with the catalog in the upstream database): structure changes reload only with the next policy change, and protected tables are always read through policy subqueries"
        );
    }
    Ok(Arc::new(PolicyStore::new(
        l.catalog,
        l.relations,
        l.relations_tracked,
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
        Ok(l) => match server
            .store
            .install_if_changed(l.catalog, l.relations, l.relations_tracked)
        {
            Some(generation) => {
                server.rewrites.invalidate_all();
                tracing::info!(generation, "policy reloaded");
            }
            None => tracing::debug!("policy unchanged; caches kept"),
        },
        Err(e) => tracing::error!(error = %e, "policy reload failed; keeping the last good policy"),
    }
}
