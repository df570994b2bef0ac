//! The read model: an immutable [`Snapshot`] of what this node knows about the mesh,
//! published through a `tokio::sync::watch` channel. Writers hand it their part (the
//! store its view, through [`Publisher::store_sink`]; membership its members); readers
//! (admin API, DNS, routing, the proxy) clone an `Arc` and never lock anything. Each
//! publish derives what follows from both (removed nodes are `Left`).
//!
//! Must not: write anything back, or do I/O: a publish is a pure function of the parts.

pub mod model;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use mesh_proto::api::MemberState;
use mesh_proto::service::ServiceSpec;
use tokio::sync::watch;

use crate::store::View;

/// Everything a reader needs, as of one moment. `index` grows with every publish, so a
/// blocking query can wait for "anything newer than N".
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub index: u64,
    /// The index of the last publish that changed a member's name, address or state (not
    /// only when it was last heard): what a blocking query on the member list waits for.
    pub members_index: u64,
    /// This node's name.
    pub node: String,
    /// Every member known, this node included. A removed node is `Left` here whatever
    /// gossip says, so its instances leave routing and DNS at once.
    pub members: Vec<Member>,
    /// What the replicated store says, typed: instance records, routes, revocations,
    /// removed nodes. Readers never see store keys or bytes; the store keeps its own view.
    pub parts: Arc<model::StoreParts>,
    /// Every service with its instances, their health resolved against `members`.
    pub services: Arc<BTreeMap<String, Arc<model::Service>>>,
    /// What this node declared itself (`[[service]]` and `meshctl service register`), as
    /// its catalog keeps it locally, by service name. An instance record in this node's
    /// name that is not declared here, exactly, was written by someone else: it is left
    /// out of `services`, so this node never routes to, connects to or checks it. None
    /// where no catalog runs (tests of the read model alone).
    pub declared: Option<Arc<BTreeMap<String, ServiceSpec>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
    pub state: MemberState,
    pub last_heard: SystemTime,
}

impl Member {
    /// Alive or suspect: a member whose instances may carry traffic (a suspect may only be
    /// slow; SWIM clears or condemns it within the suspicion timeout).
    pub fn is_serving(&self) -> bool {
        matches!(self.state, MemberState::Alive | MemberState::Suspect)
    }
}

pub type SnapshotRx = watch::Receiver<Arc<Snapshot>>;

/// Makes new snapshots. Clones share one channel: the store publishes its entries,
/// membership its members, each replacing only its own part.
#[derive(Clone)]
pub struct Publisher {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Publisher {
    /// Starts with `first` (its index is set to 1; its services resolved from its parts).
    pub fn new(mut first: Snapshot) -> Publisher {
        first.index = 1;
        first.members_index = 1;
        first.resolve();
        Publisher { tx: Arc::new(watch::Sender::new(Arc::new(first))) }
    }

    pub fn subscribe(&self) -> SnapshotRx {
        self.tx.subscribe()
    }

    /// What the store calls with each new view: publishes it, under the writer's lock,
    /// so a write is in the snapshot before it is acknowledged.
    pub fn store_sink(&self) -> impl Fn(Arc<View>) + Send + Sync + 'static {
        let publisher = self.clone();
        move |view| publisher.publish_view(&view)
    }

    /// Publishes a new store view: its typed parts, decoded from what changed.
    pub fn publish_view(&self, view: &View) {
        self.publish(Some(view), |_| {});
    }

    /// The snapshot most recently published.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Publishes a changed copy of the current snapshot, with the next index.
    pub fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        self.publish(None, change);
    }

    fn publish(&self, view: Option<&View>, change: impl FnOnce(&mut Snapshot)) {
        self.tx.send_modify(|current| {
            let mut next = Snapshot::clone(current);
            change(&mut next);
            next.index = current.index + 1;
            let store_changed = view.is_some();
            if let Some(view) = view {
                next.parts = Arc::new(model::StoreParts::decode_after(view, &current.parts));
            }
            next.apply_removals();
            let members_changed = !same_members(&next.members, &current.members);
            if members_changed {
                next.members_index = next.index;
            }
            let declared_changed = match (&next.declared, &current.declared) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                (None, None) => false,
                _ => true,
            };
            if store_changed || members_changed || declared_changed {
                let same = !members_changed && !declared_changed;
                let records = next.visible_records();
                next.services = Arc::new(model::resolve(&records, &next.members, &current.services, same));
            }
            *current = Arc::new(next);
        });
    }
}

impl Snapshot {
    /// A snapshot of node `node` knowing nothing yet.
    pub fn empty(node: &str) -> Snapshot {
        Snapshot::new(node, Vec::new())
    }

    /// A snapshot of node `node` knowing `members` and an empty store.
    pub fn new(node: &str, members: Vec<Member>) -> Snapshot {
        Snapshot {
            index: 0,
            members_index: 0,
            node: node.to_owned(),
            members,
            parts: Arc::default(),
            services: Arc::default(),
            declared: None,
        }
    }

    /// Whether `node` is a member that may carry traffic (alive or suspect, not removed).
    pub fn is_serving(&self, node: &str) -> bool {
        self.members.iter().any(|m| m.name == node && m.is_serving())
    }

    /// Derives the typed parts from a store view and the members, from scratch (a publish
    /// derives only what changed).
    pub fn derive(&mut self, view: &View) {
        self.parts = Arc::new(model::StoreParts::decode(view));
        self.resolve();
    }

    /// Resolves the services from the parts and the members, from scratch.
    fn resolve(&mut self) {
        self.apply_removals();
        let records = self.visible_records();
        self.services = Arc::new(model::resolve(&records, &self.members, &BTreeMap::new(), false));
    }

    /// The instance records that count: all of them, less those in this node's name that
    /// it did not declare (see `declared`) and those of a claimed service name from a
    /// node the claim does not allow.
    fn visible_records(&self) -> std::borrow::Cow<'_, [Arc<model::InstanceRecord>]> {
        let forged = |r: &model::InstanceRecord| {
            let not_declared =
                r.node == self.node && self.declared.as_ref().is_some_and(|d| d.get(&r.spec.name) != Some(&r.spec));
            let not_allowed = self.parts.claims.get(&r.spec.name).is_some_and(|c| !c.allows(&r.node));
            not_declared || not_allowed
        };
        if self.parts.records.iter().any(|r| forged(r)) {
            std::borrow::Cow::Owned(self.parts.records.iter().filter(|r| !forged(r)).cloned().collect())
        } else {
            std::borrow::Cow::Borrowed(&self.parts.records)
        }
    }

    /// Live routes by name.
    pub fn routes(&self) -> &BTreeMap<String, Arc<model::Route>> {
        &self.parts.routes
    }

    /// Live authorization policies by service.
    pub fn policies(&self) -> &BTreeMap<String, Arc<model::Policy>> {
        &self.parts.policies
    }

    /// Whether `node` was removed from the mesh (its current key is revoked).
    pub fn is_removed(&self, node: &str) -> bool {
        self.parts.removed.contains(node)
    }

    /// Removed nodes are `Left`, whatever gossip still says of them.
    fn apply_removals(&mut self) {
        if self.parts.removed.is_empty() {
            return;
        }
        for m in &mut self.members {
            if m.name != self.node && self.parts.removed.contains(&m.name) {
                m.state = MemberState::Left;
            }
        }
    }
}

/// Whether two member lists agree on every name, address and state.
fn same_members(a: &[Member], b: &[Member]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.name == y.name && x.addr == y.addr && x.state == y.state)
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
