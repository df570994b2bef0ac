//! meshctl as a library: the admin API client and the table printers. The binary
//! (`main.rs`) only parses arguments; tests use [`Client`] to talk to a real meshd.

pub mod client;
pub mod table;

pub use client::{Client, ClientError, Response};

/// Where meshctl looks for meshd without `--socket` or `$MESHD_SOCKET`.
pub const DEFAULT_SOCKET: &str = "/run/meshd/meshd.sock";
