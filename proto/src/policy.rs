//! Policy files (`meshctl policy apply -f`): who may call a service, on which requests,
//! and how often. Validated in full before anything is stored; every error names the
//! file, line and key. The format is documented in docs/policies.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::input::{InputError, Source};
use crate::route::{header_regex, HeaderMatch};

/// One policy: the rules for one destination service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The policy's name: the service's (one policy per service). Optional; when given
    /// it must be the service's name.
    #[serde(default)]
    pub name: String,
    /// The service it protects. Required.
    pub service: String,
    /// What a caller that no rule allows gets: `allow` or `deny`. Default: the mesh-wide
    /// `[policy] default` of the destination node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Default>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Rule>,
    /// Deny rules win over allow rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limit: Vec<RateLimit>,
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Default {
    Allow,
    Deny,
}

/// Callers, and optionally the requests, a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Service names, `node:GLOB` for nodes by name (`*` any run of characters, `?` one),
    /// or `*` for every caller. At least one.
    pub from: Vec<String>,
    /// Request conditions, all of which must hold (HTTP services only); none: every
    /// connection or request of the callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConditions>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConditions {
    /// Any of these methods; none: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Any of these paths; none: any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathMatch>,
    /// Every one of these headers, as routes match them (a repeated header is matched
    /// on its values joined with `, `).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderMatch>,
}

/// A path, matched on the normalized path as routes match it: `prefix` by whole segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
}

/// A token bucket on each destination node, for the callers it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub from: Vec<String>,
    /// Tokens added per second (the sustained rate). At least 1.
    pub requests_per_second: u32,
    /// The bucket's size: requests that may pass at once. Default: `requests_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Each source (service, else node) gets its own bucket instead of sharing one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_source: bool,
}

impl RateLimit {
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second)
    }
}

/// Rules per policy, of each kind: far beyond what a service needs, and a bound on the
/// work per request.
pub const MAX_RULES: usize = 256;
/// Entries in one `from`, methods, paths or headers list.
pub const MAX_ITEMS: usize = 64;
/// The highest rate a limit may name.
pub const MAX_RATE: u32 = 1_000_000;

impl PolicySpec {
    /// Parses and validates a policy file.
    pub fn from_file(file: &str, text: &str) -> Result<PolicySpec, InputError> {
        let src = Source::new(file, text);
        let mut spec: PolicySpec = src.parse()?;
        if spec.name.is_empty() {
            spec.name = spec.service.clone();
        }
        spec.validate(&src)?;
        Ok(spec)
    }

    /// Everything serde cannot check.
    pub fn validate(&self, src: &Source<'_>) -> Result<(), InputError> {
        if !crate::is_dns_label(&self.service) {
            return Err(src.error(
                "service",
                format!("'{}' is not a valid service name: {}", self.service, crate::DNS_LABEL_RULE),
            ));
        }
        if self.name != self.service {
            return Err(src.error(
                "name",
                format!(
                    "a policy is named after the service it protects (one policy per service): \
                     use name = \"{}\", or leave name out",
                    self.service
                ),
            ));
        }
        for (kind, rules) in [("allow", &self.allow), ("deny", &self.deny)] {
            if rules.len() > MAX_RULES {
                return Err(src.error(kind, format!("at most {MAX_RULES} rules")));
            }
            for (i, rule) in rules.iter().enumerate() {
                let at = format!("{kind}[{i}]");
                check_from(src, &at, &rule.from)?;
                if let Some(h) = &rule.http {
                    check_http(src, &format!("{at}.http"), h)?;
                }
            }
        }
        if self.rate_limit.len() > MAX_RULES {
            return Err(src.error("rate_limit", format!("at most {MAX_RULES} rules")));
        }
        for (i, limit) in self.rate_limit.iter().enumerate() {
            let at = format!("rate_limit[{i}]");
            check_from(src, &at, &limit.from)?;
            if limit.requests_per_second == 0 || limit.requests_per_second > MAX_RATE {
                return Err(src.error(
                    &format!("{at}.requests_per_second"),
                    format!("must be from 1 to {MAX_RATE} (to refuse every request, use a deny rule)"),
                ));
            }
            if limit.burst.is_some_and(|b| b == 0 || b > MAX_RATE) {
                return Err(src.error(&format!("{at}.burst"), format!("must be from 1 to {MAX_RATE}")));
            }
        }
        Ok(())
    }

    /// Whether any rule looks at requests (so an HTTP service's requests are decided one
    /// by one, not its connections).
    pub fn per_request(&self) -> bool {
        !self.rate_limit.is_empty() || self.allow.iter().chain(&self.deny).any(|r| r.http.is_some())
    }

    /// Whether the rules fit the service's protocol: request conditions and rate limits
    /// need an HTTP service.
    pub fn check_protocol(&self, protocol: &str) -> Result<(), String> {
        if protocol == "http" || !self.per_request() {
            return Ok(());
        }
        Err(format!(
            "service {} is a {protocol} service: http conditions and rate limits apply to http services only",
            self.service
        ))
    }

