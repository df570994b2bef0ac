//! What `meshctl route` and `meshctl policy` share: apply and rollback (with a diff, a
//! dry run, and waiting until every member holds the new revision), list, get, delete,
//! history. [`Kind`] says what differs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Subcommand;
use hyper::{Method, StatusCode};
use mesh_proto::api::{Catchup, Document, Revision, RevisionRef, RollbackRequest};
use mesh_proto::input::InputError;
use mesh_proto::policy::PolicySpec;
use mesh_proto::route::{changes, RouteSpec};
use meshctl::{table, Client, ClientError};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A route or a policy, as the CLI handles it.
pub trait Kind {
    type Spec: Serialize + DeserializeOwned;
    /// `route`, `policy`.
    const NOUN: &'static str;
    /// `/v1/routes`, `/v1/policies`.
    const PATH: &'static str;
    fn from_file(file: &str, text: &str) -> Result<Self::Spec, InputError>;
    fn name(spec: &Self::Spec) -> &str;
    fn to_toml(spec: &Self::Spec) -> String;
}

pub struct Routes;
pub struct Policies;

impl Kind for Routes {
    type Spec = RouteSpec;
    const NOUN: &'static str = "route";
    const PATH: &'static str = "/v1/routes";
    fn from_file(file: &str, text: &str) -> Result<RouteSpec, InputError> {
        RouteSpec::from_file(file, text)
    }
    fn name(spec: &RouteSpec) -> &str {
        &spec.name
    }
    fn to_toml(spec: &RouteSpec) -> String {
        spec.to_toml()
    }
}

impl Kind for Policies {
    type Spec = PolicySpec;
    const NOUN: &'static str = "policy";
    const PATH: &'static str = "/v1/policies";
    fn from_file(file: &str, text: &str) -> Result<PolicySpec, InputError> {
        PolicySpec::from_file(file, text)
    }
    fn name(spec: &PolicySpec) -> &str {
        &spec.name
    }
    fn to_toml(spec: &PolicySpec) -> String {
        spec.to_toml()
    }
}

