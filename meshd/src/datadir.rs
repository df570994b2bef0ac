//! `data_dir`: what `meshd init` creates and `meshd run` starts from.
//!
//! `node.toml` records which node the directory belongs to and its layout version, so
//! that a config whose `node_name` changed, or a directory from a newer meshd, is refused
//! at start instead of being half-used. The store (`store/`) and the identity
//! (`identity/`) live beside it.
//!
//! Must not: read or write the store or the keys: it only lays out and checks the
//! directory.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The layout version this meshd writes and reads.
pub const FORMAT: u32 = 1;
const MARKER: &str = "node.toml";

/// The addresses of the members last known alive (one per line), as serf keeps a
/// snapshot: a node restarted without join seeds (the mesh's first node, typically)
/// announces itself to them, or nobody would know it came back.
const MEMBERS: &str = "members";

/// The member addresses [`keep_members`] last wrote; empty when there are none.
pub fn known_members(data_dir: &Path) -> Vec<std::net::SocketAddr> {
    let text = std::fs::read_to_string(data_dir.join(MEMBERS)).unwrap_or_default();
    text.lines().filter_map(|l| l.trim().parse().ok()).take(MAX_KNOWN).collect()
}

/// At most this many addresses are kept (and read back).
const MAX_KNOWN: usize = 64;

/// Until the drain: whenever the set of other members alive changes (and is not empty),
/// writes their addresses to `data_dir/members`, atomically.
pub async fn keep_members(
    data_dir: PathBuf,
    mut snapshots: crate::state::SnapshotRx,
    drain: crate::drain::DrainWatcher,
) {
    let mut written: Vec<std::net::SocketAddr> = Vec::new();
    loop {
        let mut alive: Vec<std::net::SocketAddr> = {
            let snap = snapshots.borrow_and_update();
            snap.members
                .iter()
                .filter(|m| m.name != snap.node && m.state == mesh_proto::api::MemberState::Alive)
                .map(|m| m.addr)
                .collect()
        };
        alive.sort();
        alive.truncate(MAX_KNOWN);
        if !alive.is_empty() && alive != written {
            let text: String = alive.iter().map(|a| format!("{a}\n")).collect();
            let tmp = data_dir.join(format!("{MEMBERS}.tmp"));
            let done = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, data_dir.join(MEMBERS)));
            match done {
                Ok(()) => written = alive,
                Err(e) => tracing::debug!(error = %e, "cannot record the members' addresses"),
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = drain.signaled() => return,
        }
    }
}

/// Where the store lives inside `data_dir`.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub format: u32,
    pub node_name: String,
    /// RFC 3339, when `meshd init` ran.
    pub created: String,
}

/// Problems with `data_dir`. All but `Io` are the operator's to fix (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// `meshd init` on a directory that already belongs to a node.
    #[error("{} already holds node '{node}': this host is initialised (remove the directory to start over)", dir.display())]
    AlreadyInitialised { dir: PathBuf, node: String },
    /// `meshd run` on a directory that `meshd init` never prepared.
    #[error("{} is not initialised: run `meshd init` on the first host of a mesh, or `meshd join TOKEN` on the others", dir.display())]
    NotInitialised { dir: PathBuf },
    /// The directory belongs to another node name than the config's.
    #[error("{} belongs to node '{found}' but node_name is '{configured}': restore node_name, or use another data_dir", dir.display())]
    OtherNode { dir: PathBuf, found: String, configured: String },
    /// A marker this version cannot read (newer meshd, or damaged).
    #[error("{}: {detail}", path.display())]
    Unreadable { path: PathBuf, detail: String },
    /// The file system refused.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl DataDirError {
    /// Whether the operator must change something before retrying (exit 2), as opposed to
    /// a failure of the machine (exit 1).
    pub fn is_usage(&self) -> bool {
        !matches!(self, DataDirError::Io { .. })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_owned(), source }
}

