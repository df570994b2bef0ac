//! JSON bodies of meshd's admin API (`/v1/...` on the Unix socket). meshctl prints them
//! unchanged with `-o json`, so scripts depend on these names: extend, never rename.
//! Fields whose feature has not landed yet are present and `null`.

use serde::{Deserialize, Serialize};

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This node's name.
    pub node: String,
    /// meshd's version.
    pub version: String,
    /// This node's SPIFFE ID (`spiffe://mesh.local/node/vm-1`), null without a cert.
    pub identity: Option<String>,
    /// When this node's cert expires (RFC 3339), null without a cert.
    pub cert_expires: Option<String>,
    /// `sha256:` and the hex SHA-256 of the mesh CA certificate, null without one.
    pub ca_fingerprint: Option<String>,
    /// Whether this node can sign certificates and issue join tokens; null until known.
    pub signer: Option<bool>,
    /// This node's role, as its certificate says; null until known.
    #[serde(default)]
    pub role: Option<crate::role::Role>,
    /// Set while a serving member's clock is more than 5 s from this node's.
    #[serde(default)]
    pub clock_warning: Option<String>,
    /// Set while certificate renewal is failing: what fails and how long is left.
    #[serde(default)]
    pub cert_warning: Option<String>,
    /// Set while this node knows no other member although it has join seeds: it serves
    /// alone (its seeds are unreachable, or every member left).
    #[serde(default)]
    pub membership_warning: Option<String>,
    /// Set while `proxy.vip_range` is full and names wait for a virtual IP.
    #[serde(default)]
    pub vip_warning: Option<String>,
    /// The replicated store's size; null until the store is open.
    pub store: Option<StoreStatus>,
    /// Members by state, this node included.
    pub members: Option<MemberCounts>,
    /// Number of services known in the mesh; null until the catalog runs.
    pub services: Option<u64>,
    /// Number of routes; null until routing runs.
    pub routes: Option<u64>,
    /// The serving meshd process's ID (it changes at `meshd upgrade`).
    #[serde(default)]
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub entries: u64,
    pub bytes: u64,
    /// A digest of every write held: two nodes with the same digest hold the same map.
    #[serde(default)]
    pub digest: String,
    /// `ok`, or `read-only: REASON (since TIME)` after a write failed (disk full, an I/O
    /// error, the data_dir gone): writes are refused until the store can write again,
    /// which it notices by itself.
    #[serde(default)]
    pub health: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCounts {
    pub alive: u64,
    pub suspect: u64,
    pub dead: u64,
    pub left: u64,
}

/// One entry of `GET /v1/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// The address peers dial (`advertise`).
    pub addr: String,
    pub state: MemberState,
    /// When this node last heard from the member (RFC 3339, UTC).
    pub last_heard: String,
    /// Its role, as the certificate record its signer wrote says; null when unknown.
    #[serde(default)]
    pub role: Option<crate::role::Role>,
    /// How far its clock is from this node's, in ms (positive: ahead), as last measured;
    /// null for this node and before the first measurement.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
    /// Left on purpose, or removed with `meshctl node remove`.
    Left,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

/// One entry of `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// This host's virtual IP for the service; null until virtual IPs are allocated.
    pub vip: Option<String>,
    pub instances: Vec<Instance>,
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub node: String,
    pub addr: String,
    pub port: u16,
    pub protocol: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its own node's checks pass and that node is alive.
    pub healthy: bool,
}

/// One entry of `GET /v1/connections`: a live `mesh/1` connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// The peer's node name, from its verified certificate.
    pub node: String,
    /// The peer's SPIFFE ID.
    pub identity: String,
    pub addr: String,
    /// `outbound` (this node dialled) or `inbound`.
    pub direction: String,
    /// When it was established (RFC 3339).
    pub since: String,
    /// A number that stays the same for the connection's life.
    pub id: u64,
    pub rtt_ms: f64,
    /// The largest UDP payload the path carries, as MTU discovery found it.
    #[serde(default)]
    pub mtu: u16,
    /// UDP datagrams sent, and the system calls that sent them: their ratio is the
    /// average GSO batch.
    #[serde(default)]
    pub udp_datagrams_sent: u64,
    #[serde(default)]
    pub udp_sends: u64,
    #[serde(default)]
    pub udp_datagrams_received: u64,
    /// Packets QUIC declared lost, and the congestion events they caused.
    #[serde(default)]
    pub lost_packets: u64,
    #[serde(default)]
    pub congestion_events: u64,
    /// The congestion window, bytes.
    #[serde(default)]
    pub cwnd: u64,
}

