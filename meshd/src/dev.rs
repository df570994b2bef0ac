//! `meshd dev`: the demo. Four nodes in this one process (dev-1 to dev-4, each on its own
//! loopback address, as four hosts would be), a bookinfo-like set of services, routes,
//! and a light steady load, in a temporary directory removed when it stops:
//!
//! - `productpage` on dev-1 answers HTTP by asking meshd's DNS for `reviews.mesh` and
//!   `ratings.mesh` and calling both through the mesh, as any application would, passing
//!   the `end-user` header on;
//! - `reviews` v1 on dev-2, v2 on dev-3 and v3 on dev-4 answer with their version;
//! - `ratings` on dev-2 and dev-3; the one on dev-3 fails a share of its requests (503),
//!   so retries and outlier ejection have something to do; the one on dev-2 reads its
//!   stars from `mysqldb` (TCP) on dev-4;
//! - the route `reviews` sends requests with `end-user: jason` to v2, and splits the rest
//!   40/30/30 over v1, v2 and v3; the route `ratings` retries 5xx answers;
//! - a load generator on dev-1 calls productpage about ten times a second through an
//!   `[[upstream]]`, so the dashboard's graph moves within seconds.
//!
//! It prints the dashboard's address and the `meshctl`, `dig` and `curl` commands to try,
//! and runs until Ctrl-C.
//!
//! Must not: be needed by `meshd run` (nothing here is used outside the demo), or bind
//! anything but loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
v3 = { version = "v3" }

[[http]]
match = { headers = { "end-user" = "jason" } }
to = [{ subset = "v2" }]

[[http]]
to = [{ subset = "v1", weight = 40 }, { subset = "v2", weight = 30 }, { subset = "v3", weight = 30 }]
timeout = "5s"
retries = { attempts = 2, on = ["5xx", "connect-failure"] }
"#;

const RATINGS_ROUTE: &str = r#"name = "ratings"
service = "ratings"

[[http]]
timeout = "3s"
retries = { attempts = 2, on = ["5xx", "connect-failure"] }
"#;

/// The port the load generator calls productpage on (dev-1's `[[upstream]]`).
const LOAD_PORT: u16 = 9000;
/// Each node's `admin.http` port, on its own address: the dashboard and `/metrics`.
const ADMIN_PORT: u16 = 9901;
/// mysqldb's port (TCP).
const DB_PORT: u16 = 3306;
/// The share of requests (percent) the flaky ratings instance answers 503.
const FLAKY_PERCENT: u64 = 30;

/// An HTTP service's `[[service]]` table on node `i`.
fn service(name: &str, i: u8, port: u16, version: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\naddress = \"{}\"\nport = {port}\nprotocol = \"http\"\nlabels = {{ version = \"{version}\" }}\n",
        host(i)
    )
}

