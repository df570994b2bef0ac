//! `meshd dev`: the demo. Three nodes in this one process (dev-1, dev-2, dev-3, each on
//! its own loopback address, as three hosts would be), sample services, and a route, in
//! a temporary directory removed when it stops:
//!
//! - `productpage` on dev-1 answers HTTP by asking meshd's DNS for `reviews.mesh` and
//!   calling it through the mesh, as any application would;
//! - `reviews` v1 on dev-2 and v2 on dev-3 answer with their version;
//! - the route `reviews` sends requests with `end-user: jason` to v2, and splits the rest
//!   80% to v1, 20% to v2, request by request.
//!
//! It prints the `meshctl`, `dig` and `curl` commands to try and runs until Ctrl-C.
//!
//! Must not: be needed by `meshd run` (nothing here is used outside the demo), or bind
//! anything but loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::{app, bootstrap, signal};

const PORT: u16 = 9080;

/// Node `i`'s loopback address.
fn host(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + i)
}

const ROUTE: &str = r#"name = "reviews"
service = "reviews"

[subsets]
v1 = { version = "v1" }
v2 = { version = "v2" }

[[http]]
match = { headers = { "end-user" = "jason" } }
to = [{ subset = "v2" }]

[[http]]
to = [{ subset = "v1", weight = 80 }, { subset = "v2", weight = 20 }]
timeout = "5s"
retries = { attempts = 2, on = ["5xx", "connect-failure"] }
"#;

/// Runs the demo until SIGINT or SIGTERM.
pub async fn run(mut signals: signal::Shutdown) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("meshd-dev-").tempdir().context("creating a temporary directory")?;
    let dir = tmp.path();
    let configs = [
        dev_config(
            dir,
            1,
            "[[service]]\nname = \"productpage\"\naddress = \"127.0.0.11\"\nport = 9080\nprotocol = \"http\"\n",
        )?,
        dev_config(
            dir,
            2,
            "[[service]]\nname = \"reviews\"\naddress = \"127.0.0.12\"\nport = 9080\nprotocol = \"http\"\nlabels = { version = \"v1\" }\n",
        )?,
        dev_config(
            dir,
            3,
            "[[service]]\nname = \"reviews\"\naddress = \"127.0.0.13\"\nport = 9080\nprotocol = \"http\"\nlabels = { version = \"v2\" }\n",
        )?,
    ];
    bootstrap::init(&configs[0])?;
    let first = app::build(&configs[0]).await?;
    let signer = first.signer().clone();
    let socket = first.admin_socket.clone();
    let dns = first.dns;
    let metrics = first.admin_http;
    let store = first.store.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let run_first = first.run(stopped(stop_rx.clone()));
    tokio::pin!(run_first);

    // The other two join through dev-1's signer, as `meshd join TOKEN` does.
    let joined = async {
        let mut bound = Vec::new();
        for config in &configs[1..] {
            let token = signer.create_token(
                Duration::from_secs(60),
                mesh_proto::role::Role::Member,
                Some(config.node_name.clone()),
            )?;
            bootstrap::join(config, &token.token).await?;
            bound.push(app::build(config).await?);
        }
        anyhow::Ok(bound)
    };
    let mut others = tokio::select! {
        b = joined => b?,
        _ = &mut run_first => bail!("dev-1 stopped while the others joined"),
    };
    let (Some(third), Some(second)) = (others.pop(), others.pop()) else { bail!("two nodes should have joined") };

    // The sample applications, on each node's address.
    for (i, body) in [(2u8, "reviews v1 (on dev-2)\n"), (3, "reviews v2 (on dev-3)\n")] {
        let listener = TcpListener::bind((host(i), PORT)).await.context("a sample service's port")?;
        tokio::spawn(serve_http(listener, move || async move { body.to_owned() }));
    }
    let listener = TcpListener::bind((host(1), PORT)).await.context("productpage's port")?;
    tokio::spawn(serve_http(listener, move || productpage(dns)));

    let spec = mesh_proto::route::RouteSpec::from_file("the demo route", ROUTE)?;
    tokio::task::spawn_blocking(move || crate::documents::apply(&store, &spec, crate::documents::Mode::Store))
        .await??;

    let meshctl = sibling_binary("meshctl");
    let route_file = dir.join("reviews-route.toml");
    std::fs::write(&route_file, ROUTE)?;
    println!("mesh dev: three nodes (dev-1, dev-2, dev-3) on loopback; data in {}", dir.display());
    println!();
    println!("  productpage  on dev-1, calls reviews.mesh:{PORT} through the mesh");
    println!("  reviews v1   on dev-2");
    println!("  reviews v2   on dev-3");
    println!("  route        reviews: end-user jason to v2; other requests 80% to v1, 20% to v2");
    println!();
    println!("Try, in another terminal (dev-1's view):");
    println!("  export MESHD_SOCKET={}", socket.display());
    println!("  {meshctl} members");
    println!("  {meshctl} services");
    println!("  {meshctl} route get reviews");
    println!("  dig @{} -p {} reviews.mesh", dns.ip(), dns.port());
    println!("  curl http://$(dig +short @{} -p {} reviews.mesh):{PORT}/", dns.ip(), dns.port());
    println!("  curl -H 'end-user: jason' http://$(dig +short @{} -p {} reviews.mesh):{PORT}/", dns.ip(), dns.port());
    println!("  curl http://{}:{PORT}/", host(1));
    println!("  {meshctl} route apply -f {} --wait   # after editing the weights", route_file.display());
    if let Some(addr) = metrics {
        println!("  curl http://{addr}/metrics   # dev-1's Prometheus metrics");
    }
    println!();
    println!("Ctrl-C stops it and removes the temporary directory.");

    let (a, b, c, ()) =
        tokio::join!(run_first, second.run(stopped(stop_rx.clone())), third.run(stopped(stop_rx)), async {
            signals.recv().await;
            signals.exit_on_second();
            let _ = stop_tx.send(true);
        },);
    drop(tmp);
    if let Some(part) = [a, b, c].iter().find_map(|ran| ran.failed) {
        bail!("a node's {part} failed (see the log above)");
    }
    Ok(())
}

