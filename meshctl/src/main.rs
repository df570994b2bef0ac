//! The `meshctl` binary. Exit status: 0 ok; 1 runtime failure (meshd unreachable or
//! refusing); 2 usage or invalid input.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use mesh_proto::api::{Member, Status};
use meshctl::{table, Client, ClientError};

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
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_proto::duration::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "meshctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let client = Client::new(&cli.socket).with_timeout(cli.timeout);
    match rt.block_on(execute(&client, &cli.command, cli.output)) {
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

async fn execute(client: &Client, command: &Command, output: Output) -> Result<String, ClientError> {
    let path = match command {
        Command::Status => "/v1/status",
        Command::Members => "/v1/members",
        Command::Completions { .. } => return Ok(String::new()),
    };
    let response = client.get(path).await?;
    if output == Output::Json {
        let mut body = String::from_utf8_lossy(&response.body).into_owned();
        body.push('\n');
        return Ok(body);
    }
    let decode = |e: serde_json::Error| ClientError::Decode(e.to_string());
    Ok(match command {
        Command::Status => table::status(&serde_json::from_slice::<Status>(&response.body).map_err(decode)?),
        Command::Members => {
            table::members(&serde_json::from_slice::<Vec<Member>>(&response.body).map_err(decode)?, SystemTime::now())
        }
        Command::Completions { .. } => String::new(),
    })
}
