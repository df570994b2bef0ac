//! The whole mesh's traffic, pulled on view: the node asked collects every live
//! member's summary over `mesh/1` (each answers from its own half-minute window) and
//! merges them, for `/v1/traffic` (`meshctl top`), the dashboard's graph, and the
//! Prometheus service-discovery list of every node's `admin.http`. Nothing is gossiped;
//! nothing is asked while nobody looks.
//!
//! Must not: wait on a member longer than [`ASK_TIMEOUT`], or ask a member known dead.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use mesh_proto::api::MemberState;
use mesh_proto::traffic::{MeshTraffic, PathStats, Summary};
use serde::Serialize;

use super::AdminState;

/// How long a member has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Every live member's summary (this node's own included), and the members that did not
/// answer in time.
async fn gather(state: &AdminState) -> (Vec<Summary>, Vec<String>) {
    let snap = state.snapshot.borrow().clone();
    let mut summaries = vec![state.telemetry.summary()];
    let mut asks = tokio::task::JoinSet::new();
    for m in snap.members.iter().filter(|m| m.name != snap.node) {
        if matches!(m.state, MemberState::Dead | MemberState::Left) {
            continue;
        }
        let (transport, name, addr) = (state.transport.clone(), m.name.clone(), m.addr);
        asks.spawn(async move {
            let answer = tokio::time::timeout(ASK_TIMEOUT, crate::peer::client::traffic(&transport, addr)).await;
            (name, answer.ok().and_then(Result::ok))
        });
    }
    let mut missing = Vec::new();
    while let Some(joined) = asks.join_next().await {
        match joined {
            // A summary counts under the name the connection proved, not the one it claims.
            Ok((name, Some(s))) => {
                let mut s = s.bounded();
                s.node = name;
                summaries.push(s);
            }
            Ok((name, None)) => missing.push(name),
            Err(_) => {}
        }
    }
    missing.sort();
    (summaries, missing)
}

/// `GET /v1/traffic`: calls between services over the last half minute, across the mesh.
pub async fn traffic(State(state): State<Arc<AdminState>>) -> Json<MeshTraffic> {
    let (summaries, missing) = gather(&state).await;
    let mut merged = MeshTraffic::merge(&summaries, missing);
    // An edge whose destination has an instance on a node that is down is drawn red.
    let snap = state.snapshot.borrow().clone();
    let down: Vec<&str> = snap
        .members
        .iter()
        .filter(|m| matches!(m.state, MemberState::Dead | MemberState::Suspect))
        .map(|m| m.name.as_str())
        .collect();
    for e in &mut merged.edges {
        e.destination_down = snap
            .services
            .get(&e.destination)
            .is_some_and(|s| s.instances.iter().any(|i| down.contains(&i.node.as_str())));
    }
    Json(merged)
}

/// `GET /v1/traffic/paths/{service}`: the service's paths, worst error rate first.
pub async fn paths(State(state): State<Arc<AdminState>>, Path(service): Path<String>) -> Json<Vec<PathStats>> {
    let (summaries, _) = gather(&state).await;
    Json(mesh_proto::traffic::top_paths(&summaries, &service))
}

/// One entry of Prometheus's HTTP service discovery.
#[derive(Debug, Serialize)]
pub struct SdTarget {
    targets: Vec<String>,
    labels: std::collections::BTreeMap<String, String>,
}

/// `GET /ui/sd`: every live node's `admin.http` address (those that set one), in
/// Prometheus's `http_sd_configs` format, labelled with the node's name.
pub async fn sd(State(state): State<Arc<AdminState>>) -> Json<Vec<SdTarget>> {
    let (summaries, _) = gather(&state).await;
    let mut targets: Vec<SdTarget> = summaries
        .into_iter()
        .filter_map(|s| {
            let addr = s.admin_http?;
            let labels = [("node".to_owned(), s.node)].into_iter().collect();
            Some(SdTarget { targets: vec![addr], labels })
        })
        .collect();
    targets.sort_by(|a, b| a.labels.get("node").cmp(&b.labels.get("node")));
    Json(targets)
}