/// productpage's answer: what `reviews.mesh` says, reached by name like any client.
async fn productpage(dns: SocketAddr) -> String {
    let reviews = async {
        let vip = resolve(dns, "reviews.mesh").await?;
        let mut s = TcpStream::connect((vip, PORT)).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: reviews.mesh\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.ok()?;
        reply.split("\r\n\r\n").nth(1).map(str::to_owned)
    };
    match tokio::time::timeout(Duration::from_secs(5), reviews).await {
        Ok(Some(body)) => format!("productpage (on dev-1) -> {body}"),
        _ => "productpage (on dev-1): reviews did not answer\n".to_owned(),
    }
}

/// An A lookup at meshd's DNS.
async fn resolve(dns: SocketAddr, name: &str) -> Option<Ipv4Addr> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut q = Message::query();
    q.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    sock.send_to(&q.to_vec().ok()?, dns).await.ok()?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).await.ok()?;
    Message::from_vec(&buf[..n]).ok()?.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

/// A minimal HTTP/1.1 server: reads a request head, answers 200 with `body()`, closes.
async fn serve_http<F, Fut>(listener: TcpListener, body: F)
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    while let Ok((mut s, _)) = listener.accept().await {
        let body = body.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let text = body().await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

fn dev_config(dir: &Path, i: u8, services: &str) -> anyhow::Result<Config> {
    let node = format!("dev-{i}");
    let data_dir = dir.join(&node);
    let socket = dir.join(format!("{node}.sock"));
    let http = if i == 1 { "http = \"127.0.0.1:0\"\n" } else { "" };
    let join = if i == 1 { String::new() } else { format!("join = [\"{}:7946\"]\n", host(1)) };
    // Three nodes share this machine's loopback: each gets its own virtual IPs, away
    // from the 127.77/16 of a real meshd that may run here too.
    let text = format!(
        r#"
node_name = "{node}"
data_dir = "{data}"
bind = "{host}:7946"
{join}drain_timeout = "2s"

[dns]
listen = "{host}:5353"

[proxy]
vip_range = "127.78.{range}.0/20"

[admin]
socket = "{socket}"
{http}
{services}"#,
        data = data_dir.display(),
        host = host(i),
        range = u16::from(i) * 16,
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
