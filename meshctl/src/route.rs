//! `meshctl route ...`: apply and rollback (with a diff, a dry run, and waiting until
//! every member holds the new revision), list, get, delete, history, lint.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Subcommand;
use hyper::{Method, StatusCode};
use mesh_proto::api::{Catchup, RevisionRef, RollbackRequest, Route, RouteLint, RouteRevision};
use mesh_proto::route::{changes, RouteSpec};
use meshctl::{table, Client, ClientError};

#[derive(Subcommand)]
pub enum RouteCommand {
    /// Validate a route file and store it as the route's new revision; prints what
    /// changed, and warnings about what cannot work (see `route lint`).
    Apply {
        /// The route file (TOML): `service`, `[subsets]`, `[[http]]` or `[[tcp]]` rules.
        #[arg(short, long)]
        file: PathBuf,
        /// Validate and print the diff against the current revision; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Return once every member holds the new revision (at most --timeout); exit 1
        /// naming the members that lag, or that gossip holds dead (unconfirmed).
        #[arg(long)]
        wait: bool,
        /// With --wait: members that gossip holds dead are not waited for (they are
        /// named as unconfirmed, and the command succeeds).
        #[arg(long, requires = "wait")]
        alive_only: bool,
    },
    /// Every route.
    List,
    /// One route, as TOML (or the API's JSON with -o json).
    Get {
        name: String,
        /// An earlier revision from the route's history: its number, or number@node
        /// (`3@node-1`) when two nodes wrote a revision with that number.
        #[arg(long)]
        revision: Option<RevisionRef>,
    },
    /// Delete a route (its history stays).
    Delete { name: String },
    /// The revisions of a route, oldest first.
    History { name: String },
    /// A new revision with an earlier revision's content; prints what changed.
    Rollback {
        name: String,
        /// The revision to restore: its number, or number@node (`3@node-1`, as `route
        /// history` names it). Default: the newest before the current.
        #[arg(long)]
        to: Option<RevisionRef>,
        /// Print the diff the rollback would make; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Return once every member holds the new revision (at most --timeout), as
        /// `apply --wait` does.
        #[arg(long)]
        wait: bool,
        /// With --wait: do not wait for members that gossip holds dead.
        #[arg(long, requires = "wait")]
        alive_only: bool,
    },
    /// Problems that keep routes from working as written: a service with no instance,
    /// subsets that select no instance, rules of the other protocol. Exit 1 when any.
    Lint {
        /// One route; default: every route.
        name: Option<String>,
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
        RouteCommand::Apply { file, dry_run, wait, alive_only } => {
            apply(client, file, *dry_run, Wait::of(*wait, *alive_only), json, timeout).await
        }
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
                        origin(&r.origin, r.origin_removed),
                    ]
                })
                .collect();
            Ok(table::columns(&["NAME", "SERVICE", "REVISION", "APPLIED", "ORIGIN"], &rows))
        }
        RouteCommand::Get { name, revision } => {
            let r = client.request(Method::GET, &route_path(name, revision.as_ref()), None).await?;
            if json {
                return Ok(body_text(&r.body));
            }
            let route: Route = serde_json::from_slice(&r.body).map_err(decode)?;
            Ok(format!(
                "# route {} revision {}, applied {} on {}\n{}",
                route.name,
                route.revision,
                route.applied_at,
                origin(&route.origin, route.origin_removed),
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
                    let restored = r.rollback_of_id.clone().or_else(|| r.rollback_of.map(|n| n.to_string()));
                    let mut what = match (r.deleted, restored) {
                        (true, _) => "deleted".to_owned(),
                        (false, Some(n)) => format!("rollback to {n}"),
                        (false, None) => "applied".to_owned(),
                    };
                    if let Some(w) = &r.superseded_by {
                        what += &format!("; superseded by {w} at heal (written concurrently)");
                    }
                    let id = if r.id.is_empty() { r.revision.to_string() } else { r.id.clone() };
                    vec![id, r.applied_at.clone(), origin(&r.origin, r.origin_removed), what]
                })
                .collect();
            Ok(table::columns(&["REVISION", "TIME", "ORIGIN", "CHANGE"], &rows))
        }
        RouteCommand::Rollback { name, to, dry_run, wait, alive_only } => {
            rollback(client, name, to.clone(), *dry_run, Wait::of(*wait, *alive_only), json, timeout).await
        }
        RouteCommand::Lint { name } => {
            let path = match name {
                Some(n) => format!("/v1/lint?route={n}"),
                None => "/v1/lint".to_owned(),
            };
            let r = client.request(Method::GET, &path, None).await?;
            let lints: Vec<RouteLint> = serde_json::from_slice(&r.body).map_err(decode)?;
            let problems: usize = lints.iter().map(|l| l.problems.len()).sum();
            let mut out = if json { body_text(&r.body) } else { String::new() };
            if !json {
                for l in &lints {
                    for p in &l.problems {
                        out += &format!("route {}: {p}\n", l.route);
                    }
                }
            }
            if problems > 0 {
                print!("{out}");
                return Err(ClientError::Failed(format!(
                    "{problems} problem{} in {} route{}",
                    if problems == 1 { "" } else { "s" },
                    lints.iter().filter(|l| !l.problems.is_empty()).count(),
                    if lints.len() == 1 { "" } else { "s" }
                )));
            }
            if !json {
                out += &format!("no problems in {} route{}\n", lints.len(), if lints.len() == 1 { "" } else { "s" });
            }
            Ok(out)
        }
    }
}

