//! `meshd dev`: a mesh to try on one machine, in a temporary directory that is removed
//! when it stops. For now a single node; it grows into the three-node demo with sample
//! services and a route as the data plane lands.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Config;
use crate::{app, bootstrap, signal};

/// Runs the dev mesh until SIGINT or SIGTERM.
pub async fn run(mut signals: signal::Shutdown) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("meshd-dev-").tempdir().context("creating a temporary directory")?;
    let node = "dev-1";
    let config = dev_config(tmp.path(), node)?;
    bootstrap::init(&config)?;
    let bound = app::build(&config).await?;

    let meshctl = sibling_binary("meshctl");
    let socket = bound.admin_socket.display();
    println!("mesh dev: node {node} is up (data in {})", tmp.path().display());
    println!();
    println!("  admin socket   {socket}");
    if let Some(http) = bound.admin_http {
        println!("  metrics        http://{http}/metrics");
    }
    println!("  mesh UDP port  {}", bound.udp);
    println!();
    println!("Try, in another terminal:");
    println!("  export MESHD_SOCKET={socket}");
    println!("  {meshctl} status");
    println!("  {meshctl} members");
    println!("  {meshctl} status -o json");
    if let Some(http) = bound.admin_http {
        println!("  curl -s http://{http}/metrics | grep ^mesh_");
    }
    println!();
    println!("Ctrl-C stops it and removes the temporary directory.");

    bound
        .run(async move {
            signals.recv().await;
            signals.exit_on_second();
        })
        .await;
    drop(tmp);
    Ok(())
}

fn dev_config(dir: &Path, node: &str) -> anyhow::Result<Config> {
    let data_dir = dir.join(node);
    let socket = dir.join(format!("{node}.sock"));
    let text = format!(
        r#"
node_name = "{node}"
data_dir = "{data}"
bind = "127.0.0.1:0"
drain_timeout = "2s"

[dns]
listen = "127.0.0.1:0"

[admin]
socket = "{socket}"
http = "127.0.0.1:0"
"#,
        data = data_dir.display(),
        socket = socket.display(),
    );
    Ok(Config::parse("meshd dev", &text)?)
}

/// `meshctl` next to this meshd if it is there (a cargo build puts both in one
/// directory), else whatever `meshctl` is on PATH.
fn sibling_binary(name: &str) -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p: &PathBuf| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| name.to_owned())
}