    /// The policy as a TOML file.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

fn check_from(src: &Source<'_>, at: &str, from: &[String]) -> Result<(), InputError> {
    let key = format!("{at}.from");
    if from.is_empty() {
        return Err(src.error(&key, "name at least one caller: a service, node:GLOB, or *"));
    }
    if from.len() > MAX_ITEMS {
        return Err(src.error(&key, format!("at most {MAX_ITEMS} callers")));
    }
    for (j, who) in from.iter().enumerate() {
        let ok = match who.strip_prefix("node:") {
            Some(glob) => {
                !glob.is_empty()
                    && glob.len() <= 253
                    && glob.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-*?".contains(&b))
            }
            None => who == "*" || crate::is_dns_label(who),
        };
        if !ok {
            return Err(src.error(
                &format!("{key}[{j}]"),
                format!("'{who}' is not a caller: a service name, node:GLOB (node:web-*), or *"),
            ));
        }
    }
    Ok(())
}

fn check_http(src: &Source<'_>, at: &str, h: &HttpConditions) -> Result<(), InputError> {
    for (what, n) in [("methods", h.methods.len()), ("paths", h.paths.len()), ("headers", h.headers.len())] {
        if n > MAX_ITEMS {
            return Err(src.error(&format!("{at}.{what}"), format!("at most {MAX_ITEMS}")));
        }
    }
    for (j, m) in h.methods.iter().enumerate() {
        if m.is_empty() || m.len() > 32 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(
                src.error(&format!("{at}.methods[{j}]"), format!("'{m}' is not an HTTP method (GET, POST, ...)"))
            );
        }
    }
    for (j, p) in h.paths.iter().enumerate() {
        let key = format!("{at}.paths[{j}]");
        let path = match (&p.prefix, &p.exact) {
            (Some(p), None) | (None, Some(p)) => p,
            _ => return Err(src.error(&key, "give exactly one of prefix or exact")),
        };
        if !path.starts_with('/') {
            return Err(src.error(&key, "a path starts with '/'"));
        }
        if path.contains(['?', '#', '%', ';', '\\']) || path.split('/').any(|s| s == "." || s == "..") {
            return Err(src.error(
                &key,
                "write the path as requests are matched: decoded and normalized, without ?, #, %, ;, \\ or dot segments",
            ));
        }
    }
    for (name, value) in &h.headers {
        let key = format!("{at}.headers.{name}");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(src.error(&key, format!("'{name}' is not a header name")));
        }
        if let HeaderMatch::Regex { regex } = value {
            if let Err(e) = header_regex(regex) {
                return Err(src.error(&key, e.to_string()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"name = "reviews"
service = "reviews"
default = "deny"
[[allow]]
from = ["productpage", "node:bastion-*"]
[allow.http]
methods = ["GET"]
paths = [{ prefix = "/reviews/" }, { exact = "/health" }]
headers = { "x-tenant" = { regex = "^(a|b)$" } }

[[deny]]
from = ["*"]
http = { paths = [{ prefix = "/admin" }] }

[[rate_limit]]
from = ["*"]
requests_per_second = 100
burst = 200
"#;

    #[test]
    fn the_documented_example_parses() {
        let p = PolicySpec::from_file("p.toml", EXAMPLE).expect("valid");
        assert_eq!(p.default, Some(Default::Deny));
        assert_eq!(p.allow[0].from, ["productpage", "node:bastion-*"]);
        assert_eq!(p.rate_limit[0].burst(), 200);
        assert!(p.per_request());
        assert!(p.check_protocol("tcp").is_err());
        let again = PolicySpec::from_file("p.toml", &p.to_toml()).expect("round trip");
        assert_eq!(again, p);
    }

    #[test]
    fn every_mistake_names_its_line_and_key() {
        for (text, key, line) in [
            ("service = \"r\"\n[[allow]]\nfrom = []\n", "allow[0].from", 3),
            ("service = \"r\"\n[[allow]]\nfrom = [\"Node:x\"]\n", "allow[0].from[0]", 3),
            (
                "service = \"r\"\n[[deny]]\nfrom = [\"*\"]\nhttp = { methods = [\"get\"] }\n",
                "deny[0].http.methods[0]",
                4,
            ),
            (
                "service = \"r\"\n[[deny]]\nfrom = [\"*\"]\nhttp = { paths = [{ prefix = \"/a/../b\" }] }\n",
                "deny[0].http.paths[0]",
                4,
            ),
            (
                "service = \"r\"\n[[deny]]\nfrom = [\"*\"]\nhttp = { paths = [{ prefix = \"/a\", exact = \"/b\" }] }\n",
                "deny[0].http.paths[0]",
                4,
            ),
            (
                "service = \"r\"\n[[rate_limit]]\nfrom = [\"*\"]\nrequests_per_second = 0\n",
                "rate_limit[0].requests_per_second",
                4,
            ),
            ("service = \"r\"\ndefault = \"maybe\"\n", "default", 2),
            ("service = \"r\"\nname = \"other\"\n", "name", 2),
            (
                "service = \"r\"\n[[allow]]\nfrom = [\"*\"]\nhttp = { headers = { \"x\" = { regex = \"(\" } } }\n",
                "allow[0].http.headers.x",
                4,
            ),
            ("service = \"r\"\n[[allow]]\nfromm = [\"*\"]\n", "allow[0].fromm", 3),
        ] {
            let err = PolicySpec::from_file("p.toml", text).expect_err(text);
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
            assert_eq!(err.line, Some(line), "{text}: {err}");
        }
    }
}