/// Runs the demo until SIGINT or SIGTERM.
pub async fn run(mut signals: signal::Shutdown) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("meshd-dev-").tempdir().context("creating a temporary directory")?;
    let dir = tmp.path();
    let ratings = PORT + 1;
    let load = format!("[[upstream]]\nservice = \"productpage\"\nlisten = \"{}:{LOAD_PORT}\"\n", host(1));
    let configs = [
        dev_config(dir, 1, "source = \"productpage\"", &format!("{}{load}", service("productpage", 1, PORT, "v1")))?,
        dev_config(
            dir,
            2,
            "source = \"ratings\"",
            &format!("{}{}", service("reviews", 2, PORT, "v1"), service("ratings", 2, ratings, "v1")),
        )?,
        dev_config(
            dir,
            3,
            "",
            &format!("{}{}", service("reviews", 3, PORT, "v2"), service("ratings", 3, ratings, "v1")),
        )?,
        dev_config(
            dir,
            4,
            "",
            &format!(
                "{}[[service]]\nname = \"mysqldb\"\naddress = \"{}\"\nport = {DB_PORT}\nprotocol = \"tcp\"\n",
                service("reviews", 4, PORT, "v3"),
                host(4)
            ),
        )?,
    ];
    bootstrap::init(&configs[0])?;
    let first = app::build(&configs[0]).await?;
    let signer = first.signer().clone();
    let socket = first.admin_socket.clone();
    let dns = first.dns;
    let dashboard = first.admin_http;
    let store = first.store.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let run_first = first.run(stopped(stop_rx.clone()));
    tokio::pin!(run_first);

    // The others join through dev-1's signer, as `meshd join TOKEN` does.
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
    let others = tokio::select! {
        b = joined => b?,
        _ = &mut run_first => bail!("dev-1 stopped while the others joined"),
    };

    // The sample applications, on each node's address.
    for (i, version) in [(2u8, "v1"), (3, "v2"), (4, "v3")] {
        let listener = TcpListener::bind((host(i), PORT)).await.context("a sample service's port")?;
        let body = format!("reviews {version} (on dev-{i})\n");
        tokio::spawn(serve_http(listener, move |_| {
            let body = body.clone();
            async move { (200, body) }
        }));
    }
    let db = TcpListener::bind((host(4), DB_PORT)).await.context("mysqldb's port")?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = db.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"4 stars").await;
                let _ = s.shutdown().await;
            });
        }
    });
    let dns_of_2 = SocketAddr::from((host(2), 5353));
    for i in [2u8, 3] {
        let listener = TcpListener::bind((host(i), ratings)).await.context("ratings' port")?;
        let served = Arc::new(AtomicU64::new(0));
        tokio::spawn(serve_http(listener, move |_| {
            let n = served.fetch_add(1, Ordering::Relaxed);
            async move {
                if i == 2 {
                    // dev-2's instance asks mysqldb, through the mesh, as TCP.
                    return match stars(dns_of_2).await {
                        Some(stars) => (200, format!("ratings on dev-2: {stars}\n")),
                        None => (503, "ratings on dev-2: mysqldb did not answer\n".to_owned()),
                    };
                }
                // dev-3's instance fails a share of its requests, spread evenly.
                if n % 100 < FLAKY_PERCENT {
                    (503, format!("ratings on dev-{i}: overloaded\n"))
                } else {
                    (200, format!("ratings on dev-{i}: 4 stars\n"))
                }
            }
        }));
    }
    let listener = TcpListener::bind((host(1), PORT)).await.context("productpage's port")?;
    tokio::spawn(serve_http(listener, move |head| productpage(dns, head)));

    for (what, text) in [("the reviews route", ROUTE), ("the ratings route", RATINGS_ROUTE)] {
        let spec = mesh_proto::route::RouteSpec::from_file(what, text)?;
        let store = store.clone();
        tokio::task::spawn_blocking(move || crate::documents::apply(&store, &spec, crate::documents::Mode::Store))
            .await??;
    }
    tokio::spawn(load_generator(SocketAddr::from((host(1), LOAD_PORT))));

    let meshctl = sibling_binary("meshctl");
    let route_file = dir.join("reviews-route.toml");
    std::fs::write(&route_file, ROUTE)?;
    println!("mesh dev: four nodes (dev-1 to dev-4) on loopback; data in {}", dir.display());
    println!();
    println!("  productpage  on dev-1, calls reviews.mesh and ratings.mesh through the mesh");
    println!("  reviews      v1 on dev-2, v2 on dev-3, v3 on dev-4");
    println!("  ratings      on dev-2 (asks mysqldb), and on dev-3 where it fails {FLAKY_PERCENT}% of requests");
    println!("  mysqldb      on dev-4 (TCP)");
    println!("  routes       reviews: end-user jason to v2, others 40/30/30 to v1/v2/v3; ratings: retries on 5xx");
    println!("  load         about 10 requests/s to productpage, from dev-1");
    println!();
    if let Some(addr) = dashboard {
        println!("Dashboard: http://{addr}/ui   (Prometheus metrics at http://{addr}/metrics)");
        println!();
    }
    println!("Try, in another terminal (dev-1's view):");
    println!("  export MESHD_SOCKET={}", socket.display());
    println!("  {meshctl} top");
    println!("  {meshctl} members");
    println!("  {meshctl} services");
    println!("  {meshctl} route get reviews");
    println!("  dig @{} -p {} reviews.mesh", dns.ip(), dns.port());
    println!("  curl http://$(dig +short @{} -p {} reviews.mesh):{PORT}/", dns.ip(), dns.port());
    println!("  curl http://{}:{LOAD_PORT}/   # productpage, as the load generator calls it", host(1));
    println!("  curl -H 'end-user: jason' http://{}:{LOAD_PORT}/", host(1));
    println!("  {meshctl} route apply -f {} --wait   # after editing the weights", route_file.display());
    if let Some(addr) = dashboard {
        println!("  curl http://{addr}/metrics   # dev-1's Prometheus metrics");
    }
    println!();
    println!("Ctrl-C stops it and removes the temporary directory.");

    let mut others = others.into_iter();
    let (Some(n2), Some(n3), Some(n4)) = (others.next(), others.next(), others.next()) else {
        bail!("three nodes should have joined")
    };
    let (a, b, c, d, ()) = tokio::join!(
        run_first,
        n2.run(stopped(stop_rx.clone())),
        n3.run(stopped(stop_rx.clone())),
        n4.run(stopped(stop_rx)),
        async {
            signals.recv().await;
            signals.exit_on_second();
            let _ = stop_tx.send(true);
        },
    );
    drop(tmp);
    if let Some(part) = [a, b, c, d].iter().find_map(|ran| ran.failed) {
        bail!("a node's {part} failed (see the log above)");
    }
    Ok(())
}