/// `GET /v1/routes/NAME/catchup?revision=N`: who holds at least revision N of the route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catchup {
    pub key: String,
    pub revision: u64,
    /// The revision waited for, `REVISION@ORIGIN`; members holding it or a revision
    /// that supersedes it count as holding.
    #[serde(default)]
    pub id: String,
    /// Alive members holding revision N or later (this node included).
    pub holding: Vec<String>,
    /// Alive members holding an older revision, or none.
    pub lagging: Vec<String>,
    /// Alive members that did not answer.
    pub unreachable: Vec<String>,
    /// Members neither left nor removed that gossip holds dead: not asked, so not
    /// confirmed (they may hold it, or come back without it and catch up).
    #[serde(default)]
    pub unconfirmed: Vec<String>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// How long the token is valid, 1s to 7d. Default: 1h.
    #[serde(default)]
    pub ttl: Option<String>,
    /// The joining node also becomes a signer (it receives the CA key): the same as
    /// `role: signer`.
    #[serde(default)]
    pub signer: bool,
    /// The joining node's role. Default: member (signer with `signer: true`).
    #[serde(default)]
    pub role: Option<crate::role::Role>,
    /// Only a node of this name may redeem it.
    #[serde(default)]
    pub node: Option<String>,
}

/// The answer to `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    pub id: String,
    pub expires: String,
    pub signer: bool,
    /// The role the joining node gets.
    #[serde(default = "member")]
    pub role: crate::role::Role,
}

fn member() -> crate::role::Role {
    crate::role::Role::Member
}

/// The answer to `POST /v1/ca/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotated {
    /// The new root's fingerprint (`sha256:` and hex): new join tokens pin it.
    pub root: String,
    /// The old root's fingerprint.
    pub previous: String,
    /// When the old root stops being trusted for connections (RFC 3339): once the last
    /// certificate it issued has expired.
    pub retires_at: String,
    /// The members that held the new root before it became active (this node included).
    pub members: Vec<String>,
}

/// The answer to `DELETE /v1/nodes/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRemoved {
    pub node: String,
    /// The revoked certificate's serial.
    pub serial: String,
    /// SHA-256 of the revoked key.
    pub key: String,
}

/// Every error response: a short machine-readable `error` and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A stable code: `not_found`, `bad_request`, `unavailable`, `internal`.
    pub error: String,
    pub detail: String,
}

/// The response header that carries the state index for blocking queries
/// (`?index=N&wait=30s`, as Consul's): the request returns once the index passes N.
pub const INDEX_HEADER: &str = "x-mesh-index";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_state_is_lowercase_json() {
        let json = serde_json::to_string(&MemberState::Suspect).expect("serialize");
        assert_eq!(json, "\"suspect\"");
    }
}

/// `GET /v1/routes/NAME` (and each item of `GET /v1/routes`): a route's current revision.
pub type Route = Document<crate::route::RouteSpec>;
/// `GET /v1/policies/NAME` (and each item of `GET /v1/policies`): a policy's current
/// revision.
pub type Policy = Document<crate::policy::PolicySpec>;
/// One revision of a route's or policy's history.
pub type Revision = RouteRevision;

/// A route's or a policy's revision, as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document<S> {
    pub name: String,
    pub service: String,
    pub revision: u64,
    /// When the revision was applied (RFC 3339), by `origin`'s clock.
    pub applied_at: String,
    /// The node where it was applied.
    pub origin: String,
    /// That node has been removed from the mesh since: the revision still applies (it
    /// was written before the removal), but review it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub origin_removed: bool,
    pub spec: S,
    /// This revision restores revision N's content (`meshctl route rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// The revision's name, `REVISION@ORIGIN` (`3@node-1`): unique where `revision`
    /// alone may not be (two sides of a partition both wrote a revision 3).
    #[serde(default)]
    pub id: String,
    /// The name of the revision `rollback_of` restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of_id: Option<String>,
    /// Answering an apply or rollback: the content was already current, nothing was
    /// stored, and `revision` is still the current one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// Answering an apply or rollback: why it may not work as written (for a route,
    /// `meshctl route lint` lists the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One item of `GET /v1/lint`: a route and its problems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteLint {
    pub route: String,
    pub service: String,
    pub problems: Vec<String>,
}

/// One item of `GET /v1/routes/NAME/history`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRevision {
    pub revision: u64,
    pub applied_at: String,
    pub origin: String,
    /// `origin` has been removed from the mesh since.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub origin_removed: bool,
    /// The route was deleted at this revision.
    #[serde(default)]
    pub deleted: bool,
    /// This revision restored revision N's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// `REVISION@ORIGIN`, as [`Route::id`].
    #[serde(default)]
    pub id: String,
    /// The name of the revision `rollback_of` restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of_id: Option<String>,
    /// This revision lost to a concurrent write (both sides of a partition wrote): the
    /// revision that won over it, which was written without seeing it. Its content is
    /// kept, and a rollback to it restores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
}