fn route_path(name: &str, revision: Option<&RevisionRef>) -> String {
    match revision {
        Some(n) => format!("/v1/routes/{name}?revision={n}"),
        None => format!("/v1/routes/{name}"),
    }
}

/// The current revision of route `name`, if there is one.
async fn current(client: &Client, name: &str) -> Result<Option<Route>, ClientError> {
    match client.request(Method::GET, &route_path(name, None), None).await {
        Ok(r) => Ok(Some(serde_json::from_slice::<Route>(&r.body).map_err(decode)?)),
        Err(ClientError::Api { status: StatusCode::NOT_FOUND, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What an apply or rollback answered, for people: `done` (what happened, when it was
/// stored), or what a dry run would do, then the diff and the warnings.
fn describe(done: &str, before: Option<&Route>, answer: &Route, dry_run: bool) -> String {
    let mut out = String::new();
    if answer.unchanged {
        out += &format!("route {}: unchanged, still revision {}\n", answer.name, answer.revision);
    } else {
        match before {
            Some(b) if dry_run => {
                out += &format!("route {}: revision {} would become {}\n", answer.name, b.revision, answer.revision)
            }
            None if dry_run => out += &format!("route {}: would be created as revision 1\n", answer.name),
            _ => out += done,
        }
        let changes = match before {
            Some(b) => changes(&b.spec, &answer.spec),
            None => answer.spec.to_toml().lines().filter(|l| !l.is_empty()).map(|l| format!("+ {l}")).collect(),
        };
        out += &changes.iter().map(|l| format!("  {l}\n")).collect::<String>();
    }
    for w in &answer.warnings {
        out += &format!("warning: {w}\n");
    }
    out
}
fn body_text(body: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(body).into_owned();
    s.push('\n');
    s
}

async fn apply(
    client: &Client,
    file: &Path,
    dry_run: bool,
    wait: Wait,
    json: bool,
    timeout: Duration,
) -> Result<String, ClientError> {
    let text = meshctl::read_input(file)?;
    let spec =
        RouteSpec::from_file(&file.display().to_string(), &text).map_err(|e| ClientError::Input(e.to_string()))?;
    let before = current(client, &spec.name).await?;
    let body = serde_json::to_vec(&spec).map_err(decode)?;
    let query = if dry_run { "?dry_run=true" } else { "" };
    let r = client.request(Method::PUT, &format!("/v1/routes/{}{query}", spec.name), Some(body)).await?;
    let answer: Route = serde_json::from_slice(&r.body).map_err(decode)?;
    let done = format!("applied route {} revision {} on {}\n", answer.name, answer.revision, answer.origin);
    let mut out = if json { body_text(&r.body) } else { describe(&done, before.as_ref(), &answer, dry_run) };
    if wait != Wait::No && !dry_run {
        out += &wait_until_everywhere(client, &answer, wait, json, timeout, &out).await?;
    }
    Ok(out)
}

async fn rollback(
    client: &Client,
    name: &str,
    to: Option<RevisionRef>,
    dry_run: bool,
    wait: Wait,
    json: bool,
    timeout: Duration,
) -> Result<String, ClientError> {
    let before = current(client, name).await?.ok_or_else(|| ClientError::Api {
        status: StatusCode::NOT_FOUND,
        body: mesh_proto::api::ApiError { error: "not_found".to_owned(), detail: format!("no route named {name}") },
    })?;
    let body = serde_json::to_vec(&RollbackRequest { to: to.clone() }).map_err(decode)?;
    let query = if dry_run { "?dry_run=true" } else { "" };
    let r = client.request(Method::POST, &format!("/v1/routes/{name}/rollback{query}"), Some(body)).await?;
    let answer: Route = serde_json::from_slice(&r.body).map_err(decode)?;
    let mut out = if json {
        body_text(&r.body)
    } else {
        let restored = answer
            .rollback_of_id
            .clone()
            .or_else(|| answer.rollback_of.map(|n| n.to_string()))
            .or_else(|| to.map(|t| t.to_string()))
            .map_or("the previous revision".to_owned(), |n| format!("revision {n}"));
        let done = format!("rolled back route {name} to {restored}: now revision {}\n", answer.revision);
        let text = describe(&done, Some(&before), &answer, dry_run);
        if dry_run {
            format!("rollback to {restored}: {text}")
        } else {
            text
        }
    };
    if wait != Wait::No && !dry_run {
        out += &wait_until_everywhere(client, &answer, wait, json, timeout, &out).await?;
    }
    Ok(out)
}

/// What `--wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    No,
    /// Every member not left or removed: dead ones are unconfirmed, an error.
    Everyone,
    /// Every member gossip does not hold dead (`--alive-only`).
    AliveOnly,
}

impl Wait {
    fn of(wait: bool, alive_only: bool) -> Wait {
        match (wait, alive_only) {
            (false, _) => Wait::No,
            (true, false) => Wait::Everyone,
            (true, true) => Wait::AliveOnly,
        }
    }
}

/// Waits until every member holds `applied`'s revision; the line that says which did, or
/// an error naming the members that lag or are unconfirmed (`printed` is shown first, as
/// it is lost then).
async fn wait_until_everywhere(
    client: &Client,
    applied: &Route,
    mode: Wait,
    json: bool,
    timeout: Duration,
    printed: &str,
) -> Result<String, ClientError> {
    let started = Instant::now();
    let path = format!("/v1/routes/{}/catchup?revision={}", applied.name, shown(applied));
    let mut last: Option<Catchup> = None;
    loop {
        let answer = match client.request(Method::GET, &path, None).await {
            Ok(r) => Some(serde_json::from_slice::<Catchup>(&r.body).map_err(decode)?),
            Err(ClientError::Timeout { .. }) => None,
            Err(e) => return Err(e),
        };
        if let Some(c) = answer {
            if c.lagging.is_empty() && c.unreachable.is_empty() {
                let took = started.elapsed().as_millis();
                let dead = c.unconfirmed.join(", ");
                if c.unconfirmed.is_empty() || mode == Wait::AliveOnly {
                    let (who, unconfirmed) = match dead.as_str() {
                        "" => ("every member", String::new()),
                        _ => ("every alive member", format!("; not confirmed (dead): {dead}")),
                    };
                    let (n, r) = (c.holding.len(), shown(applied));
                    return Ok(if json {
                        String::new()
                    } else {
                        format!("{who} ({n}) holds revision {r} after {took} ms{unconfirmed}\n")
                    });
                }
                print!("{printed}");
                return Err(ClientError::Failed(format!(
                    "revision {} of route {} is held by every alive member ({}), but not confirmed by {dead}, which gossip holds dead (--alive-only accepts that)",
                    shown(applied),
                    applied.name,
                    c.holding.len()
                )));
            }
            last = Some(c);
        }
        if started.elapsed() >= timeout {
            let lag = match &last {
                Some(c) => {
                    let mut lag = c.lagging.clone();
                    lag.extend(c.unreachable.iter().map(|n| format!("{n} (unreachable)")));
                    lag.extend(c.unconfirmed.iter().map(|n| format!("{n} (dead: not confirmed)")));
                    lag.join(", ")
                }
                None => "unknown (meshd did not answer)".to_owned(),
            };
            print!("{printed}");
            return Err(ClientError::Failed(format!(
                "revision {} of route {} is not everywhere after {}: lagging: {lag}",
                shown(applied),
                applied.name,
                mesh_proto::duration::format(timeout),
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A revision as messages name it: `3@node-1` (a meshd from before named revisions by
/// number alone).
fn shown(r: &Route) -> String {
    if r.id.is_empty() {
        r.revision.to_string()
    } else {
        r.id.clone()
    }
}

/// A route revision's origin as tables show it: flagged when that node was removed since
/// (what it wrote before stays in force; review it).
fn origin(node: &str, removed: bool) -> String {
    if removed {
        format!("{node} (removed)")
    } else {
        node.to_owned()
    }
}
