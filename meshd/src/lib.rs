//! meshd: one daemon per host. It joins the mesh by gossip, answers DNS for the mesh's
//! services, carries traffic between hosts through mutually authenticated QUIC tunnels and
//! enforces the routes that operators apply with meshctl.
//!
//! One module per concern (see ARCHITECTURE.md); [`app`] wires them together and owns nothing.
//!
//! Must not: hold code of its own: each concern lives in its module.

pub mod admin;
pub mod app;
pub mod bootstrap;
pub mod bridge;
pub mod catalog;
pub mod config;
pub mod datadir;
pub mod dev;
pub mod dns;
pub mod documents;
pub mod drain;
pub mod failpoint;
pub mod fuzzing;
pub mod handover;
pub mod identity;
pub mod membership;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod signal;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod transport;
