//! A TEST DOUBLE of the Kubernetes API server: no real one can run on these machines.
//! It speaks the real list/watch protocol for Services (`/api/v1/services`) and
//! EndpointSlices (`/apis/discovery.k8s.io/v1/endpointslices`) over HTTP/1.1: lists with
//! a `resourceVersion`, watches as chunked streams of JSON events from a given
//! `resourceVersion`, BOOKMARK events, and `410 Gone` (an ERROR event mid-watch, or a
//! watch from a version it no longer has) that forces the client to list again. Label
//! selectors `k=v` and `k` (comma-separated) are honoured. Namespaced paths take
//! server-side apply (PATCH: the body becomes the object), DELETE, GET and lists.
//! Everything else answers 404.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
}

/// What a path names: a kind, a namespace (None: all) and an object name (None: a list).
fn parse_path(path: &str) -> Option<(Kind, Option<String>, Option<String>)> {
    let (kind, rest) = if let Some(r) = path.strip_prefix("/api/v1") {
        (Kind::Service, r)
    } else if let Some(r) = path.strip_prefix("/apis/discovery.k8s.io/v1") {
        (Kind::EndpointSlice, r)
    } else {
        return None;
    };
    let resource = match kind {
        Kind::Service => "services",
        Kind::EndpointSlice => "endpointslices",
    };
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [r] if *r == resource => Some((kind, None, None)),
        ["namespaces", ns, r] if *r == resource => Some((kind, Some((*ns).to_owned()), None)),
        ["namespaces", ns, r, name] if *r == resource => Some((kind, Some((*ns).to_owned()), Some((*name).to_owned()))),
        _ => None,
    }
}

impl Kind {
    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Service => ("v1", "ServiceList"),
            Kind::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSliceList"),
        }
    }

    fn kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Service => ("v1", "Service"),
            Kind::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSlice"),
        }
    }
}