#[derive(Subcommand)]
pub enum DocCommand {
    /// Validate a file and store it as a new revision; prints what changed, and warnings
    /// about what cannot work.
    Apply {
        /// The file (TOML). Routes: `service`, `[subsets]`, `[[http]]` or `[[tcp]]`
        /// rules. Policies: `service`, `default`, `[[allow]]`, `[[deny]]`, `[[rate_limit]]`.
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
    /// Every one.
    List,
    /// One, as TOML (or the API's JSON with -o json).
    Get {
        name: String,
        /// An earlier revision from its history: its number, or number@node (`3@node-1`)
        /// when two nodes wrote a revision with that number.
        #[arg(long)]
        revision: Option<RevisionRef>,
    },
    /// Delete it (its history stays).
    Delete { name: String },
    /// Its revisions, oldest first.
    History { name: String },
    /// A new revision with an earlier revision's content; prints what changed.
    Rollback {
        name: String,
        /// The revision to restore: its number, or number@node (`3@node-1`, as `history`
        /// names it). Default: the newest before the current.
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
}

pub fn decode(e: serde_json::Error) -> ClientError {
    ClientError::Decode(e.to_string())
}

/// Runs a shared command; `json` prints the API's bodies unchanged.
pub async fn run<K: Kind>(
    client: &Client,
    command: &DocCommand,
    json: bool,
    timeout: Duration,
) -> Result<String, ClientError> {
    let (noun, base) = (K::NOUN, K::PATH);
    match command {
        DocCommand::Apply { file, dry_run, wait, alive_only } => {
            apply::<K>(client, file, *dry_run, Wait::of(*wait, *alive_only), json, timeout).await
        }
        DocCommand::List => {
            let r = client.request(Method::GET, base, None).await?;
            if json {
                return Ok(body_text(&r.body));
            }
            let routes: Vec<Document<K::Spec>> = serde_json::from_slice(&r.body).map_err(decode)?;
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
        DocCommand::Get { name, revision } => {
            let r = client.request(Method::GET, &doc_path::<K>(name, revision.as_ref()), None).await?;
            if json {
                return Ok(body_text(&r.body));
            }
            let doc: Document<K::Spec> = serde_json::from_slice(&r.body).map_err(decode)?;
            Ok(format!(
                "# {noun} {} revision {}, applied {} on {}\n{}",
                doc.name,
                doc.revision,
                doc.applied_at,
                origin(&doc.origin, doc.origin_removed),
                K::to_toml(&doc.spec)
            ))
        }
        DocCommand::Delete { name } => {
            let r = client.request(Method::DELETE, &format!("{base}/{name}"), None).await?;
            Ok(if json { body_text(&r.body) } else { format!("deleted {noun} {name}\n") })
        }
        DocCommand::History { name } => {
            let r = client.request(Method::GET, &format!("{base}/{name}/history"), None).await?;
            if json {
                return Ok(body_text(&r.body));
            }
            let revs: Vec<Revision> = serde_json::from_slice(&r.body).map_err(decode)?;
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
        DocCommand::Rollback { name, to, dry_run, wait, alive_only } => {
            rollback::<K>(client, name, to.clone(), *dry_run, Wait::of(*wait, *alive_only), json, timeout).await
        }
    }
}
fn doc_path<K: Kind>(name: &str, revision: Option<&RevisionRef>) -> String {
    match revision {
        Some(n) => format!("{}/{name}?revision={n}", K::PATH),
        None => format!("{}/{name}", K::PATH),
    }
}

/// The current revision of `name`, if there is one.
async fn current<K: Kind>(client: &Client, name: &str) -> Result<Option<Document<K::Spec>>, ClientError> {
    match client.request(Method::GET, &doc_path::<K>(name, None), None).await {
        Ok(r) => Ok(Some(serde_json::from_slice::<Document<K::Spec>>(&r.body).map_err(decode)?)),
        Err(ClientError::Api { status: StatusCode::NOT_FOUND, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What an apply or rollback answered, for people: `done` (what happened, when it was
/// stored), or what a dry run would do, then the diff and the warnings.
fn describe<K: Kind>(
    done: &str,
    before: Option<&Document<K::Spec>>,
    answer: &Document<K::Spec>,
    dry_run: bool,
) -> String {
    let noun = K::NOUN;
    let mut out = String::new();
    if answer.unchanged {
        out += &format!("{noun} {}: unchanged, still revision {}\n", answer.name, answer.revision);
    } else {
        match before {
            Some(b) if dry_run => {
                out += &format!("{noun} {}: revision {} would become {}\n", answer.name, b.revision, answer.revision)
            }
            None if dry_run => out += &format!("{noun} {}: would be created as revision 1\n", answer.name),
            _ => out += done,
        }
        let changes = match before {
            Some(b) => changes(&b.spec, &answer.spec),
            None => K::to_toml(&answer.spec).lines().filter(|l| !l.is_empty()).map(|l| format!("+ {l}")).collect(),
        };
        out += &changes.iter().map(|l| format!("  {l}\n")).collect::<String>();
    }
    for w in &answer.warnings {
        out += &format!("warning: {w}\n");
    }
    out
}
pub fn body_text(body: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(body).into_owned();
    s.push('\n');
    s
}

async fn apply<K: Kind>(
    client: &Client,
    file: &Path,
    dry_run: bool,
    wait: Wait,
    json: bool,
    timeout: Duration,
) -> Result<String, ClientError> {
    let text = meshctl::read_input(file)?;
    let spec = K::from_file(&file.display().to_string(), &text).map_err(|e| ClientError::Input(e.to_string()))?;
    let name = K::name(&spec).to_owned();
    let before = current::<K>(client, &name).await?;
    let body = serde_json::to_vec(&spec).map_err(decode)?;
    let query = if dry_run { "?dry_run=true" } else { "" };
    let r = client.request(Method::PUT, &format!("{}/{name}{query}", K::PATH), Some(body)).await?;
    let answer: Document<K::Spec> = serde_json::from_slice(&r.body).map_err(decode)?;
    let done = format!("applied {} {} revision {} on {}\n", K::NOUN, answer.name, answer.revision, answer.origin);
    let mut out = if json { body_text(&r.body) } else { describe::<K>(&done, before.as_ref(), &answer, dry_run) };
    if wait != Wait::No && !dry_run {
        out += &wait_until_everywhere::<K>(client, &answer, wait, json, timeout, &out).await?;
    }
    Ok(out)
}

async fn rollback<K: Kind>(
    client: &Client,
    name: &str,
    to: Option<RevisionRef>,
    dry_run: bool,
    wait: Wait,
    json: bool,
    timeout: Duration,
) -> Result<String, ClientError> {
    let noun = K::NOUN;
    let before = current::<K>(client, name).await?.ok_or_else(|| ClientError::Api {
        status: StatusCode::NOT_FOUND,
        body: mesh_proto::api::ApiError { error: "not_found".to_owned(), detail: format!("no {noun} named {name}") },
    })?;
    let body = serde_json::to_vec(&RollbackRequest { to: to.clone() }).map_err(decode)?;
    let query = if dry_run { "?dry_run=true" } else { "" };
    let r = client.request(Method::POST, &format!("{}/{name}/rollback{query}", K::PATH), Some(body)).await?;
    let answer: Document<K::Spec> = serde_json::from_slice(&r.body).map_err(decode)?;
    let mut out = if json {
        body_text(&r.body)
    } else {
        let restored = answer
            .rollback_of_id
            .clone()
            .or_else(|| answer.rollback_of.map(|n| n.to_string()))
            .or_else(|| to.map(|t| t.to_string()))
            .map_or("the previous revision".to_owned(), |n| format!("revision {n}"));
        let done = format!("rolled back {noun} {name} to {restored}: now revision {}\n", answer.revision);
        let text = describe::<K>(&done, Some(&before), &answer, dry_run);
        if dry_run {
            format!("rollback to {restored}: {text}")
        } else {
            text
        }
    };
    if wait != Wait::No && !dry_run {
        out += &wait_until_everywhere::<K>(client, &answer, wait, json, timeout, &out).await?;
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
async fn wait_until_everywhere<K: Kind>(
    client: &Client,
    applied: &Document<K::Spec>,
    mode: Wait,
    json: bool,
    timeout: Duration,
    printed: &str,
) -> Result<String, ClientError> {
    let started = Instant::now();
    let path = format!("{}/{}/catchup?revision={}", K::PATH, applied.name, shown(applied));
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
                    "revision {} of {} {} is held by every alive member ({}), but not confirmed by {dead}, which gossip holds dead (--alive-only accepts that)",
                    shown(applied),
                    K::NOUN,
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
                "revision {} of {} {} is not everywhere after {}: lagging: {lag}",
                shown(applied),
                K::NOUN,
                applied.name,
                mesh_proto::duration::format(timeout),
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A revision as messages name it: `3@node-1` (a meshd from before named revisions by
/// number alone).
fn shown<S>(r: &Document<S>) -> String {
    if r.id.is_empty() {
        r.revision.to_string()
    } else {
        r.id.clone()
    }
}

/// A revision's origin as tables show it: flagged when that node was removed since
/// (what it wrote before stays in force; review it).
fn origin(node: &str, removed: bool) -> String {
    if removed {
        format!("{node} (removed)")
    } else {
        node.to_owned()
    }
}