/// About ten requests a second to productpage, one in five as `end-user: jason`, until
/// the process ends.
async fn load_generator(target: SocketAddr) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for n in 0u64.. {
        tick.tick().await;
        let user = if n % 5 == 0 { "end-user: jason\r\n" } else { "" };
        tokio::spawn(async move {
            let call = async {
                let mut s = TcpStream::connect(target).await.ok()?;
                let head =
                    format!("GET /productpage HTTP/1.1\r\nHost: productpage.mesh\r\nConnection: close\r\n{user}\r\n");
                s.write_all(head.as_bytes()).await.ok()?;
                let mut reply = Vec::new();
                s.read_to_end(&mut reply).await.ok()
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), call).await;
        });
    }
}

/// productpage's answer: what `reviews.mesh` and `ratings.mesh` say, reached by name
/// like any client, with the caller's `end-user` and trace headers passed on.
async fn productpage(dns: SocketAddr, head: String) -> (u16, String) {
    let pass_on: String = head
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("end-user:") || l.starts_with("traceparent:") || l.starts_with("x-request-id:")
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    let call = |name: &'static str, port: u16| {
        let pass_on = pass_on.clone();
        async move {
            let vip = resolve(dns, &format!("{name}.mesh")).await?;
            let mut s = TcpStream::connect((vip, port)).await.ok()?;
            let req = format!("GET / HTTP/1.1\r\nHost: {name}.mesh\r\nConnection: close\r\n{pass_on}\r\n");
            s.write_all(req.as_bytes()).await.ok()?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).await.ok()?;
            let status: u16 = reply.split_whitespace().nth(1)?.parse().ok()?;
            Some((status, reply.split("\r\n\r\n").nth(1).map(str::to_owned).unwrap_or_default()))
        }
    };
    let both = async { tokio::join!(call("reviews", PORT), call("ratings", PORT + 1)) };
    match tokio::time::timeout(Duration::from_secs(5), both).await {
        Ok((Some((200, reviews)), Some((200, ratings)))) => {
            (200, format!("productpage (on dev-1) -> {reviews}  and {ratings}"))
        }
        Ok((reviews, ratings)) => {
            let say = |r: Option<(u16, String)>| r.map_or("no answer".to_owned(), |(s, b)| format!("{s} {}", b.trim()));
            (502, format!("productpage (on dev-1): reviews: {}; ratings: {}\n", say(reviews), say(ratings)))
        }
        Err(_) => (504, "productpage (on dev-1): reviews and ratings did not answer in time\n".to_owned()),
    }
}

/// What mysqldb says, reached by name through the mesh (a TCP service).
async fn stars(dns: SocketAddr) -> Option<String> {
    let call = async {
        let vip = resolve(dns, "mysqldb.mesh").await?;
        let mut s = TcpStream::connect((vip, DB_PORT)).await.ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.ok()?;
        (!reply.is_empty()).then_some(reply)
    };
    tokio::time::timeout(Duration::from_secs(3), call).await.ok().flatten()
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

/// A minimal HTTP/1.1 server: reads a request head, answers with `answer(head)`'s status
/// and body, closes.
async fn serve_http<F, Fut>(listener: TcpListener, answer: F)
where
    F: Fn(String) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (u16, String)> + Send,
{
    while let Ok((mut s, _)) = listener.accept().await {
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let (status, text) = answer(String::from_utf8_lossy(&head).into_owned()).await;
            let reason = if status == 200 { "OK" } else { "Error" };
            let reply = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

fn dev_config(dir: &Path, i: u8, proxy: &str, services: &str) -> anyhow::Result<Config> {
    let node = format!("dev-{i}");
    let data_dir = dir.join(&node);
    let socket = dir.join(format!("{node}.sock"));
    let http = format!("http = \"{}:{ADMIN_PORT}\"\n", host(i));
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
{proxy}

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
