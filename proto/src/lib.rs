//! `mesh-proto`: the types that meshd and meshctl share, and nothing that does I/O.
//!
//! - [`input`]: parsing TOML files that people write (meshd.toml, service and route files)
//!   into typed models, with errors that name the file, the line and the key.
//! - [`duration`]: human durations (`"5s"`, `"1h30m"`) in those files.
//! - [`service`]: a service instance as declared on its host.
//! - [`token`]: the join token's text form.
//! - [`traffic`]: per-edge traffic summaries, asked for on view and merged.
//! - [`wire`]: messages between daemons over QUIC streams, and their framing.
//! - [`api`]: the JSON bodies of meshd's admin API, which meshctl prints unchanged
//!   with `-o json`.

pub mod api;
pub mod duration;
pub mod input;
pub mod policy;
pub mod role;
pub mod route;
pub mod service;
pub mod token;
pub mod traffic;
pub mod wire;

/// The version every binary reports (`meshctl status`, `/v1/status`, `--version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether `s` is a valid DNS label as mesh uses them for node and service names:
/// 1 to 63 characters of `a-z`, `0-9` and `-`, not starting or ending with `-`.
/// Lower case only, so that a name and its DNS form are the same string.
/// What [`is_dns_label`] asks of a name, for error messages.
pub const DNS_LABEL_RULE: &str =
    "use 1 to 63 lower-case letters, digits and '-', not starting or ending with '-' (names are DNS labels)";

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "vm-1", "reviews", "x0", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok} should be a label");
        }
        for bad in ["", "-a", "a-", "A", "vm_1", "vm.1", &"a".repeat(64), "é"] {
            assert!(!is_dns_label(bad), "{bad} should not be a label");
        }
    }
}
