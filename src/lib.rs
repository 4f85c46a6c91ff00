//! pgveil: a PostgreSQL wire-protocol proxy that enforces CRM-style roles and permissions
//! in the data path. See README.md for the model and THREAT_MODEL.md for the defences.
//!
//! Flow: `front` (TLS, SCRAM) → `session` (raw relay) → `sql` (enforce) → `upstream`;
//! `policy` compiles the catalog that `control` keeps current.

pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod embedded_pg;
pub mod error;
pub mod front;
pub mod logging;
pub mod net;
pub mod policy;
pub mod server;
pub mod session;
pub mod sql;
pub mod timers;
pub mod upstream;
