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
        capacity: u64,
    ) -> PolicyStore {
        PolicyStore {
            snapshot: ArcSwap::from_pointee(Snapshot::new(1, catalog, relations)),
            cache: moka::sync::Cache::new(capacity),
            next_generation: AtomicU64::new(2),
        }
    }

    /// The current snapshot (one per statement).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Install a new catalog; returns its generation.
    pub fn install(&self, catalog: model::Catalog, relations: model::RelationMap) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::SeqCst);
        self.snapshot
            .store(Arc::new(Snapshot::new(generation, catalog, relations)));
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
