//! The read model: an immutable [`Snapshot`] of what this node knows about the mesh,
//! published through a `tokio::sync::watch` channel. Readers (admin API, and later DNS,
//! routing and the proxy) clone an `Arc` and never lock anything; only the owner of the
//! [`Publisher`] makes new snapshots.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use mesh_proto::api::MemberState;
use tokio::sync::watch;

use crate::store::View;

/// Everything a reader needs, as of one moment. `index` grows with every publish, so a
/// blocking query can wait for "anything newer than N".
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub index: u64,
    /// This node's name.
    pub node: String,
    /// Every member known, this node included.
    pub members: Vec<Member>,
    /// The replicated store's entries, as of this snapshot.
    pub store: Arc<View>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
    pub state: MemberState,
    pub last_heard: SystemTime,
}

pub type SnapshotRx = watch::Receiver<Arc<Snapshot>>;

/// Makes new snapshots. Clones share one channel: the store publishes its entries,
/// membership its members, each replacing only its own part.
#[derive(Clone)]
pub struct Publisher {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Publisher {
    /// Starts with `first` (its index is set to 1).
    pub fn new(mut first: Snapshot) -> Publisher {
        first.index = 1;
        Publisher { tx: Arc::new(watch::Sender::new(Arc::new(first))) }
    }

    pub fn subscribe(&self) -> SnapshotRx {
        self.tx.subscribe()
    }

    /// The snapshot most recently published.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Publishes a changed copy of the current snapshot, with the next index.
    pub fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        self.tx.send_modify(|current| {
            let mut next = Snapshot::clone(current);
            change(&mut next);
            next.index = current.index + 1;
            *current = Arc::new(next);
        });
    }
}

impl Snapshot {
    /// A snapshot of node `node` knowing nothing yet.
    pub fn empty(node: &str) -> Snapshot {
        Snapshot { index: 0, node: node.to_owned(), members: Vec::new(), store: Arc::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_see_each_publish_with_a_growing_index() {
        let publisher = Publisher::new(Snapshot::empty("a"));
        let mut rx = publisher.subscribe();
        let first = rx.borrow_and_update().clone();
        assert_eq!(first.index, 1);
        publisher.update(|s| s.node = "b".into());
        rx.changed().await.expect("publisher alive");
        let second = rx.borrow().clone();
        assert_eq!((second.index, second.node.as_str()), (2, "b"));
        // The old snapshot is untouched: readers holding it see a consistent view.
        assert_eq!(first.node, "a");
    }
}
