//! The `meshctl` binary. Exit status: 0 ok; 1 runtime failure (meshd unreachable or
//! refusing); 2 usage or invalid input.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use hyper::Method;
use mesh_proto::api::{Connection, Member, NodeRemoved, Status, TokenCreated, TokenRequest};
use mesh_proto::role::Role;
use meshctl::{table, Client, ClientError};

mod documents;
mod policy;
mod route;

#[derive(Parser)]
#[command(name = "meshctl", version = mesh_proto::VERSION, about = "Control the mesh through the local meshd")]
struct Cli {
    /// meshd's admin socket.
    #[arg(long, global = true, env = "MESHD_SOCKET", default_value = meshctl::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output: a readable table, or the admin API's JSON body unchanged.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// How long to wait for meshd's answer.
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// This node: identity, store, members and more.
    Status,
    /// Members of the mesh and their state.
    Members,
    /// Live QUIC connections with other members, by verified identity.
    Connections,
    /// Services in the mesh and their instances.
    Services,
    /// This node's services.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Routes: how a service's traffic is split, matched and retried.
    Route {
        #[command(subcommand)]
        command: route::RouteCommand,
    },
    /// Authorization policies: who may call a service, on which requests, how often.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Nodes of the mesh.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The mesh's certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Live calls between services across the mesh (requests/s, success rate, latency),
    /// over the last half minute, refreshed every 2 s; Ctrl-C stops.
    Top {
        /// Print once and exit (also what `-o json` does).
        #[arg(long)]
        once: bool,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), as the package installs it.
    #[command(hide = true)]
    Man,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token for one host to join, redeemable once at this node; prints it.
    Create {
        /// How long it is valid, 1s to 7d.
        #[arg(long, default_value = "1h", value_parser = parse_token_ttl)]
        ttl: Duration,
        /// The joining node's role: member (serves and reads), operator (also writes
        /// routes and policies) or signer (also issues certificates and tokens, removes
        /// nodes; it receives the CA key).
        #[arg(long, default_value = "member", value_parser = parse_role, conflicts_with = "signer")]
        role: Role,
        /// The same as --role signer.
        #[arg(long)]
        signer: bool,
        /// Only a node with this name may use it.
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Register (or replace) a service on this node from a TOML file: the keys of one
    /// `[[service]]` entry at its top level. It survives restarts.
    Register {
        /// The service file (TOML): name, port, and optionally address, protocol,
        /// labels, check.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Remove a registered service of this node.
    Deregister { name: String },
    /// Claim a service name for some nodes: from then on only nodes matching the globs
    /// may register it, mesh-wide (others' instances leave routing). Without a name:
    /// list the claims. Needs role operator.
    Allow {
        /// The service name.
        name: Option<String>,
        /// Node name globs, comma-separated (`web-*,db-1`).
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// Release the claim: the name is open to every member again.
        #[arg(long, conflicts_with = "nodes")]
        release: bool,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Remove a node: revoke its certificate and key everywhere, close its connections.
    Remove {
        /// The node's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Rotate the CA root (on a signer): a new root is added to every node's trust, then,
    /// once every alive member holds it (waiting up to --timeout), certificates are
    /// issued under it and every node renews; the old root stops being trusted once the
    /// last certificate it issued has expired. Live connections are not cut. Run it
    /// again to continue a rotation that timed out.
    Rotate,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn parse_token_ttl(s: &str) -> Result<Duration, String> {
    let d = mesh_proto::duration::parse(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(7 * 86_400) {
        return Err("a token's ttl is between 1s and 7d".to_owned());
    }
    Ok(d)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_proto::duration::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "meshctl", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meshctl: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let client = Client::new(&cli.socket).with_timeout(cli.timeout);
    let result = match &cli.command {
        Command::Route { command } => {
            rt.block_on(route::run(&client, command, cli.output == Output::Json, cli.timeout))
        }
        Command::Policy { command } => {
            rt.block_on(policy::run(&client, command, cli.output == Output::Json, cli.timeout))
        }
        Command::Top { once } => rt.block_on(top(&client, *once || cli.output == Output::Json, cli.output)),
        Command::Ca { command: CaCommand::Rotate } => {
            // meshd waits for the members a little less than meshctl waits for meshd.
            let wait = cli.timeout.saturating_sub(Duration::from_secs(2)).max(Duration::from_secs(1));
            rt.block_on(rotate_ca(&client, wait, cli.output))
        }
        command => rt.block_on(execute(&client, command, cli.output)),
    };
    match result {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (meshctl members | head) is not an error worth reporting.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshctl: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}

/// `meshctl top`: the table, again every 2 s until interrupted (or once).
async fn top(client: &Client, once: bool, output: Output) -> Result<String, ClientError> {
    loop {
        let response = client.get("/v1/traffic").await?;
        let text = if output == Output::Json {
            let mut body = String::from_utf8_lossy(&response.body).into_owned();
            body.push('\n');
            body
        } else {
            let traffic: mesh_proto::traffic::MeshTraffic =
                serde_json::from_slice(&response.body).map_err(|e| ClientError::Decode(e.to_string()))?;
            table::top(&traffic)
        };
        if once {
            return Ok(text);
        }
        let mut out = std::io::stdout().lock();
        // Clear the screen and home the cursor, as top does.
        let _ = write!(out, "\x1b[2J\x1b[H{text}").and_then(|()| out.flush());
        drop(out);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Turns an API body into the readable form.
type Printer = fn(&[u8]) -> Result<String, serde_json::Error>;

async fn execute(client: &Client, command: &Command, output: Output) -> Result<String, ClientError> {
    let decode = |e: serde_json::Error| ClientError::Decode(e.to_string());
    let (response, table): (_, Printer) = match command {
        Command::Status => {
            (client.get("/v1/status").await?, |b| Ok(table::status(&serde_json::from_slice::<Status>(b)?)))
        }
        Command::Members => (client.get("/v1/members").await?, |b| {
            Ok(table::members(&serde_json::from_slice::<Vec<Member>>(b)?, SystemTime::now()))
        }),
        Command::Connections => (client.get("/v1/connections").await?, |b| {
            Ok(table::connections(&serde_json::from_slice::<Vec<Connection>>(b)?, SystemTime::now()))
        }),
        Command::Services => (client.get("/v1/services").await?, |b| {
            Ok(table::services(&serde_json::from_slice::<Vec<mesh_proto::api::Service>>(b)?))
        }),
        Command::Service { command: ServiceCommand::Register { file } } => {
            let text = meshctl::read_input(file)?;
            let spec = mesh_proto::service::ServiceSpec::from_file(&file.display().to_string(), &text)
                .map_err(|e| ClientError::Input(e.to_string()))?;
            let body = serde_json::to_vec(&spec).map_err(decode)?;
            (client.request(Method::POST, "/v1/services", Some(body)).await?, |b| {
                let v: serde_json::Value = serde_json::from_slice(b)?;
                Ok(format!("registered {}\n", v["registered"].as_str().unwrap_or("")))
            })
        }
        Command::Service { command: ServiceCommand::Allow { name: None, .. } } => {
            (client.request(Method::GET, "/v1/claims", None).await?, |b| {
                let claims: Vec<mesh_proto::api::ServiceClaim> = serde_json::from_slice(b)?;
                let rows: Vec<String> = claims.iter().map(|c| format!("{}  {}\n", c.name, c.nodes.join(","))).collect();
                Ok(if rows.is_empty() { "no service name is claimed\n".to_owned() } else { rows.concat() })
            })
        }
        Command::Service { command: ServiceCommand::Allow { name: Some(name), release: true, .. } } => {
            (client.request(Method::DELETE, &format!("/v1/claims/{name}"), None).await?, |b| {
                let v: serde_json::Value = serde_json::from_slice(b)?;
                Ok(format!("released {}: any member may register it\n", v["released"].as_str().unwrap_or("")))
            })
        }
        Command::Service { command: ServiceCommand::Allow { name: Some(name), nodes, .. } } => {
            if nodes.is_empty() {
                return Err(meshctl::ClientError::Input(format!(
                    "which nodes may register {name}? --nodes GLOB[,GLOB] (or --release)"
                )));
            }
            let claim = mesh_proto::api::ServiceClaim { name: name.clone(), nodes: nodes.clone() };
            let body = serde_json::to_vec(&claim).map_err(decode)?;
            (client.request(Method::PUT, &format!("/v1/claims/{name}"), Some(body)).await?, |b| {
                let c: mesh_proto::api::ServiceClaim = serde_json::from_slice(b)?;
                Ok(format!("{} may be registered only by {}\n", c.name, c.nodes.join(",")))
            })
        }
        Command::Service { command: ServiceCommand::Deregister { name } } => {
            (client.request(Method::DELETE, &format!("/v1/services/{name}"), None).await?, |b| {
                let v: serde_json::Value = serde_json::from_slice(b)?;
                Ok(format!("deregistered {}\n", v["deregistered"].as_str().unwrap_or("")))
            })
        }
        Command::Token { command: TokenCommand::Create { ttl, role, signer, node } } => {
            let role = if *signer { Role::Signer } else { *role };
            let request = TokenRequest {
                ttl: Some(mesh_proto::duration::format(*ttl)),
                signer: false,
                role: Some(role),
                node: node.clone(),
            };
            let body = serde_json::to_vec(&request).map_err(decode)?;
            // The table form is the token alone, one line, for scripts: TOKEN=$(meshctl token create).
            (client.request(Method::POST, "/v1/tokens", Some(body)).await?, |b| {
                Ok(format!("{}\n", serde_json::from_slice::<TokenCreated>(b)?.token))
            })
        }
        Command::Node { command: NodeCommand::Remove { name } } => {
            (client.request(Method::DELETE, &format!("/v1/nodes/{name}"), None).await?, |b| {
                let r: NodeRemoved = serde_json::from_slice(b)?;
                Ok(format!("removed {} (certificate {} and its key revoked)\n", r.node, r.serial))
            })
        }
        Command::Completions { .. }
        | Command::Man
        | Command::Route { .. }
        | Command::Policy { .. }
        | Command::Ca { .. }
        | Command::Top { .. } => return Ok(String::new()),
    };
    if output == Output::Json {
        let mut body = String::from_utf8_lossy(&response.body).into_owned();
        body.push('\n');
        return Ok(body);
    }
    table(&response.body).map_err(decode)
}

/// `meshctl ca rotate`.
async fn rotate_ca(client: &Client, wait: Duration, output: Output) -> Result<String, ClientError> {
    let path = format!("/v1/ca/rotate?timeout={}", mesh_proto::duration::format(wait));
    let response = client.request(Method::POST, &path, None).await?;
    if output == Output::Json {
        return Ok(format!("{}\n", String::from_utf8_lossy(&response.body)));
    }
    let r: mesh_proto::api::CaRotated =
        serde_json::from_slice(&response.body).map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok(format!(
        "CA rotated: new root {} (held by {} members); nodes renew under it now.\nold root {} is trusted until {}\n",
        r.root,
        r.members.len(),
        r.previous,
        r.retires_at
    ))
}
