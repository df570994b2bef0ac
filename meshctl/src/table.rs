//! Readable tables for people; `-o json` prints the API body instead.

use std::time::SystemTime;

use mesh_proto::api::{Connection, Member, Status};

/// Left-aligned columns separated by two spaces, with a header row.
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

pub fn status(s: &Status) -> String {
    let members = s
        .members
        .as_ref()
        .map(|m| format!("{} alive, {} suspect, {} dead, {} left", m.alive, m.suspect, m.dead, m.left));
    let store = s.store.as_ref().map(|st| {
        let noun = if st.entries == 1 { "entry" } else { "entries" };
        let health = if st.health.is_empty() || st.health == "ok" { String::new() } else { format!(", {}", st.health) };
        format!("{} {noun}, {} bytes{health}", st.entries, st.bytes)
    });
    let signer = s.signer.map(|b| if b { "yes" } else { "no" });
    let rows = [
        ("node", s.node.clone()),
        ("version", s.version.clone()),
        ("identity", or_dash(s.identity.as_ref())),
        ("cert expires", or_dash(s.cert_expires.as_ref())),
        ("ca fingerprint", or_dash(s.ca_fingerprint.as_ref())),
        ("signer", or_dash(signer)),
        ("role", or_dash(s.role.map(|r| r.as_str().to_owned()))),
        ("store", or_dash(store)),
        ("members", or_dash(members)),
        ("services", or_dash(s.services)),
        ("routes", or_dash(s.routes)),
    ];
    let mut rows = rows.to_vec();
    if let Some(st) = s.store.as_ref().filter(|st| st.health.starts_with("read-only")) {
        rows.push(("WARNING", format!("the store is {}: writes are refused", st.health)));
    }
    for w in [&s.cert_warning, &s.membership_warning, &s.clock_warning, &s.vip_warning].into_iter().flatten() {
        rows.push(("WARNING", w.clone()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
}

pub fn members(members: &[Member], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let role = m.role.map_or("-", |r| r.as_str()).to_owned();
            let clock = m.clock_offset_ms.map_or_else(|| "-".to_owned(), |ms| format!("{:+.1}s", ms as f64 / 1000.0));
            vec![m.name.clone(), m.addr.clone(), m.state.as_str().to_owned(), role, clock, ago(&m.last_heard, now)]
        })
        .collect();
    columns(&["NAME", "ADDRESS", "STATE", "ROLE", "CLOCK", "LAST HEARD"], &rows)
}

pub fn services(services: &[mesh_proto::api::Service]) -> String {
    let mut rows = Vec::new();
    for s in services {
        let vip = s.vip.clone().unwrap_or_else(|| "-".to_owned());
        for (k, i) in s.instances.iter().enumerate() {
            let labels: Vec<String> = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            rows.push(vec![
                if k == 0 { s.name.clone() } else { String::new() },
                if k == 0 { vip.clone() } else { String::new() },
                i.node.clone(),
                format!("{}:{}", i.addr, i.port),
                i.protocol.clone(),
                if i.healthy { "healthy" } else { "unhealthy" }.to_owned(),
                labels.join(","),
            ]);
        }
    }
    columns(&["SERVICE", "VIP", "NODE", "ADDRESS", "PROTOCOL", "HEALTH", "LABELS"], &rows)
}

/// `meshctl top`: one row per edge, busiest first.
pub fn top(t: &mesh_proto::traffic::MeshTraffic) -> String {
    let mut edges: Vec<&mesh_proto::traffic::EdgeView> = t.edges.iter().collect();
    edges.sort_by(|a, b| {
        b.rps.total_cmp(&a.rps).then_with(|| (&a.source, &a.destination).cmp(&(&b.source, &b.destination)))
    });
    let ms = |v: Option<f64>| match v {
        None => "-".to_owned(),
        Some(v) if v.is_infinite() => ">60s".to_owned(),
        Some(v) => format!("{v}ms"),
    };
    let rows: Vec<Vec<String>> = edges
        .iter()
        .map(|e| {
            let source = if e.source_is_node { format!("{} (node)", e.source) } else { e.source.clone() };
            vec![
                source,
                e.destination.clone(),
                e.protocol.clone(),
                format!("{:.1}", e.rps),
                e.success_rate.map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0)),
                ms(e.p50_ms),
                ms(e.p99_ms),
                if e.destination_down { "destination node down".to_owned() } else { String::new() },
            ]
        })
        .collect();
    // The note column only when some edge has a note.
    let noted = edges.iter().any(|e| e.destination_down);
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|mut r| {
            if noted {
                r
            } else {
                r.truncate(7);
                r
            }
        })
        .collect();
    let mut out = format!(
        "calls over the last {:.0}s, from {}{}\n\n",
        t.window_secs,
        t.answered.join(", "),
        if t.missing.is_empty() { String::new() } else { format!(" (no answer from {})", t.missing.join(", ")) }
    );
    if rows.is_empty() {
        out.push_str("no calls\n");
        return out;
    }
    let headers = ["SOURCE", "DESTINATION", "PROTO", "RPS", "SUCCESS", "P50", "P99", "NOTE"];
    out.push_str(&columns(&headers[..if noted { 8 } else { 7 }], &rows));
    out
}

pub fn connections(conns: &[Connection], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            vec![
                c.node.clone(),
                c.addr.clone(),
                c.direction.clone(),
                ago(&c.since, now).replace(" ago", ""),
                format!("{:.2} ms", c.rtt_ms),
            ]
        })
        .collect();
    columns(&["NODE", "ADDRESS", "DIRECTION", "AGE", "RTT"], &rows)
}

/// "3s ago" for an RFC 3339 time; the time itself if it cannot be read.
fn ago(rfc3339: &str, now: SystemTime) -> String {
    match humantime::parse_rfc3339(rfc3339) {
        Ok(t) => {
            let secs = now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
            if secs == 0 {
                "just now".to_owned()
            } else {
                format!("{} ago", humantime::format_duration(std::time::Duration::from_secs(secs)))
            }
        }
        Err(_) => rfc3339.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::api::MemberState;

    #[test]
    fn members_table_aligns_and_says_how_long_ago() {
        let now = humantime::parse_rfc3339("2026-01-01T00:01:05Z").expect("time");
        let table = members(
            &[
                Member {
                    name: "vm-1".into(),
                    addr: "198.18.0.1:7946".into(),
                    state: MemberState::Alive,
                    last_heard: "2026-01-01T00:01:05Z".into(),
                    role: Some(mesh_proto::role::Role::Signer),
                    clock_offset_ms: None,
                },
                Member {
                    name: "database-7".into(),
                    addr: "198.18.0.20:7946".into(),
                    state: MemberState::Suspect,
                    last_heard: "2026-01-01T00:00:00Z".into(),
                    role: None,
                    clock_offset_ms: Some(-612_345),
                },
            ],
            now,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "NAME        ADDRESS           STATE    ROLE    CLOCK    LAST HEARD");
        assert_eq!(lines[1], "vm-1        198.18.0.1:7946   alive    signer  -        just now");
        assert_eq!(lines[2], "database-7  198.18.0.20:7946  suspect  -       -612.3s  1m 5s ago");
    }
}