/// Creates `dir` (mode 0700) and marks it as `node`'s. Refuses a directory that is
/// already initialised.
pub fn init(dir: &Path, node: &str) -> Result<NodeFile, DataDirError> {
    if let Some(existing) = read(dir)? {
        return Err(DataDirError::AlreadyInitialised { dir: dir.to_owned(), node: existing.node_name });
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    let file = NodeFile {
        format: FORMAT,
        node_name: node.to_owned(),
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    let text = toml::to_string(&file)
        .map_err(|e| DataDirError::Unreadable { path: dir.join(MARKER), detail: e.to_string() })?;
    write_durably(&dir.join(MARKER), text.as_bytes())?;
    Ok(file)
}

/// Opens an initialised `dir` for `node`.
pub fn open(dir: &Path, node: &str) -> Result<NodeFile, DataDirError> {
    let file = read(dir)?.ok_or_else(|| DataDirError::NotInitialised { dir: dir.to_owned() })?;
    if file.node_name != node {
        return Err(DataDirError::OtherNode {
            dir: dir.to_owned(),
            found: file.node_name,
            configured: node.to_owned(),
        });
    }
    Ok(file)
}

fn read(dir: &Path) -> Result<Option<NodeFile>, DataDirError> {
    let path = dir.join(MARKER);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let file: NodeFile = toml::from_str(&text)
        .map_err(|e| DataDirError::Unreadable { path: path.clone(), detail: e.message().to_owned() })?;
    if file.format != FORMAT {
        return Err(DataDirError::Unreadable {
            path,
            detail: format!("layout version {} is not {FORMAT}: written by another meshd version", file.format),
        });
    }
    Ok(Some(file))
}

/// Writes `bytes` to a temporary file, fsyncs it, renames it over `path` and fsyncs the
/// directory, so `path` holds either the old or the new contents after a crash.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(())
}

/// What is wrong with `dir` under a running meshd, if anything: it, its store or its
/// identity is gone, or it cannot be written.
pub fn fault(dir: &Path) -> Option<String> {
    if !dir.is_dir() {
        return Some(format!("{} is gone", dir.display()));
    }
    for needed in [store_path(dir).join("conf"), dir.join("identity").join("node.pem")] {
        if !needed.exists() {
            return Some(format!("{} is gone", needed.display()));
        }
    }
    if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() {
        return Some(format!("{} cannot be written", dir.display()));
    }
    None
}

/// How often a running meshd looks at its data_dir, and how long it serves on after a
/// fault before it exits (non-zero) so that its service manager restarts it.
pub const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
pub const FAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Watches `dir` until the drain; returns (a part failure) after [`FAULT_GRACE`] once it
/// finds a fault, which it logs at ERROR at once. Writes are refused meanwhile by the
/// store itself (it checks its directory before acknowledging one).
pub async fn watch(dir: PathBuf, drain: crate::drain::DrainWatcher) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = drain.signaled() => return,
        }
        if let Some(fault) = fault(&dir) {
            tracing::error!(%fault, grace = ?FAULT_GRACE, "the data_dir is broken under a running meshd: writes are refused, and meshd exits so that it is restarted and the failure is seen");
            tokio::select! {
                _ = tokio::time::sleep(FAULT_GRACE) => return,
                _ = drain.signaled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_open_then_refuse_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        assert!(matches!(open(&dir, "a"), Err(DataDirError::NotInitialised { .. })));
        init(&dir, "a").expect("init");
        assert_eq!(open(&dir, "a").expect("open").node_name, "a");
        let err = init(&dir, "a").expect_err("second init");
        assert!(matches!(err, DataDirError::AlreadyInitialised { .. }), "{err}");
        let err = open(&dir, "b").expect_err("other node");
        assert!(err.to_string().contains("belongs to node 'a'"), "{err}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_damaged_marker_is_reported_with_its_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join(MARKER), "format = \"x\"").expect("write");
        let err = open(tmp.path(), "a").expect_err("damaged");
        assert!(err.is_usage());
        assert!(err.to_string().contains("node.toml"), "{err}");
    }
}