/// `GET /v1/policy-check`: what a service's policy decides for a caller and request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCheck {
    pub allow: bool,
    /// One line: `allow` or `deny`, then the policy and rule that decided (or the
    /// default).
    pub line: String,
    /// `allow[0]`, `deny[2]`, `default` or `mesh default`.
    pub rule: String,
    /// The caller as policies see it: its service, or `node:NAME`.
    pub caller: String,
    /// The rate limits that would count the caller's requests.
    #[serde(default)]
    pub rate_limits: Vec<String>,
}

/// `POST /v1/routes/NAME/rollback`: the revision whose content becomes the newest one;
/// default: the one before the current.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    #[serde(default)]
    pub to: Option<RevisionRef>,
}

/// A revision named by a user: its number (`3`, enough while one revision has it) or its
/// number and writer (`3@node-1`). In JSON a bare number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RevisionRef {
    pub number: u64,
    pub origin: Option<String>,
}

impl RevisionRef {
    /// The full name of revision `number` written by `origin`.
    pub fn id(number: u64, origin: &str) -> String {
        format!("{number}@{origin}")
    }

    /// Whether this names revision `number` by `origin`.
    pub fn names(&self, number: u64, origin: &str) -> bool {
        self.number == number && self.origin.as_deref().is_none_or(|o| o == origin)
    }
}

impl std::fmt::Display for RevisionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.origin {
            Some(o) => write!(f, "{}@{o}", self.number),
            None => write!(f, "{}", self.number),
        }
    }
}

impl std::str::FromStr for RevisionRef {
    type Err = String;

    fn from_str(s: &str) -> Result<RevisionRef, String> {
        let bad = || format!("{s:?} is not a revision: give its number (3) or number@node (3@node-1)");
        let (number, origin) = match s.split_once('@') {
            Some((n, o)) if crate::is_dns_label(o) => (n, Some(o.to_owned())),
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        let number = number.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(bad)?;
        Ok(RevisionRef { number, origin })
    }
}

impl Serialize for RevisionRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.origin {
            None => s.serialize_u64(self.number),
            Some(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for RevisionRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RevisionRef, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RevisionRef;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a revision number (3) or number@node (\"3@node-1\")")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RevisionRef, E> {
                if n == 0 {
                    return Err(E::custom("revisions count from 1"));
                }
                Ok(RevisionRef { number: n, origin: None })
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RevisionRef, E> {
                u64::try_from(n).map_err(|_| E::custom("revisions count from 1")).and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RevisionRef, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `PUT /v1/claims/NAME` (body) and each item of `GET /v1/claims`: which nodes may
/// register a service name. Unclaimed names are open to every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceClaim {
    pub name: String,
    /// Node name globs (`*` any run of characters, `?` one); at least one.
    pub nodes: Vec<String>,
}

/// Whether `name` matches `glob` (`*` any run of characters, `?` any one). Linear-time
/// matching with one backtrack point (no recursion), so that no glob, however many stars
/// it has, costs more than `glob.len() * name.len()` steps: claims arrive from peers.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let (g, n) = (glob.as_bytes(), name.as_bytes());
    let (mut gi, mut ni) = (0, 0);
    // After the last star seen: where in the glob, and where in the name it resumes.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if gi < g.len() && (g[gi] == b'?' || g[gi] == n[ni]) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == b'*' {
            star = Some((gi, ni));
            gi += 1;
        } else if let Some((sg, sn)) = star {
            // The star takes one more character of the name.
            gi = sg + 1;
            ni = sn + 1;
            star = Some((sg, sn + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod glob_tests {
    use super::glob_matches;

    #[test]
    fn globs_match_node_names() {
        assert!(glob_matches("node-2", "node-2") && !glob_matches("node-2", "node-20"));
        assert!(glob_matches("web-*", "web-1") && glob_matches("web-*", "web-") && !glob_matches("web-*", "db-1"));
        assert!(glob_matches("*", "anything") && glob_matches("db-?", "db-7") && !glob_matches("db-?", "db-10"));
        assert!(glob_matches("*-eu-*", "web-eu-1") && !glob_matches("*-eu-*", "web-us-1"));
        assert!(glob_matches("a*b*c", "axxbyyc") && !glob_matches("a*b*c", "axxbyy") && glob_matches("**", ""));
        // A glob built to make a backtracking matcher explode answers at once.
        let evil = "*a".repeat(30) + "b";
        assert!(!glob_matches(&evil, &"a".repeat(63)));
    }
}
