//! The permission model: catalog (in PostgreSQL), compiled snapshots, per-user effective
//! policies cached in moka. See README "Policy model".

pub mod compile;
pub mod file;
pub mod load;
pub mod migrate;
pub mod model;
pub mod password;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

pub use compile::{Effective, Snapshot};

/// Cache key: a policy change (generation) or a change in active assignments can never hit
/// a stale entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EffKey {
    generation: u64,
    user: String,
    active: Vec<usize>,
}

/// The current policy snapshot plus the compiled-policy cache. One per pgveil process.
pub struct PolicyStore {
    snapshot: ArcSwap<Snapshot>,
    cache: moka::sync::Cache<EffKey, Arc<Effective>>,
    next_generation: AtomicU64,
    /// The generation of the installed snapshot, readable with one atomic load (sessions
    /// check it on every batch of messages).
    generation: AtomicU64,
    /// Reloads looked at (installed or found unchanged): lets callers see a reload happened.
    reloads_checked: AtomicU64,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("generation", &self.snapshot.load().generation)
            .finish()
    }
}

impl PolicyStore {
    /// A store holding an initial snapshot.
    pub fn new(
        catalog: model::Catalog,
        relations: model::RelationMap,
        relations_tracked: bool,
        capacity: u64,
    ) -> PolicyStore {
        let first = Snapshot::new(1, catalog, relations).with_relations_tracked(relations_tracked);
        PolicyStore {
            snapshot: ArcSwap::from_pointee(first),
            cache: moka::sync::Cache::new(capacity),
            next_generation: AtomicU64::new(2),
            generation: AtomicU64::new(1),
            reloads_checked: AtomicU64::new(0),
        }
    }

    /// The current snapshot (one per statement).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current catalog generation (without touching the snapshot, whose reference
    /// count every session would share).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Install a freshly loaded catalog unless it equals the current one. Returns the new
    /// generation, or None when nothing changed: then every cache stays warm (DDL fires a
    /// reload, and most DDL — indexes, temporary tables, other schemas' functions — changes
    /// nothing pgveil reads).
    pub fn install_if_changed(
        &self,
        catalog: model::Catalog,
        relations: model::RelationMap,
        relations_tracked: bool,
    ) -> Option<u64> {
        let current = self.snapshot.load();
        let changed = current.catalog != catalog
            || current.relations != relations
            || current.relations_tracked != relations_tracked;
        let installed = changed.then(|| self.install(catalog, relations, relations_tracked));
        self.reloads_checked.fetch_add(1, Ordering::SeqCst);
        installed
    }

    /// How many reloads have been looked at so far.
    pub fn reloads_checked(&self) -> u64 {
        self.reloads_checked.load(Ordering::SeqCst)
    }

    /// Install a new catalog; returns its generation.
    fn install(
        &self,
        catalog: model::Catalog,
        relations: model::RelationMap,
        relations_tracked: bool,
    ) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::SeqCst);
        let snap =
            Snapshot::new(generation, catalog, relations).with_relations_tracked(relations_tracked);
        self.snapshot.store(Arc::new(snap));
        // after the snapshot: whoever sees the new generation loads the new snapshot
        self.generation.store(generation, Ordering::Release);
        self.cache.invalidate_all();
        generation
    }

    /// The effective policy of `user` now, from `ip`. None if the user is unknown or disabled.
    pub fn effective(
        &self,
        user: &str,
        now: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> Option<Arc<Effective>> {
        self.effective_in(&self.snapshot(), user, now, ip)
    }

    /// As [`PolicyStore::effective`], against a given snapshot (one per statement).
    pub fn effective_in(
        &self,
        snap: &Snapshot,
        user: &str,
        now: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> Option<Arc<Effective>> {
        let cache = &self.cache;
        let u = snap.user(user).filter(|u| u.active)?;
        let active = snap.active_assignments(user, now, ip);
        let key = EffKey {
            generation: snap.generation,
            user: user.to_owned(),
            active,
        };
        Some(cache.get_with_by_ref(&key, || Arc::new(compile::compile(snap, u, &key.active))))
    }
}
