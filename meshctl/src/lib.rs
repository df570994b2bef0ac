//! meshctl as a library: the admin API client and the table printers. The binary
//! (`main.rs`) only parses arguments; tests use [`Client`] to talk to a real meshd.

pub mod client;
pub mod table;

pub use client::{Client, ClientError, Response};

/// Where meshctl looks for meshd without `--socket` or `$MESHD_SOCKET`.
pub const DEFAULT_SOCKET: &str = "/run/meshd/meshd.sock";

/// The largest input file meshctl reads (a route or service file is a few KiB; a store
/// value is at most 64 KiB): `-f /dev/zero` is refused, not read until memory runs out.
pub const MAX_INPUT: u64 = 1024 * 1024;

/// Reads an input file of at most [`MAX_INPUT`] bytes; a larger, unreadable or non-UTF-8
/// file is an input error (exit 2) naming the file.
pub fn read_input(path: &std::path::Path) -> Result<String, ClientError> {
    use std::io::Read;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| ClientError::Input(format!("{shown}: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT + 1).read_to_end(&mut bytes).map_err(|e| ClientError::Input(format!("{shown}: {e}")))?;
    if bytes.len() as u64 > MAX_INPUT {
        return Err(ClientError::Input(format!(
            "{shown}: larger than {} KiB, the most meshctl reads",
            MAX_INPUT / 1024
        )));
    }
    String::from_utf8(bytes).map_err(|_| ClientError::Input(format!("{shown}: not UTF-8 text")))
}
