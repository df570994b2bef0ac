//! Per-request decisions for HTTP services, pure: which rule matches a request, and the
//! normalized path it matches on. The tries that follow are planned in `plan.rs`.
//!
//! Must not: do I/O or allocate per request beyond the matched rule's needs.

use std::collections::HashMap;

use mesh_proto::route::{HeaderMatch, HttpMatch, HttpRule, RouteSpec};

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
    if m.path_prefix.as_ref().is_some_and(|prefix| !path_prefix_matches(prefix, req.path)) {
        return false;
    }
    m.headers.iter().all(|(name, want)| header_matches(name, want, req))
}

/// Whether `path` (normalized) is under `prefix`, by whole segments: `/api` matches `/api`
/// and `/api/x`, not `/apix`.
pub fn path_prefix_matches(prefix: &str, path: &str) -> bool {
    path == prefix
        || (path.starts_with(prefix) && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')))
}

/// Whether the request's header `name` (its values joined) is `want`.
pub fn header_matches(name: &str, want: &HeaderMatch, req: &RequestView<'_>) -> bool {
    let Some(value) = (req.header)(name) else { return false };
    match want {
        HeaderMatch::Exact(v) => value == *v,
        HeaderMatch::Regex { regex } => compiled(regex).is_some_and(|re| re.is_match(&value)),
    }
}

/// A header regex, anchored to the whole value, compiled once per pattern (patterns
/// come from routes, which validation compiled already).
fn compiled(pattern: &str) -> Option<std::sync::Arc<mesh_proto::route::HeaderRegex>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<mesh_proto::route::HeaderRegex>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(re) = cache.get(pattern) {
        return Some(re.clone());
    }
    let re = Arc::new(mesh_proto::route::header_regex(pattern).ok()?);
    if cache.len() > 10_000 {
        cache.clear();
    }
    cache.insert(pattern.to_owned(), re.clone());
    Some(re)
}

/// Whether a request path is refused before any rule sees it: an encoded `/` or `\`
/// (`%2F`, `%5C`), or a raw `\`, which servers split into segments differently, so that
/// no rule on `/admin` could be sure to cover `/admin%2Fx`.
pub fn ambiguous_path(raw: &str) -> bool {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    let b = path.as_bytes();
    b.contains(&b'\\')
        || b.windows(3)
            .any(|w| w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c")))
}

/// The path as rules see it: no query, `.` and `..` segments resolved, repeated slashes
/// merged, percent-encoded unreserved characters decoded (`%61` is `a`), matrix
/// parameters (`;x` in a segment) left out, so that `/api/../admin`, `//admin` or
/// `/admin;x` cannot slip past a rule on `/admin`. Case is kept: paths are
/// case-sensitive (RFC 3986 6.2.2.1), so `/ADMIN` is another path.
pub fn normalize_path(raw: &str) -> String {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    let decoded = decode_unreserved(path);
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').map(|s| s.split(';').next().unwrap_or("")) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_before_matching() {
        assert_eq!(normalize_path("/api/../admin?x=1"), "/admin");
        assert_eq!(normalize_path("//admin/./x/"), "/admin/x/");
        assert_eq!(normalize_path("/%61dmin"), "/admin");
        assert_eq!(normalize_path("/a%2Fb"), "/a%2Fb", "an encoded slash stays encoded");
        assert!(ambiguous_path("/a%2fb") && ambiguous_path("/a%5Cb") && ambiguous_path("/a\\b"));
        assert!(!ambiguous_path("/a%252fb") && !ambiguous_path("/a?x=%2F"));
        assert_eq!(normalize_path("/admin;x=1/y;z"), "/admin/y");
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
}
