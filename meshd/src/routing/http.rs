//! Per-request decisions for HTTP services, pure: which rule matches a request, the
//! normalized path it matches on, the retry budget, outlier ejection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mesh_proto::route::{Budget, HeaderMatch, HttpMatch, HttpRule, RouteSpec};

/// What a rule can look at.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The normalized path ([`normalize_path`]).
    pub path: &'a str,
    /// A header's values, joined with ", " when sent several times (RFC 9110 5.3).
    pub header: &'a dyn Fn(&str) -> Option<String>,
}

/// The first rule whose conditions all hold, and its index.
pub fn match_rule<'r>(route: &'r RouteSpec, req: &RequestView<'_>) -> Option<(usize, &'r HttpRule)> {
    route.http.iter().enumerate().find(|(_, r)| r.matches.as_ref().is_none_or(|m| matches(m, req)))
}

fn matches(m: &HttpMatch, req: &RequestView<'_>) -> bool {
    if m.method.as_ref().is_some_and(|x| x != req.method) {
        return false;
    }
    if m.path_exact.as_ref().is_some_and(|p| p != req.path) {
        return false;
    }
    if let Some(prefix) = &m.path_prefix {
        // A prefix matches whole segments: /api matches /api and /api/x, not /apix.
        let ok = req.path == prefix
            || (req.path.starts_with(prefix.as_str())
                && (prefix.ends_with('/') || req.path.as_bytes().get(prefix.len()) == Some(&b'/')));
        if !ok {
            return false;
        }
    }
    m.headers.iter().all(|(name, want)| {
        let Some(value) = (req.header)(name) else { return false };
        match want {
            HeaderMatch::Exact(v) => value == *v,
            HeaderMatch::Regex { regex } => compiled(regex).is_some_and(|re| re.is_match(&value)),
        }
    })
}

/// A header regex, anchored to the whole value, compiled once per pattern (patterns
/// come from routes, which validation compiled already).
fn compiled(pattern: &str) -> Option<std::sync::Arc<regex::Regex>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<regex::Regex>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(re) = cache.get(pattern) {
        return Some(re.clone());
    }
    let re = Arc::new(regex::Regex::new(&format!("^(?:{pattern})$")).ok()?);
    if cache.len() > 10_000 {
        cache.clear();
    }
    cache.insert(pattern.to_owned(), re.clone());
    Some(re)
}

/// The path as rules see it: no query, `.` and `..` segments resolved, repeated slashes
/// merged, percent-encoded unreserved characters decoded (`%61` is `a`), so that
/// `/api/../admin` or `//admin` cannot slip past a rule on `/admin`.
pub fn normalize_path(raw: &str) -> String {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    let decoded = decode_unreserved(path);
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') && !out.is_empty();
    let mut s = format!("/{}", out.join("/"));
    if trailing {
        s.push('/');
    }
    s
}

fn decode_unreserved(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(c) = hex.filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c)) {
                out.push(char::from(c));
                i += 3;
                continue;
            }
        }
        out.push(char::from(b[i]));
        i += 1;
    }
    out
}

/// Retries at most a share of requests (by default 20%, with a floor of 10 per second),
/// per service and second: retries cannot multiply an outage. Each rule may set its own
/// share and floor (`retries.budget`).
#[derive(Default)]
pub struct RetryBudget {
    windows: HashMap<String, Window>,
}

struct Window {
    start: Instant,
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    const WINDOW: Duration = Duration::from_secs(1);

    fn window(&mut self, service: &str, now: Instant) -> &mut Window {
        if !self.windows.contains_key(service) {
            self.windows.insert(service.to_owned(), Window { start: now, requests: 0, retries: 0 });
        }
        let Some(w) = self.windows.get_mut(service) else { unreachable!("inserted above") };
        if now.duration_since(w.start) >= Self::WINDOW {
            *w = Window { start: now, requests: 0, retries: 0 };
        }
        w
    }

    pub fn request(&mut self, service: &str, now: Instant) {
        self.window(service, now).requests += 1;
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn try_retry(&mut self, service: &str, budget: &Budget, now: Instant) -> bool {
        let w = self.window(service, now);
        let allowed = (w.requests * u64::from(budget.percent) / 100).max(u64::from(budget.min_per_second));
        if w.retries < allowed {
            w.retries += 1;
            true
        } else {
            false
        }
    }
}

/// Outlier ejection: an instance with [`Ejections::CONSECUTIVE`] failures in a row (5xx
/// or connect failures) is left out for a base time that doubles on each ejection (at
/// most [`Ejections::MAX`]); never more than half of the instances a request chooses
/// from.
#[derive(Default)]
pub struct Ejections {
    states: HashMap<String, EjectState>,
}

#[derive(Default)]
struct EjectState {
    failures: u32,
    until: Option<Instant>,
    times: u32,
}

impl Ejections {
    pub const CONSECUTIVE: u32 = 5;
    pub const BASE: Duration = Duration::from_secs(5);
    pub const MAX: Duration = Duration::from_secs(300);

    /// Whether any instance was ever ejected (the common case is none: then requests
    /// skip the per-instance checks).
    pub fn any(&self) -> bool {
        self.states.values().any(|s| s.until.is_some())
    }

