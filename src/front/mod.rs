//! The client-facing side: TLS negotiation, startup validation, SCRAM authentication.

pub mod auth;
pub mod params;
pub mod startup;
