//! `meshctl route ...`: apply (with a diff, a dry run, and waiting until every member
//! holds the new revision), list, get, delete, history, rollback.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Subcommand;
use hyper::{Method, StatusCode};
use mesh_proto::api::{Catchup, RollbackRequest, Route, RouteRevision};
use mesh_proto::route::RouteSpec;
use meshctl::{table, Client, ClientError};

#[derive(Subcommand)]
pub enum RouteCommand {
    /// Validate a route file and store it as the route's new revision; prints what changed.
    Apply {
        #[arg(short, long)]
        file: PathBuf,
        /// Validate and print the diff against the current revision; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Return once every alive member holds the new revision (at most --timeout);
        /// exit 1 naming the members that lag.
        #[arg(long)]
        wait: bool,
    },
    /// Every route.
    List,
    /// One route, as TOML (or the API's JSON with -o json).
    Get {
        name: String,
        /// An earlier revision from the route's history.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Delete a route (its history stays).
    Delete { name: String },
    /// The revisions of a route, oldest first.
    History { name: String },
    /// A new revision with an earlier revision's content.
    Rollback {
        name: String,
        /// The revision to restore. Default: the one before the current.
        #[arg(long)]
        to: Option<u64>,
    },
}

fn decode(e: serde_json::Error) -> ClientError {
    ClientError::Decode(e.to_string())
}

/// Runs a route command; `json` prints the API's bodies unchanged.
pub async fn run(
    client: &Client,
    command: &RouteCommand,
    json: bool,
    timeout: Duration,
) -> Result<String, ClientError> {
    match command {
        RouteCommand::Apply { file, dry_run, wait } => apply(client, file, *dry_run, *wait, json, timeout).await,
        RouteCommand::List => {
            let r = client.request(Method::GET, "/v1/routes", None).await?;
            if json {
                return Ok(body_text(&r.body));
            }
            let routes: Vec<Route> = serde_json::from_slice(&r.body).map_err(decode)?;
            let rows: Vec<Vec<String>> = routes
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.service.clone(),
                        r.revision.to_string(),
                        r.applied_at.clone(),
                        r.origin.clone(),
                    ]
                })
                .collect();
            Ok(table::columns(&["NAME", "SERVICE", "REVISION", "APPLIED", "ORIGIN"], &rows))
        }
        RouteCommand::Get { name, revision } => {
            let path = match revision {
                Some(n) => format!("/v1/routes/{name}?revision={n}"),
                None => format!("/v1/routes/{name}"),
            };
            let r = client.request(Method::GET, &path, None).await?;
            if json {
                return Ok(body_text(&r.body));
            }
            let route: Route = serde_json::from_slice(&r.body).map_err(decode)?;
            Ok(format!(
                "# route {} revision {}, applied {} on {}\n{}",
                route.name,
                route.revision,
                route.applied_at,
                route.origin,
                route.spec.to_toml()
            ))
        }
        RouteCommand::Delete { name } => {
            let r = client.request(Method::DELETE, &format!("/v1/routes/{name}"), None).await?;
            Ok(if json { body_text(&r.body) } else { format!("deleted route {name}\n") })
        }
        RouteCommand::History { name } => {
            let r = client.request(Method::GET, &format!("/v1/routes/{name}/history"), None).await?;
            if json {
                return Ok(body_text(&r.body));
            }
            let revs: Vec<RouteRevision> = serde_json::from_slice(&r.body).map_err(decode)?;
            let rows: Vec<Vec<String>> = revs
                .iter()
                .map(|r| {
                    let what = if r.deleted { "deleted" } else { "applied" };
                    vec![r.revision.to_string(), r.applied_at.clone(), r.origin.clone(), what.to_owned()]
                })
                .collect();
            Ok(table::columns(&["REVISION", "TIME", "ORIGIN", "CHANGE"], &rows))
        }
        RouteCommand::Rollback { name, to } => {
            let body = serde_json::to_vec(&RollbackRequest { to: *to }).map_err(decode)?;
            let r = client.request(Method::POST, &format!("/v1/routes/{name}/rollback"), Some(body)).await?;
            if json {
                return Ok(body_text(&r.body));
            }
            let route: Route = serde_json::from_slice(&r.body).map_err(decode)?;
            let from = to.map_or("the previous revision".to_owned(), |n| format!("revision {n}"));
            Ok(format!("rolled back route {name} to {from}: now revision {}\n", route.revision))
        }
    }
}

