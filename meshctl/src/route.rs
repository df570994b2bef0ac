//! `meshctl route ...`: what routes share with policies (`documents`), and `lint`.

use std::time::Duration;

use clap::Subcommand;
use hyper::Method;
use mesh_proto::api::RouteLint;
use meshctl::{Client, ClientError};

use crate::documents::{self, body_text, decode, DocCommand, Routes};

#[derive(Subcommand)]
pub enum RouteCommand {
    #[command(flatten)]
    Doc(DocCommand),
    /// Problems that keep routes from working as written: a service with no instance,
    /// subsets that select no instance, rules of the other protocol. Exit 1 when any.
    Lint {
        /// One route; default: every route.
        name: Option<String>,
    },
}

/// Runs a route command; `json` prints the API's bodies unchanged.
pub async fn run(
    client: &Client,
    command: &RouteCommand,
    json: bool,
    timeout: Duration,
) -> Result<String, ClientError> {
    let name = match command {
        RouteCommand::Doc(doc) => return documents::run::<Routes>(client, doc, json, timeout).await,
        RouteCommand::Lint { name } => name,
    };
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
