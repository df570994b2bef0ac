//! Headless Chromium driven over the DevTools protocol, for the dashboard's tests: load a
//! page, read its DOM, and collect every console error, uncaught exception and request
//! URL it made. Debian's `chromium` must be installed (`.ci/run` installs it); a missing
//! browser fails the test, loudly.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// A running headless Chromium with one page attached.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Console errors and uncaught exceptions, as text.
    pub errors: Vec<String>,
    /// Every URL the page requested.
    pub requests: Vec<String>,
}

const CHROMIUM: &str = "/usr/bin/chromium";

impl Browser {
    /// Starts Chromium (headless, no network beyond what the page asks, a fresh profile)
    /// and attaches to its page.
    pub fn launch() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: the dashboard tests need Debian's chromium (apt-get install chromium)"
        );
        let profile = tempfile::Builder::new().prefix("mesh-chromium-").tempdir().expect("profile dir");
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                "--window-size=1400,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes its DevTools port into the profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Some(port) =
                std::fs::read_to_string(&port_file).ok().and_then(|t| t.lines().next()?.parse::<u16>().ok())
            {
                break port;
            }
            assert!(Instant::now() < deadline, "chromium did not open its DevTools port");
            std::thread::sleep(Duration::from_millis(100));
        };
        let page = loop {
            let list = http_get(port, "/json/list");
            let page = serde_json::from_str::<Value>(&list).ok().and_then(|v| {
                v.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"].as_str().map(str::to_owned)
            });
            if let Some(p) = page {
                break p;
            }
            assert!(Instant::now() < deadline, "chromium has no page: {list}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let (socket, _) = tungstenite::connect(page.as_str()).expect("DevTools websocket");
        let mut b = Browser { child, _profile: profile, socket, next_id: 0, errors: Vec::new(), requests: Vec::new() };
        for domain in ["Runtime.enable", "Log.enable", "Network.enable", "Page.enable"] {
            b.call(domain, json!({}));
        }
        b
    }

    /// One DevTools call: its result (events that arrive meanwhile are recorded).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let text = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket.send(Message::text(text)).expect("DevTools send");
        loop {
            let message = self.socket.read().expect("DevTools read");
            let Message::Text(text) = message else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.event(&v);
        }
    }

    fn event(&mut self, v: &Value) {
        let p = &v["params"];
        match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") if p["type"] == "error" || p["type"] == "assert" => {
                self.errors.push(format!("console: {}", p["args"]));
            }
            Some("Runtime.exceptionThrown") => self.errors.push(format!("exception: {}", p["exceptionDetails"])),
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {}", p["entry"]["text"]));
            }
            Some("Network.requestWillBeSent") => {
                if let Some(url) = p["request"]["url"].as_str() {
                    self.requests.push(url.to_owned());
                }
            }
            _ => {}
        }
    }

    /// Loads `url`.
    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// The value of a JavaScript expression in the page (awaited if a promise).
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }));
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy; panics with `what` after `limit`.
    pub fn wait_for(&mut self, expression: &str, limit: Duration, what: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(expression);
            let truthy = !(v.is_null() || v == false || v == 0 || v == "" || v.as_array().is_some_and(Vec::is_empty));
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: still {v} after {limit:?} (errors: {:?})", self.errors);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG screenshot of the whole page (beyond the window too), written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let size = &metrics["cssContentSize"];
        let (w, h) = (size["width"].as_f64().unwrap_or(1400.0), size["height"].as_f64().unwrap_or(900.0));
        let clip = json!({ "x": 0, "y": 0, "width": w, "height": h.min(4000.0), "scale": 1 });
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png", "clip": clip, "captureBeyondViewport": true }));
        let data = r["data"].as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD.decode(data).expect("base64");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET on the DevTools HTTP endpoint.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}