    pub fn is_ejected(&self, key: &str, now: Instant) -> bool {
        self.states.get(key).and_then(|s| s.until).is_some_and(|t| now < t)
    }

    /// Records a result; `peers` are the keys of the instances it is chosen among, so no
    /// more than half of them are out at once. True when this ejected the instance.
    pub fn record(&mut self, key: &str, failed: bool, peers: &[String], now: Instant) -> bool {
        let ejected_now = peers.iter().filter(|p| self.is_ejected(p, now)).count();
        let s = self.states.entry(key.to_owned()).or_default();
        if !failed {
            s.failures = 0;
            return false;
        }
        s.failures += 1;
        let already = s.until.is_some_and(|t| now < t);
        if s.failures >= Self::CONSECUTIVE && !already && (ejected_now + 1) * 2 <= peers.len() {
            let factor = 1u32 << s.times.min(6);
            s.until = Some(now + (Self::BASE * factor).min(Self::MAX));
            s.times += 1;
            s.failures = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_before_matching() {
        assert_eq!(normalize_path("/api/../admin?x=1"), "/admin");
        assert_eq!(normalize_path("//admin/./x/"), "/admin/x/");
        assert_eq!(normalize_path("/%61dmin"), "/admin");
        assert_eq!(normalize_path("/a%2Fb"), "/a%2Fb", "an encoded slash stays encoded");
        assert_eq!(normalize_path("/../../"), "/");
        assert_eq!(normalize_path(""), "/");
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let route = RouteSpec::from_file(
            "r.toml",
            r#"name = "s"
service = "s"
[subsets]
v1 = { version = "v1" }
v2 = { version = "v2" }
[[http]]
match = { headers = { "end-user" = "jason" } }
to = [{ subset = "v2" }]
[[http]]
match = { path_prefix = "/api", method = "POST", headers = { x-tier = { regex = "gold|silver" } } }
to = [{ subset = "v2" }]
[[http]]
to = [{ subset = "v1" }]
"#,
        )
        .expect("route");
        let ask = |method: &str, path: &str, headers: &[(&str, &str)]| {
            let headers: Vec<(String, String)> =
                headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            let lookup = move |name: &str| {
                let vals: Vec<&str> =
                    headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
                (!vals.is_empty()).then(|| vals.join(", "))
            };
            let path = normalize_path(path);
            match_rule(&route, &RequestView { method, path: &path, header: &lookup }).map(|(i, _)| i)
        };
        assert_eq!(ask("GET", "/", &[("end-user", "jason")]), Some(0));
        assert_eq!(ask("GET", "/", &[("end-user", "jason"), ("end-user", "x")]), Some(2), "combined value");
        assert_eq!(ask("POST", "/api/x", &[("x-tier", "gold")]), Some(1));
        assert_eq!(ask("POST", "/apix", &[("x-tier", "gold")]), Some(2), "whole segments");
        assert_eq!(ask("POST", "/api", &[("x-tier", "goldish")]), Some(2), "the regex matches the whole value");
        assert_eq!(ask("GET", "/api", &[("x-tier", "gold")]), Some(2));
    }

    #[test]
    fn the_retry_budget_has_a_floor_and_a_ratio() {
        let mut b = RetryBudget::default();
        let t = Instant::now();
        for _ in 0..100 {
            b.request("s", t);
        }
        let default = Budget::default();
        assert_eq!((0..50).filter(|_| b.try_retry("s", &default, t)).count(), 20, "20% of 100 requests");
        let later = t + Duration::from_secs(2);
        assert_eq!((0..50).filter(|_| b.try_retry("s", &default, later)).count(), 10, "the floor, in a fresh window");
    }

    #[test]
    fn a_rule_sets_its_own_retry_budget() {
        let mut b = RetryBudget::default();
        let t = Instant::now();
        for _ in 0..100 {
            b.request("s", t);
        }
        let half = Budget { percent: 50, min_per_second: 0 };
        assert_eq!((0..80).filter(|_| b.try_retry("s", &half, t)).count(), 50, "50% of 100 requests");
        let none = Budget { percent: 0, min_per_second: 0 };
        let later = t + Duration::from_secs(2);
        assert_eq!((0..10).filter(|_| b.try_retry("s", &none, later)).count(), 0, "a budget of nothing");
    }

    #[test]
    fn ejection_needs_consecutive_failures_and_keeps_half_the_instances() {
        let mut e = Ejections::default();
        let peers: Vec<String> = vec!["a".into(), "b".into()];
        let t = Instant::now();
        for _ in 0..4 {
            assert!(!e.record("a", true, &peers, t));
        }
        assert!(!e.record("a", false, &peers, t), "a success resets the count");
        for _ in 0..4 {
            e.record("a", true, &peers, t);
        }
        assert!(e.record("a", true, &peers, t), "the fifth in a row ejects");
        assert!(e.is_ejected("a", t));
        for _ in 0..10 {
            assert!(!e.record("b", true, &peers, t), "never more than half");
        }
        assert!(!e.is_ejected("a", t + Ejections::BASE), "back after the base time");
    }
}
