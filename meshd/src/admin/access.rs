//! Who may change the mesh through the admin socket. Reading (GET, and any dry run) is
//! for whoever can open the socket (mode 0660, group `meshd`); a request that changes
//! something (a token, a removal, a route, a service) needs root, the user meshd runs as,
//! or membership of group `meshd-admin`, judged by the connecting process's credentials
//! as the kernel reports them (SO_PEERCRED), never by anything the client says.
//!
//! Must not: trust a header, a token or a claim of the client for the decision; grant a
//! change to a connection whose credentials could not be read.

use axum::extract::connect_info::ConnectInfo;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Error;

/// The group whose members may change the mesh, besides root and meshd's own user.
pub const ADMIN_GROUP: &str = "meshd-admin";

/// The process at the other end of an admin socket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Caller {
    /// Credentials that could not be read: may read, never change.
    const UNKNOWN: Caller = Caller { uid: u32::MAX, gid: u32::MAX, pid: None };

    /// The credentials of the process at the other end of `stream`, as the kernel
    /// reports them.
    pub fn of(stream: &tokio::net::UnixStream) -> Caller {
        match stream.peer_cred() {
            Ok(c) => Caller { uid: c.uid(), gid: c.gid(), pid: c.pid() },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an admin client's credentials: it may only read");
                Caller::UNKNOWN
            }
        }
    }
}

/// Whether `caller` may change the mesh: root, meshd's own user (`meshd dev`, an operator
/// who started meshd by hand), or a member of `admin_gid` (primary or supplementary).
pub fn may_change(caller: &Caller, own_uid: u32, admin_gid: Option<u32>) -> bool {
    if *caller == Caller::UNKNOWN {
        return false;
    }
    caller.uid == 0
        || caller.uid == own_uid
        || admin_gid.is_some_and(|g| caller.gid == g || caller.pid.is_some_and(|pid| groups_of(pid).contains(&g)))
}

/// A process's supplementary groups, from `/proc/PID/status` (empty when unreadable).
fn groups_of(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return Vec::new() };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether a request only reads: GET, HEAD, or a dry run.
fn reads_only(req: &Request) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        || req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "dry_run=true"))
}

/// The middleware: lets reads through, and changes from callers that may make them. A
/// request with no connection credentials comes from inside the process (the tests'
/// in-process router): the socket server always attaches them.
pub async fn guard(req: Request, next: Next) -> Response {
    if reads_only(&req) {
        return next.run(req).await;
    }
    let Some(ConnectInfo(caller)) = req.extensions().get::<ConnectInfo<Caller>>().copied() else {
        return next.run(req).await;
    };
    let own_uid = nix::unistd::geteuid().as_raw();
    let admin_gid = nix::unistd::Group::from_name(ADMIN_GROUP).ok().flatten().map(|g| g.gid.as_raw());
    if may_change(&caller, own_uid, admin_gid) {
        return next.run(req).await;
    }
    tracing::warn!(uid = caller.uid, pid = ?caller.pid, method = %req.method(), path = %req.uri().path(), "refused a change from an admin client without the right");
    let detail = format!(
        "changing the mesh needs root, meshd's own user (uid {own_uid}) or group {ADMIN_GROUP}; uid {} is none of them (reading needs only group meshd)",
        caller.uid
    );
    Error::new(StatusCode::FORBIDDEN, detail).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_meshds_own_user_and_the_admin_group_may_change_others_may_not() {
        let someone = Caller { uid: 1001, gid: 1001, pid: None };
        assert!(may_change(&Caller { uid: 0, ..someone }, 999, None), "root");
        assert!(may_change(&Caller { uid: 999, ..someone }, 999, None), "meshd's own user");
        assert!(!may_change(&someone, 999, None), "another user, no admin group on this host");
        assert!(!may_change(&someone, 999, Some(1500)), "not in the admin group");
        assert!(may_change(&Caller { gid: 1500, ..someone }, 999, Some(1500)), "the admin group as primary group");
        assert!(!may_change(&Caller::UNKNOWN, u32::MAX, Some(u32::MAX)), "unreadable credentials never change");
    }

    #[test]
    fn supplementary_groups_are_read_as_the_kernel_has_them() {
        // (That a supplementary group grants the change is tested with setpriv --groups in
        // tests/tests/admin.rs; here, that /proc is read right, whatever groups we have.)
        let mut parsed = groups_of(std::process::id() as i32);
        let mut kernel: Vec<u32> =
            nix::unistd::getgroups().expect("getgroups").into_iter().map(|g| g.as_raw()).collect();
        parsed.sort_unstable();
        kernel.sort_unstable();
        kernel.dedup();
        assert_eq!(parsed, kernel);
        assert!(groups_of(-1).is_empty(), "no such process: no groups");
    }
}
