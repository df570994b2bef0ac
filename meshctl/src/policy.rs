//! `meshctl policy ...`: what policies share with routes (`documents`), and `check`.

use std::time::Duration;

use clap::Subcommand;
use hyper::Method;
use mesh_proto::api::PolicyCheck;
use meshctl::{Client, ClientError};

use crate::documents::{self, body_text, decode, DocCommand, Policies};

#[derive(Subcommand)]
pub enum PolicyCommand {
    #[command(flatten)]
    Doc(DocCommand),
    /// What the destination's policy decides for a caller (and a request): one line,
    /// `allow` or `deny`, then the policy and rule that decided (or the default). Exit 0
    /// for allow, 1 for deny.
    Check {
        /// The caller: a service (`productpage`, on the first node that hosts it, or
        /// `productpage@NODE`) or a node (`node:NAME`).
        #[arg(long)]
        from: String,
        /// The destination service.
        #[arg(long)]
        to: String,
        /// The request's method (an HTTP service's rules look at requests).
        #[arg(long)]
        method: Option<String>,
        /// The request's path.
        #[arg(long)]
        path: Option<String>,
        /// A request header, NAME=VALUE; repeat it for more.
        #[arg(long)]
        header: Vec<String>,
    },
}

/// Runs a policy command; `json` prints the API's bodies unchanged.
pub async fn run(
    client: &Client,
    command: &PolicyCommand,
    json: bool,
    timeout: Duration,
) -> Result<String, ClientError> {
    let (from, to, method, path, headers) = match command {
        PolicyCommand::Doc(doc) => return documents::run::<Policies>(client, doc, json, timeout).await,
        PolicyCommand::Check { from, to, method, path, header } => (from, to, method, path, header),
    };
    let mut query: Vec<(&str, &str)> = vec![("from", from), ("to", to)];
    query.extend(method.iter().map(|m| ("method", m.as_str())));
    query.extend(path.iter().map(|p| ("path", p.as_str())));
    query.extend(headers.iter().map(|h| ("header", h.as_str())));
    let query = serde_urlencoded::to_string(&query).map_err(|e| ClientError::Input(e.to_string()))?;
    let r = client.request(Method::GET, &format!("/v1/policy-check?{query}"), None).await?;
    let check: PolicyCheck = serde_json::from_slice(&r.body).map_err(decode)?;
    let mut out = if json { body_text(&r.body) } else { format!("{}\n", check.line) };
    if !json && !check.rate_limits.is_empty() {
        out += &format!("rate limits counting {}: {}\n", check.caller, check.rate_limits.join(", "));
    }
    if !check.allow {
        print!("{out}");
        return Err(ClientError::Failed(format!("{} may not call {to}", check.caller)));
    }
    Ok(out)
}
