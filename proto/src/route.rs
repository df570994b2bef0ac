//! Route files (`meshctl route apply -f`): how a service's traffic is split, matched,
//! retried, mirrored and faulted. Validated in full before anything is stored; every
//! error names the file, line and key. The format is documented in docs/routes.md.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::input::{InputError, Source};

/// One route: the rules for one service. Applying it again makes a new revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The route's name: the service's (one route per service). Optional; when given it
    /// must be the service's name.
    #[serde(default)]
    pub name: String,
    /// The service whose traffic it governs. Required.
    pub service: String,
    /// Named subsets of the service's instances, by labels (`v1 = { version = "v1" }`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// HTTP rules, first match wins (services with `protocol = "http"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRule>,
    /// TCP rules (services with `protocol = "tcp"`): the first one applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRule {
    /// Conditions that must all hold; none: every request.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<HttpMatch>,
    /// Weighted subsets; none: all healthy instances. `to = []` is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Destination>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// For the whole request, retries included. Default: none.
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderMatch>,
}

/// A header's value: exactly this, or matching a regular expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderMatch {
    Exact(String),
    Regex { regex: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub subset: String,
    /// A non-negative integer; at least one destination of a rule must be above zero.
    /// Default: 1.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub subset: String,
    /// Percent of requests copied, 0 to 100. Default: 100.
    #[serde(default = "hundred")]
    pub percent: u32,
}

fn hundred() -> u32 {
    100
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first try (Istio's meaning), at most 10.
    pub attempts: u32,
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// What to retry on. Default: `5xx`, `connect-failure` and `reset`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// How many retries the service may take, per second. Default: 20% of its requests,
    /// and at least 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// A retry budget: retries may be at most `percent` of a service's requests in a second,
/// but `min_per_second` are always allowed (so a quiet service can retry at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// 0 to 100. Default: 20.
    #[serde(default = "twenty")]
    pub percent: u32,
    /// Default: 10.
    #[serde(default = "ten")]
    pub min_per_second: u32,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget { percent: twenty(), min_per_second: ten() }
    }
}

fn twenty() -> u32 {
    20
}

