use std::time::{Duration, Instant};

use super::limits::Limiter;
use super::*;
use crate::routing::http::{ambiguous_path, normalize_path};

fn policy(text: &str) -> PolicySpec {
    PolicySpec::from_file("p.toml", text).expect("a valid policy")
}

const REVIEWS: &str = r#"service = "reviews"
default = "deny"
[[allow]]
from = ["productpage", "node:bastion-*"]
[allow.http]
methods = ["GET"]
paths = [{ prefix = "/reviews" }, { exact = "/health" }]
headers = { "x-tenant" = { regex = "a|b" } }
[[allow]]
from = ["ratings"]
[[deny]]
from = ["*"]
http = { paths = [{ prefix = "/admin" }] }
"#;

fn ask(p: &PolicySpec, caller: Caller<'_>, method: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let lookup = move |name: &str| {
        let vals: Vec<&str> =
            headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
        (!vals.is_empty()).then(|| vals.join(", "))
    };
    let path = normalize_path(path);
    decide(Some(p), PolicyDefault::Allow, &caller, Some(&RequestView { method, path: &path, header: &lookup }))
}

const PRODUCTPAGE: Caller<'static> = Caller { node: "vm-1", service: Some("productpage") };
const RATINGS: Caller<'static> = Caller { node: "vm-2", service: Some("ratings") };
const BASTION: Caller<'static> = Caller { node: "bastion-3", service: None };
const STRANGER: Caller<'static> = Caller { node: "vm-9", service: None };

#[test]
fn deny_wins_then_allow_then_the_policy_default_then_the_mesh_default() {
    let p = policy(REVIEWS);
    let ok = ask(&p, PRODUCTPAGE, "GET", "/reviews/1", &[("x-tenant", "a")]);
    assert_eq!(ok, Decision { allow: true, by: By::Rule { kind: "allow", index: 0 } });
    assert!(ask(&p, BASTION, "GET", "/health", &[("x-tenant", "b")]).allow, "a node by glob");
    assert!(!ask(&p, PRODUCTPAGE, "POST", "/reviews/1", &[("x-tenant", "a")]).allow, "method");
    assert!(!ask(&p, PRODUCTPAGE, "GET", "/reviewsx", &[("x-tenant", "a")]).allow, "whole segments");
    assert!(!ask(&p, PRODUCTPAGE, "GET", "/reviews/1", &[("x-tenant", "ab")]).allow, "anchored regex");
    assert!(ask(&p, RATINGS, "DELETE", "/anything", &[]).allow, "no conditions: every request");
    let denied = ask(&p, RATINGS, "GET", "/admin/users", &[]);
    assert_eq!(denied, Decision { allow: false, by: By::Rule { kind: "deny", index: 0 } }, "deny wins");
    assert_eq!(ask(&p, STRANGER, "GET", "/reviews", &[]).by, By::PolicyDefault);
    // A connection: request conditions never match it.
    let conn = decide(Some(&p), PolicyDefault::Allow, &PRODUCTPAGE, None);
    assert!(!conn.allow);
    assert!(decide(Some(&p), PolicyDefault::Allow, &RATINGS, None).allow);
    // No policy, or one without a default: the mesh's.
    assert_eq!(decide(None, PolicyDefault::Deny, &RATINGS, None), Decision { allow: false, by: By::MeshDefault });
    let open = policy("service = \"x\"\n[[deny]]\nfrom = [\"node:vm-9\"]\n");
    assert!(decide(Some(&open), PolicyDefault::Allow, &RATINGS, None).allow);
    assert!(!decide(Some(&open), PolicyDefault::Allow, &STRANGER, None).allow);
    assert!(!decide(Some(&open), PolicyDefault::Deny, &RATINGS, None).allow);
}

/// Spellings of a denied path: each is decided exactly as its normalized form, or
/// refused before any rule sees it (an encoded slash or backslash).
#[test]
fn no_spelling_of_a_denied_path_is_allowed() {
    let p = policy("service = \"s\"\n[[deny]]\nfrom = [\"*\"]\nhttp = { paths = [{ prefix = \"/admin\" }] }\n");
    let denied = [
        "/admin",
        "/admin/",
        "/admin/x",
        "//admin",
        "///admin//x",
        "/./admin",
        "/x/../admin",
        "/x/y/../../admin",
        "/../admin",
        "/%61dmin",
        "/%61%64%6d%69%6e",
        "/adm%69n",
        "/%2e/admin",
        "/%2e%2e/admin",
        "/x/%2E%2E/admin",
        "/admin;x",
        "/admin;x=1/y",
        "/;x/admin",
        "/admin?x=1",
        "/admin#frag",
        "/admin/.",
        "/admin/./",
        "/admin/x/..",
    ];
    for path in denied {
        assert!(!ask(&p, RATINGS, "GET", path, &[]).allow, "{path} reached /admin");
    }
    for path in ["/admin%2f", "/admin%2Fx", "/x%2F..%2Fadmin", "/admin%5c", "/x\\..\\admin"] {
        assert!(ambiguous_path(path), "{path} must be refused before routing");
    }
    // What is not /admin stays allowed, case included (paths are case-sensitive).
    // An encoded `?` is part of its segment: `/admin%3f` is the path "/admin?" literally.
    for path in ["/administrator", "/ADMIN", "/x/admin", "/admin%252f", "/admin%3f", "/"] {
        assert!(ask(&p, RATINGS, "GET", path, &[]).allow, "{path} is not /admin");
    }
}

#[test]
fn headers_match_case_insensitively_on_their_combined_value() {
    let p = policy(
        "service = \"s\"\ndefault = \"deny\"\n[[allow]]\nfrom = [\"*\"]\nhttp = { headers = { \"x-tenant\" = \"a\" } }\n",
    );
    assert!(ask(&p, RATINGS, "GET", "/", &[("X-Tenant", "a")]).allow);
    assert!(!ask(&p, RATINGS, "GET", "/", &[("x-tenant", "a"), ("x-tenant", "b")]).allow, "a, b is not a");
    assert!(!ask(&p, RATINGS, "GET", "/", &[]).allow);
}

#[test]
fn a_bucket_passes_its_burst_then_its_rate() {
    let p = policy(
        "service = \"s\"\n[[rate_limit]]\nfrom = [\"*\"]\nrequests_per_second = 50\nburst = 10\n\
         [[rate_limit]]\nfrom = [\"ratings\"]\nrequests_per_second = 1000\nper_source = true\n",
    );
    let mut limiter = Limiter::default();
    let start = Instant::now();
    // 200 requests/s for 2 s, evenly: the burst, then 50/s.
    let mut passed = 0;
    let mut refused = None;
    for i in 0..400u32 {
        let now = start + Duration::from_millis(u64::from(i) * 5);
        match limiter.take(&p, &RATINGS, now) {
            Ok(()) => passed += 1,
            Err(l) => refused = Some(l),
        }
    }
    assert_eq!(passed, 10 + 100 - 1, "burst 10, then 50/s over 1.995 s (the bucket's maths, no clock race)");
    let refused = refused.expect("some refused");
    assert_eq!(refused.rule, 0);
    assert!(refused.retry_after <= Duration::from_millis(20), "{refused:?}");
    // The shared bucket is shared: another caller finds it empty.
    assert!(limiter.take(&p, &STRANGER, start + Duration::from_millis(1995)).is_err());
    assert_eq!(limiter.len(), 2, "one shared bucket, one for ratings");
}