#[derive(Default)]
struct State {
    version: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    /// Every change: version, kind, event type, object.
    log: Vec<(u64, Kind, &'static str, Value)>,
    /// Watches from a version below this are answered 410 Gone.
    oldest: u64,
    /// Bumped to end every open watch with a 410 ERROR event.
    expiries: u64,
    /// Bumped to send every open watch a BOOKMARK.
    bookmarks: u64,
    /// Requests served, by kind: (lists, watches).
    requests: BTreeMap<Kind, (u64, u64)>,
}

/// The fake API server; stops with the test process.
#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl FakeApi {
    pub fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake API server listen");
        let addr = listener.local_addr().expect("addr");
        let api =
            FakeApi { addr, state: Arc::new((Mutex::new(State { version: 1, ..State::default() }), Condvar::new())) };
        let served = api.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let api = served.clone();
                std::thread::spawn(move || api.serve(conn));
            }
        });
        api
    }

    /// A kubeconfig that points at this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.addr
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces an object (`metadata.namespace` and `name` identify it).
    pub fn apply(&self, kind: Kind, mut object: Value) {
        let mut s = self.lock();
        s.version += 1;
        let v = s.version;
        let (api_version, k) = kind.kind();
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(k);
        object["metadata"]["resourceVersion"] = json!(v.to_string());
        let key = key_of(kind, &object);
        let event = if s.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        s.objects.insert(key, object.clone());
        s.log.push((v, kind, event, object));
        drop(s);
        self.state.1.notify_all();
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut s = self.lock();
        let Some(mut object) = s.objects.remove(&(kind, namespace.to_owned(), name.to_owned())) else { return };
        s.version += 1;
        let v = s.version;
        object["metadata"]["resourceVersion"] = json!(v.to_string());
        s.log.push((v, kind, "DELETED", object));
        drop(s);
        self.state.1.notify_all();
    }

    /// Ends every open watch with 410 Gone and forgets the history: watchers must list
    /// again.
    pub fn expire(&self) {
        let mut s = self.lock();
        s.expiries += 1;
        s.oldest = s.version;
        drop(s);
        self.state.1.notify_all();
    }

    /// Sends every open watch a BOOKMARK at the current version.
    pub fn bookmark(&self) {
        self.lock().bookmarks += 1;
        self.state.1.notify_all();
    }

    /// (lists, watches) served for `kind`.
    pub fn requests(&self, kind: Kind) -> (u64, u64) {
        self.lock().requests.get(&kind).copied().unwrap_or_default()
    }

    fn serve(&self, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut conn = conn;
        loop {
            let Some(head) = crate::read_head(&mut reader) else { return };
            let mut body = vec![0u8; head.content_length()];
            if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
                return;
            }
            let method = head.line.split_whitespace().next().unwrap_or("GET").to_owned();
            let target = head.line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let params: BTreeMap<String, String> =
                query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), decode(v))).collect();
            let Some((kind, namespace, name)) = parse_path(path) else {
                let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
                continue;
            };
            if let (Some(ns), Some(name)) = (&namespace, &name) {
                let (status, reply) = self.object(&method, kind, ns, name, &body);
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    reply.len()
                );
                if conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(reply.as_bytes())).is_err() {
                    return;
                }
                continue;
            }
            let selector = params.get("labelSelector").cloned().unwrap_or_default();
            if params.get("watch").map(String::as_str) == Some("true") {
                let from = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
                self.watch(conn, kind, &selector, from);
                return;
            }
            let body = {
                let mut s = self.lock();
                s.requests.entry(kind).or_default().0 += 1;
                let items: Vec<&Value> = s
                    .objects
                    .iter()
                    .filter(|((k, ns, _), o)| {
                        *k == kind && matches(&selector, o) && namespace.as_ref().is_none_or(|n| n == ns)
                    })
                    .map(|(_, o)| o)
                    .collect();
                let (api_version, list_kind) = kind.list_kind();
                json!({"apiVersion": api_version, "kind": list_kind, "metadata": {"resourceVersion": s.version.to_string()}, "items": items})
                    .to_string()
            };
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
            if conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body.as_bytes())).is_err() {
                return;
            }
        }
    }

    /// One object: PATCH (server-side apply: the body becomes the object), DELETE, GET.
    fn object(&self, method: &str, kind: Kind, ns: &str, name: &str, body: &[u8]) -> (&'static str, String) {
        let key = (kind, ns.to_owned(), name.to_owned());
        let not_found = || {
            let status = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{name} not found")});
            ("404 Not Found", status.to_string())
        };
        match method {
            "PATCH" => {
                let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
                    return ("400 Bad Request", json!({"kind": "Status", "code": 400}).to_string());
                };
                object["metadata"]["namespace"] = json!(ns);
                object["metadata"]["name"] = json!(name);
                self.apply(kind, object);
                let stored = self.lock().objects.get(&key).cloned().unwrap_or_default();
                ("200 OK", stored.to_string())
            }
            "DELETE" => {
                let Some(object) = self.lock().objects.get(&key).cloned() else { return not_found() };
                self.delete(kind, ns, name);
                ("200 OK", object.to_string())
            }
            _ => match self.lock().objects.get(&key) {
                Some(o) => ("200 OK", o.to_string()),
                None => not_found(),
            },
        }
    }

    /// The objects of `kind` in `namespace` whose labels match `selector`.
    pub fn list(&self, kind: Kind, namespace: &str, selector: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((k, ns, _), o)| *k == kind && ns == namespace && matches(selector, o))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// A watch from version `from`: the events after it, then new ones as they come.
    fn watch(&self, mut conn: TcpStream, kind: Kind, selector: &str, from: u64) {
        let (expiries, bookmarks, gone) = {
            let mut s = self.lock();
            s.requests.entry(kind).or_default().1 += 1;
            (s.expiries, s.bookmarks, from < s.oldest)
        };
        if gone {
            let body = gone_status().to_string();
            let head = format!(
                "HTTP/1.1 410 Gone\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body.as_bytes()));
            return;
        }
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            .is_err()
        {
            return;
        }
        let mut sent_up_to = from;
        let (mut seen_expiries, mut seen_bookmarks) = (expiries, bookmarks);
        let mut s = self.lock();
        loop {
            let mut out: Vec<Value> = Vec::new();
            for (v, k, event, object) in &s.log {
                if *v > sent_up_to && *k == kind && matches(selector, object) {
                    out.push(json!({"type": event, "object": object}));
                }
            }
            sent_up_to = s.version;
            if s.bookmarks != seen_bookmarks {
                seen_bookmarks = s.bookmarks;
                let (api_version, k) = kind.kind();
                out.push(json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": k, "metadata": {"resourceVersion": s.version.to_string()}}}));
            }
            let expired = s.expiries != seen_expiries;
            if expired {
                seen_expiries = s.expiries;
                out.push(json!({"type": "ERROR", "object": gone_status()}));
            }
            drop(s);
            for event in out {
                let line = format!("{event}\n");
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                if conn.write_all(chunk.as_bytes()).is_err() {
                    return;
                }
            }
            if expired {
                let _ = conn.write_all(b"0\r\n\r\n");
                return;
            }
            s = self.lock();
            let (guard, _) =
                self.state.1.wait_timeout(s, Duration::from_millis(500)).unwrap_or_else(|p| p.into_inner());
            s = guard;
        }
    }
}

fn gone_status() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410})
}

fn key_of(kind: Kind, o: &Value) -> (Kind, String, String) {
    let m = &o["metadata"];
    (kind, m["namespace"].as_str().unwrap_or_default().to_owned(), m["name"].as_str().unwrap_or_default().to_owned())
}

/// Whether `o` matches a selector of `k=v` and `k` terms.
fn matches(selector: &str, o: &Value) -> bool {
    let labels = &o["metadata"]["labels"];
    selector.split(',').filter(|t| !t.is_empty()).all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k.trim()].as_str() == Some(v.trim()),
        None => !labels[term.trim()].is_null(),
    })
}

/// Percent-decoding of a query value.
fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Service selected for import, with one port.
pub fn service(namespace: &str, name: &str, port_name: &str, port: u16, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    json!({
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {"ports": [{"name": port_name, "port": port, "protocol": "TCP"}], "selector": {"app": name}}
    })
}

/// An EndpointSlice of `service` with `(ip, ready, terminating)` endpoints on `port`.
pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    port_name: &str,
    port: u16,
    endpoints: &[(String, bool, bool)],
) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready, terminating)| {
            json!({"addresses": [ip], "conditions": {"ready": ready, "serving": *ready || *terminating, "terminating": terminating}})
        })
        .collect();
    json!({
        "metadata": {"namespace": namespace, "name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]
    })
}