fn ten() -> u32 {
    10
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ServerError, RetryOn::ConnectFailure, RetryOn::Reset]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryOn {
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    #[serde(rename = "reset")]
    Reset,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abort {
    pub status: u16,
    pub percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    #[serde(with = "crate::duration")]
    pub fixed: Duration,
    pub percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRule {
    /// Weighted subsets; none: all healthy instances. `to = []` is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Destination>>,
}

impl RouteSpec {
    /// Parses and validates a route file.
    pub fn from_file(file: &str, text: &str) -> Result<RouteSpec, InputError> {
        let src = Source::new(file, text);
        let mut spec: RouteSpec = src.parse()?;
        if spec.name.is_empty() {
            spec.name = spec.service.clone();
        }
        spec.validate(&src)?;
        Ok(spec)
    }

    /// Everything serde cannot check. (Whether the rules fit the service's protocol
    /// needs the catalog: see [`RouteSpec::check_protocol`].)
    pub fn validate(&self, src: &Source<'_>) -> Result<(), InputError> {
        let label = |key: &str, v: &str, what: &str| {
            if crate::is_dns_label(v) {
                Ok(())
            } else {
                Err(src.error(key, format!("'{v}' is not a valid {what}: {}", crate::DNS_LABEL_RULE)))
            }
        };
        label("service", &self.service, "service name")?;
        if self.name != self.service {
            // One route per service: two routes for one service would fight over its
            // traffic, and under gossip only one key per service resolves cleanly.
            return Err(src.error(
                "name",
                format!(
                    "a route is named after the service it governs (one route per service): \
                     use name = \"{}\", or leave name out",
                    self.service
                ),
            ));
        }
        for (name, labels) in &self.subsets {
            label(&format!("subsets.{name}"), name, "subset name")?;
            if labels.is_empty() {
                return Err(src.error(&format!("subsets.{name}"), "a subset selects on at least one label"));
            }
            if labels.iter().any(|(k, v)| k.is_empty() || v.is_empty()) {
                return Err(src.error(&format!("subsets.{name}"), "label names and values must not be empty"));
            }
        }
        if !self.http.is_empty() && !self.tcp.is_empty() {
            return Err(src.error("tcp", "a route has http rules or tcp rules, not both"));
        }
        for (i, rule) in self.http.iter().enumerate() {
            let at = format!("http[{i}]");
            self.check_to(src, &at, rule.to.as_deref())?;
            if let Some(m) = &rule.mirror {
                self.check_subset(src, &format!("{at}.mirror.subset"), &m.subset)?;
                percent(src, &format!("{at}.mirror.percent"), m.percent)?;
            }
            if rule.timeout.is_some_and(|t| t < MIN_TIMEOUT) {
                return Err(src.error(
                    &format!("{at}.timeout"),
                    format!(
                        "timeout must be at least {} (leave it out for none)",
                        crate::duration::format(MIN_TIMEOUT)
                    ),
                ));
            }
            if let Some(r) = &rule.retries {
                if r.attempts > 10 {
                    return Err(src.error(&format!("{at}.retries.attempts"), "attempts must be at most 10"));
                }
                if r.on.is_empty() {
                    return Err(src.error(&format!("{at}.retries.on"), "name at least one condition to retry on"));
                }
                if let Some(b) = &r.budget {
                    percent(src, &format!("{at}.retries.budget.percent"), b.percent)?;
                    if b.min_per_second > 100_000 {
                        return Err(src.error(&format!("{at}.retries.budget.min_per_second"), "at most 100000"));
                    }
                }
                match (r.per_try_timeout, rule.timeout) {
                    (Some(t), _) if t < MIN_TIMEOUT => {
                        return Err(src.error(
                            &format!("{at}.retries.per_try_timeout"),
                            format!("must be at least {}", crate::duration::format(MIN_TIMEOUT)),
                        ));
                    }
                    (Some(per_try), Some(total)) if per_try > total => {
                        return Err(src.error(
                            &format!("{at}.retries.per_try_timeout"),
                            format!(
                                "per_try_timeout ({}) does not fit inside the rule's timeout ({})",
                                crate::duration::format(per_try),
                                crate::duration::format(total)
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            if let Some(f) = &rule.fault {
                if let Some(a) = &f.abort {
                    if !(200..=599).contains(&a.status) {
                        return Err(
                            src.error(&format!("{at}.fault.abort.status"), "status must be an HTTP status, 200 to 599")
                        );
                    }
                    percent(src, &format!("{at}.fault.abort.percent"), a.percent)?;
                }
                if let Some(d) = &f.delay {
                    percent(src, &format!("{at}.fault.delay.percent"), d.percent)?;
                }
            }
            if let Some(m) = &rule.matches {
                for (key, path) in [("path_prefix", &m.path_prefix), ("path_exact", &m.path_exact)] {
                    if path.as_ref().is_some_and(|p| !p.starts_with('/')) {
                        return Err(src.error(&format!("{at}.match.{key}"), "a path starts with '/'"));
                    }
                }
                if let Some(method) = &m.method {
                    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                        return Err(src.error(
                            &format!("{at}.match.method"),
                            format!("'{method}' is not an HTTP method (GET, POST, ...)"),
                        ));
                    }
                }
                for (name, value) in &m.headers {
                    let key = format!("{at}.match.headers.{name}");
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                        return Err(src.error(&key, format!("'{name}' is not a header name")));
                    }
                    if let HeaderMatch::Regex { regex } = value {
                        if let Err(e) = header_regex(regex) {
                            return Err(src.error(&key, e.to_string()));
                        }
                    }
                }
            }
        }
        for (i, rule) in self.tcp.iter().enumerate() {
            self.check_to(src, &format!("tcp[{i}]"), rule.to.as_deref())?;
        }
        Ok(())
    }

    fn check_to(&self, src: &Source<'_>, at: &str, to: Option<&[Destination]>) -> Result<(), InputError> {
        let Some(to) = to else { return Ok(()) };
        if to.is_empty() {
            return Err(src.error(&format!("{at}.to"), "to = [] sends nowhere: leave `to` out for all instances"));
        }
        for (j, d) in to.iter().enumerate() {
            self.check_subset(src, &format!("{at}.to[{j}].subset"), &d.subset)?;
        }
        if to.iter().all(|d| d.weight == 0) {
            return Err(src.error(&format!("{at}.to"), "at least one weight must be above zero"));
        }
        Ok(())
    }

    fn check_subset(&self, src: &Source<'_>, key: &str, subset: &str) -> Result<(), InputError> {
        if self.subsets.contains_key(subset) {
            return Ok(());
        }
        let defined: Vec<&str> = self.subsets.keys().map(String::as_str).collect();
        Err(src.error(
            key,
            if defined.is_empty() {
                format!("subset '{subset}' is not defined: add it under [subsets]")
            } else {
                format!("subset '{subset}' is not defined (defined: {})", defined.join(", "))
            },
        ))
    }

    /// Whether the rules fit the service's protocol (`http` or `tcp`): HTTP rules need
    /// an HTTP service; a TCP service takes TCP rules only.
    pub fn check_protocol(&self, protocol: &str) -> Result<(), String> {
        match protocol {
            "tcp" if !self.http.is_empty() => Err(format!(
                "service {} speaks tcp: its route takes [[tcp]] rules, not [[http]] (or declare protocol = \"http\")",
                self.service
            )),
            "http" if !self.tcp.is_empty() => {
                Err(format!("service {} speaks http: use [[http]] rules, which see each request", self.service))
            }
            _ => Ok(()),
        }
    }

    /// The route as TOML, for `meshctl route get` and diffs.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Every subset the rules send to or mirror to.
    pub fn used_subsets(&self) -> impl Iterator<Item = &str> {
        let http = self.http.iter().flat_map(|r| {
            r.to.iter().flatten().map(|d| d.subset.as_str()).chain(r.mirror.iter().map(|m| m.subset.as_str()))
        });
        http.chain(self.tcp.iter().flat_map(|r| r.to.iter().flatten().map(|d| d.subset.as_str())))
    }
}

/// What changed from `before` to `after`, one line a key, each named by the path that
/// validation errors use, with the subset's name for a destination
/// (`~ http[1].to[v1].weight: 80 -> 50`, `+ subsets.v3 = {...}`, `- http[2] = {...}`).
pub fn changes<S: Serialize>(before: &S, after: &S) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(before), serde_json::to_value(after)) else {
        return vec!["~ the whole file (cannot compare its revisions)".to_owned()];
    };
    let mut out = Vec::new();
    compare("", &a, &b, &mut out);
    out
}

fn compare(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => compare(&join(k), va, vb, out),
                    (Some(va), None) => out.push(format!("- {} = {va}", join(k))),
                    (None, Some(vb)) => out.push(format!("+ {} = {vb}", join(k))),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            // Destinations pair up by subset (a reordered list is no change of weight);
            // rules by position, since their order is their meaning.
            let by_subset = |v: &Value| v.get("subset").and_then(Value::as_str).map(str::to_owned);
            let keyed = x.iter().chain(y).all(|v| by_subset(v).is_some());
            if keyed {
                let name = |v: &Value| by_subset(v).unwrap_or_default();
                for va in x {
                    match y.iter().find(|vb| name(vb) == name(va)) {
                        Some(vb) => compare(&format!("{path}[{}]", name(va)), va, vb, out),
                        None => out.push(format!("- {path}[{}] = {va}", name(va))),
                    }
                }
                for vb in y.iter().filter(|vb| !x.iter().any(|va| name(va) == name(vb))) {
                    out.push(format!("+ {path}[{}] = {vb}", name(vb)));
                }
            } else {
                for i in 0..x.len().max(y.len()) {
                    match (x.get(i), y.get(i)) {
                        (Some(va), Some(vb)) => compare(&format!("{path}[{i}]"), va, vb, out),
                        (Some(va), None) => out.push(format!("- {path}[{i}] = {va}")),
                        (None, Some(vb)) => out.push(format!("+ {path}[{i}] = {vb}")),
                        (None, None) => {}
                    }
                }
            }
        }
        (x, y) if x != y => out.push(format!("~ {path}: {x} -> {y}")),
        _ => {}
    }
}

fn percent(src: &Source<'_>, key: &str, p: u32) -> Result<(), InputError> {
    if p > 100 {
        return Err(src.error(key, "percent must be between 0 and 100"));
    }
    Ok(())
}

/// The shortest request timeout and per-try timeout: below it no request could succeed.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// The largest compiled form (NFA) of a header regex (the regex crate's default is
/// 10 MiB): a route applies on every host, so one pattern must not cost each of them
/// much. Matching is linear in the header's length times this size.
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// The lazy DFA's cache per matching thread; past it the search falls back to one that
/// uses no more memory.
pub const REGEX_DFA_LIMIT: usize = 256 * 1024;

/// A compiled header pattern: matched without capture groups (a pattern of many groups
/// would otherwise cost memory per group and thread, which the size limit does not see).
pub type HeaderRegex = regex_automata::meta::Regex;

/// A header value pattern as routes match it: anchored to the whole value, within the
/// size limits, no captures. Validation and the data plane both compile it here.
pub fn header_regex(pattern: &str) -> Result<HeaderRegex, RegexError> {
    use regex_automata::meta::{Config, Regex};
    use regex_automata::nfa::thompson::WhichCaptures;
    let config = Config::new()
        .which_captures(WhichCaptures::None)
        .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
        .onepass_size_limit(Some(REGEX_SIZE_LIMIT))
        .dfa_size_limit(Some(REGEX_DFA_LIMIT))
        .hybrid_cache_capacity(REGEX_DFA_LIMIT);
    Regex::builder().configure(config).build(&format!("^(?:{pattern})$")).map_err(|e| match e.size_limit() {
        Some(limit) => RegexError::TooLarge(limit),
        None => RegexError::Syntax(e.to_string()),
    })
}

/// Why a header pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegexError {
    #[error("the regular expression compiles to more than {} KiB (the limit, so that matching stays cheap on every host): simplify it", .0 / 1024)]
    TooLarge(usize),
    #[error("not a regular expression: {0}")]
    Syntax(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
name = "reviews"
service = "reviews"

[subsets]
v1 = { version = "v1" }
v2 = { version = "v2" }

[[http]]
match = { headers = { "end-user" = "jason" } }
to = [{ subset = "v2" }]

[[http]]
to = [{ subset = "v1", weight = 90 }, { subset = "v2", weight = 10 }]
mirror = { subset = "v2", percent = 100 }
timeout = "10s"
retries = { attempts = 3, per_try_timeout = "2s", on = ["5xx", "connect-failure"] }
fault = { abort = { status = 503, percent = 0 }, delay = { fixed = "0s", percent = 0 } }
"#;

    #[test]
    fn the_design_example_parses_and_round_trips() {
        let spec = RouteSpec::from_file("r.toml", SEED).expect("valid");
        assert_eq!(spec.http.len(), 2);
        assert_eq!(
            spec.http[0].matches.as_ref().map(|m| m.headers["end-user"].clone()),
            Some(HeaderMatch::Exact("jason".into()))
        );
        assert_eq!(spec.http[1].retries.as_ref().map(|r| r.attempts), Some(3));
        let again = RouteSpec::from_file("r.toml", &spec.to_toml()).expect("its own TOML parses");
        assert_eq!(again, spec);
        let json = serde_json::to_string(&spec).expect("json");
        assert_eq!(serde_json::from_str::<RouteSpec>(&json).expect("from json"), spec);
    }

    #[test]
    fn every_mistake_names_its_key_and_line() {
        let base = "name = \"s\"\nservice = \"s\"\n[subsets]\nv1 = { version = \"v1\" }\n";
        let cases: &[(&str, usize, &str)] = &[
            ("[[tcp]]\nto = [{ subset = \"v1\", weight = -1 }]\n", 6, "weight"),
            ("[[tcp]]\nto = [{ subset = \"v1\", weight = 1.5 }]\n", 6, "weight"),
            ("[[tcp]]\nto = [{ subset = \"v1\", weight = 0 }]\n", 6, "tcp[0].to"),
            ("[[tcp]]\nto = []\n", 6, "tcp[0].to"),
            ("[[tcp]]\nto = [{ subset = \"v9\" }]\n", 6, "tcp[0].to[0].subset"),
            (
                "[[http]]\ntimeout = \"1s\"\nretries = { attempts = 2, per_try_timeout = \"2s\" }\n",
                7,
                "per_try_timeout",
            ),
            ("[[http]]\ntimeout = \"soon\"\n", 6, "timeout"),
            ("[[http]]\ntimeout = \"1ns\"\n", 6, "http[0].timeout"),
            ("[[http]]\nretries = { attempts = 2, per_try_timeout = \"1ns\" }\n", 6, "per_try_timeout"),
            ("[[http]]\nmirror = { subset = \"v1\", percent = 101 }\n", 6, "http[0].mirror.percent"),
            ("[[http]]\nretries = { attempts = 1, budget = { percent = 120 } }\n", 6, "http[0].retries.budget.percent"),
            ("[[http]]\nfault = { abort = { status = 42, percent = 5 } }\n", 6, "status"),
            ("[[http]]\nmatch = { headers = { x = { regex = \"(\" } } }\n", 6, "http[0].match.headers.x"),
            ("[[http]]\nmatch = { path_prefix = \"api\" }\n", 6, "path_prefix"),
            ("[[http]]\ntimout = \"1s\"\n", 6, "timout"),
            ("[[http]]\n[[tcp]]\n", 6, "tcp"),
        ];
        for (extra, line, key) in cases {
            let err = RouteSpec::from_file("r.toml", &format!("{base}{extra}")).expect_err(extra);
            assert_eq!(err.line, Some(*line), "{extra}: {err}");
            assert!(err.to_string().contains(key), "{extra}: {err}");
        }
        let no_subset = RouteSpec::from_file("r.toml", "service = \"s\"\n[[tcp]]\nto = [{ subset = \"a\" }]\n")
            .expect_err("undefined");
        assert!(no_subset.to_string().contains("add it under [subsets]"), "{no_subset}");
    }

    #[test]
    fn a_header_regex_that_compiles_too_large_is_refused_with_its_key_and_a_fair_one_is_not() {
        let base = "name = \"s\"\nservice = \"s\"\n";
        // The report's pattern: 54 KB, under the route size limit, 6 GB of RSS in matching.
        let huge = "(x|y)?".repeat(9_000);
        let text = format!("{base}[[http]]\nmatch = {{ headers = {{ x = {{ regex = \"{huge}\" }} }} }}\n");
        let err = RouteSpec::from_file("r.toml", &text).expect_err("too large");
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.to_string().contains("http[0].match.headers.x") && err.to_string().contains("KiB"), "{err}");
        let fair = "^(a|b|c)-[0-9]{1,8}$";
        let text = format!("{base}[[http]]\nmatch = {{ headers = {{ x = {{ regex = \"{fair}\" }} }} }}\n");
        RouteSpec::from_file("r.toml", &text).expect("an ordinary pattern");
    }

    #[test]
    fn a_route_is_named_after_its_service() {
        let err = RouteSpec::from_file("r.toml", "name = \"other\"\nservice = \"reviews\"\n").expect_err("two names");
        assert_eq!(err.line, Some(1), "{err}");
        assert!(err.to_string().contains("name = \"reviews\""), "{err}");
        let spec = RouteSpec::from_file("r.toml", "service = \"reviews\"\n").expect("the name defaults");
        assert_eq!(spec.name, "reviews");
    }

    #[test]
    fn changes_name_the_rule_and_subset_that_changed() {
        let before = RouteSpec::from_file("r.toml", SEED).expect("valid");
        let after_text = SEED.replace("weight = 90", "weight = 50").replace("timeout = \"10s\"\n", "");
        let after = RouteSpec::from_file("r.toml", &after_text).expect("valid");
        let c = changes(&before, &after);
        assert_eq!(c, vec!["- http[1].timeout = \"10s\"", "~ http[1].to[v1].weight: 90 -> 50"], "{c:?}");
        assert!(changes(&before, &before).is_empty());
        let mut reordered = before.clone();
        if let Some(to) = reordered.http[1].to.as_mut() {
            to.reverse();
        }
        assert!(changes(&before, &reordered).is_empty(), "reordering destinations changes nothing");
    }

    #[test]
    fn rules_must_fit_the_services_protocol() {
        let spec = RouteSpec::from_file("r.toml", SEED).expect("valid");
        assert!(spec.check_protocol("http").is_ok());
        assert!(spec.check_protocol("tcp").expect_err("http rules on tcp").contains("[[tcp]]"));
    }
}