fn body_text(body: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(body).into_owned();
    s.push('\n');
    s
}

async fn apply(
    client: &Client,
    file: &PathBuf,
    dry_run: bool,
    wait: bool,
    json: bool,
    timeout: Duration,
) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(file).map_err(|e| ClientError::Input(format!("{}: {e}", file.display())))?;
    let spec =
        RouteSpec::from_file(&file.display().to_string(), &text).map_err(|e| ClientError::Input(e.to_string()))?;
    let current = match client.request(Method::GET, &format!("/v1/routes/{}", spec.name), None).await {
        Ok(r) => Some(serde_json::from_slice::<Route>(&r.body).map_err(decode)?),
        Err(ClientError::Api { status: StatusCode::NOT_FOUND, .. }) => None,
        Err(e) => return Err(e),
    };
    let before = current.as_ref().map(|r| r.spec.to_toml()).unwrap_or_default();
    let changes = diff(&before, &spec.to_toml());
    let mut out = String::new();
    if dry_run {
        if json {
            let v = serde_json::json!({ "dry_run": true, "current": current, "route": spec, "diff": changes });
            return Ok(format!("{v}\n"));
        }
        match &current {
            Some(c) => {
                out += &format!("route {}: revision {} would become {}\n", spec.name, c.revision, c.revision + 1)
            }
            None => out += &format!("route {}: would be created\n", spec.name),
        }
        out += &render(&changes);
        return Ok(out);
    }
    let body = serde_json::to_vec(&spec).map_err(decode)?;
    let r = client.request(Method::PUT, &format!("/v1/routes/{}", spec.name), Some(body)).await?;
    let applied: Route = serde_json::from_slice(&r.body).map_err(decode)?;
    if json {
        out += &body_text(&r.body);
    } else {
        out += &format!("applied route {} revision {} on {}\n", applied.name, applied.revision, applied.origin);
        out += &render(&changes);
    }
    if wait {
        let started = Instant::now();
        let path = format!("/v1/catchup?key=route/{}&revision={}", applied.name, applied.revision);
        let mut last: Option<Catchup> = None;
        loop {
            let answer = match client.request(Method::GET, &path, None).await {
                Ok(r) => Some(serde_json::from_slice::<Catchup>(&r.body).map_err(decode)?),
                Err(ClientError::Timeout { .. }) => None,
                Err(e) => return Err(e),
            };
            if let Some(c) = answer {
                if c.lagging.is_empty() && c.unreachable.is_empty() {
                    if !json {
                        out += &format!(
                            "every alive member ({}) holds revision {} after {} ms\n",
                            c.holding.len(),
                            applied.revision,
                            started.elapsed().as_millis()
                        );
                    }
                    break;
                }
                last = Some(c);
            }
            if started.elapsed() >= timeout {
                let lag = match &last {
                    Some(c) => {
                        let mut lag = c.lagging.clone();
                        lag.extend(c.unreachable.iter().map(|n| format!("{n} (unreachable)")));
                        lag.join(", ")
                    }
                    None => "unknown (meshd did not answer)".to_owned(),
                };
                print!("{out}");
                return Err(ClientError::Failed(format!(
                    "revision {} of route {} is not everywhere after {}: lagging: {lag}",
                    applied.revision,
                    applied.name,
                    mesh_proto::duration::format(timeout),
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(out)
}

/// A line diff (longest common subsequence; route files are short).
fn diff(before: &str, after: &str) -> Vec<String> {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

fn render(changes: &[String]) -> String {
    if changes.is_empty() {
        return "no change in content\n".to_owned();
    }
    changes.iter().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn diff_marks_removed_and_added_lines() {
        let d = super::diff("a\nb\nc\n", "a\nx\nc\nd\n");
        assert_eq!(d, vec!["- b", "+ x", "+ d"]);
        assert!(super::diff("same\n", "same\n").is_empty());
    }
}
