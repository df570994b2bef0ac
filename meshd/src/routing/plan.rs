//! The tries of one HTTP request, planned without IO: which instance to try next (the
//! rule's subset by weight, ejected outliers left out, untried instances first, then
//! power of two choices over requests in flight), whether a try's outcome goes back to
//! the client or is tried again, and what the client hears when every try failed. The
//! proxy carries the plan out (`proxy/http.rs`) and keeps the shared state it reads
//! (the budget, the ejections, the loads).
//!
//! Must not: do IO, sleep, or read a clock (the time is an argument).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use mesh_proto::route::{Budget, HttpRule, RetryOn};
use rand::RngExt;

use super::{pick_p2c, Tables, Target};

/// One instance of a service, as ejection, loads and connection pools know it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    pub node: String,
    pub service: String,
    pub port: u16,
}

impl InstanceKey {
    pub fn of(t: &Target) -> InstanceKey {
        InstanceKey { node: t.node.clone(), service: t.service.clone(), port: t.port }
    }

    /// Whether `t` is this instance.
    pub fn is(&self, t: &Target) -> bool {
        self.port == t.port && self.node == t.node && self.service == t.service
    }
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.node, self.service, self.port)
    }
}

/// Why a try failed without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The instance could not be reached.
    Connect,
    /// The connection broke before a response.
    Reset,
    /// No response within the try's timeout.
    Timeout,
}

/// How one try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    Failed(Failure),
}

impl Outcome {
    /// Whether it counts against the instance for outlier ejection.
    pub fn failed(self) -> bool {
        !matches!(self, Outcome::Status(s) if s < 500)
    }
}

/// What to do after a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand this response to the client.
    Return,
    /// Try again, if the retry budget grants it; else hand over the last outcome.
    Retry,
    /// No more tries: hand over the last outcome.
    Stop,
}

/// The tries of one request under its rule.
#[derive(Debug)]
pub struct Tries<'r> {
    rule: Option<&'r HttpRule>,
    attempts: u32,
    made: u32,
}

impl<'r> Tries<'r> {
    /// A request matched to `rule` (if any); only a `replayable` body (buffered) can be
    /// sent more than once.
    pub fn new(rule: Option<&'r HttpRule>, replayable: bool) -> Tries<'r> {
        let retries = rule.and_then(|r| r.retries.as_ref()).map_or(0, |r| if replayable { r.attempts } else { 0 });
        Tries { rule, attempts: 1 + retries, made: 0 }
    }

    /// The deadline of each try, when the rule sets one.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.rule.and_then(|r| r.retries.as_ref()).and_then(|r| r.per_try_timeout)
    }

    /// The retry budget that grants the next try.
    pub fn budget(&self) -> Budget {
        self.rule.and_then(|r| r.retries.as_ref()).and_then(|r| r.budget).unwrap_or_default()
    }

    /// Whether the next try is a retry (it needs the budget's grant).
    pub fn next_is_retry(&self) -> bool {
        self.made > 0
    }

    fn retries_on(&self, what: RetryOn) -> bool {
        self.rule.and_then(|r| r.retries.as_ref()).is_some_and(|r| r.on.contains(&what))
    }

    /// A try ended: return it, try again, or stop.
    pub fn after(&mut self, outcome: Outcome) -> Verdict {
        self.made += 1;
        let retry = match outcome {
            Outcome::Status(s) if s < 500 || !self.retries_on(RetryOn::ServerError) => return Verdict::Return,
            Outcome::Status(_) => true,
            Outcome::Failed(Failure::Connect) => self.retries_on(RetryOn::ConnectFailure),
            Outcome::Failed(Failure::Reset | Failure::Timeout) => self.retries_on(RetryOn::Reset),
        };
        if retry && self.made < self.attempts {
            Verdict::Retry
        } else {
            Verdict::Stop
        }
    }
}

/// What the client hears when no try produced a response: the status and its text.
pub fn exhausted(last: Option<Failure>) -> (u16, &'static str) {
    match last {
        Some(Failure::Timeout) => (504, "the instance did not answer in time\n"),
        _ => (502, "no instance could be reached\n"),
    }
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
    states: HashMap<InstanceKey, EjectState>,
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

    pub fn is_ejected(&self, key: &InstanceKey, now: Instant) -> bool {
        self.states.get(key).and_then(|s| s.until).is_some_and(|t| now < t)
    }

    /// Records a result; `peers` are the keys of the instances it is chosen among, so no
    /// more than half of them are out at once. True when this ejected the instance.
    pub fn record(&mut self, key: &InstanceKey, failed: bool, peers: &[InstanceKey], now: Instant) -> bool {
        let ejected_now = peers.iter().filter(|p| self.is_ejected(p, now)).count();
        let s = self.states.entry(key.clone()).or_default();
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

/// The next instance for a request to `service` (or its `pinned` subset) under `rule`:
/// the subset by the rule's weights among subsets with an available instance, then
/// among that subset's healthy instances (ejected ones left out while any other is
/// available) one not `tried` yet if there is one, by power of two choices on `load`.
/// Also returns the subset chosen.
#[allow(clippy::too_many_arguments)]
pub fn choose<'t, R: RngExt>(
    tables: &'t Tables,
    service: &str,
    pinned: Option<&str>,
    rule: Option<&HttpRule>,
    tried: &[InstanceKey],
    ejections: &Ejections,
    now: Instant,
    load: impl Fn(&Target) -> usize,
    rng: &mut R,
) -> Option<(&'t Target, Option<String>)> {
    let any_ejected = ejections.any();
    let available = |name: &str| -> Vec<&'t Target> {
        let healthy = tables.healthy(name);
        if !any_ejected {
            return healthy;
        }
        let kept: Vec<&Target> =
            healthy.iter().copied().filter(|t| !ejections.is_ejected(&InstanceKey::of(t), now)).collect();
        if kept.is_empty() {
            healthy
        } else {
            kept
        }
    };
    let (candidates, subset) = match (pinned, rule.and_then(|r| r.to.as_ref())) {
        (Some(s), _) => (available(&format!("{s}.{service}")), Some(s.to_owned())),
        (None, Some(to)) => {
            let roll: u64 = rng.random();
            let (subset, targets) = tables.split(service, to, roll, available)?;
            (targets, Some(subset.to_owned()))
        }
        (None, None) => (available(service), None),
    };
    let fresh: Vec<usize> = (0..candidates.len()).filter(|i| !tried.iter().any(|k| k.is(candidates[*i]))).collect();
    let pool: Vec<usize> = if fresh.is_empty() { (0..candidates.len()).collect() } else { fresh };
    let pick = pick_p2c(pool.len(), &[], |i| load(candidates[pool[i]]), rng)?;
    Some((candidates[pool[pick]], subset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(on: &[RetryOn], attempts: u32) -> HttpRule {
        let text = format!(
            "name = \"s\"\nservice = \"s\"\n[[http]]\nretries = {{ attempts = {attempts}, on = [{}] }}\n",
            on.iter()
                .map(|o| match o {
                    RetryOn::ServerError => "\"5xx\"",
                    RetryOn::ConnectFailure => "\"connect-failure\"",
                    RetryOn::Reset => "\"reset\"",
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        let spec = mesh_proto::route::RouteSpec::from_file("r.toml", &text).expect("route");
        spec.http.into_iter().next().expect("a rule")
    }

    #[test]
    fn a_success_returns_and_a_5xx_returns_unless_retried_on() {
        let mut plain = Tries::new(None, true);
        assert_eq!(plain.after(Outcome::Status(503)), Verdict::Return, "no rule: a 5xx is the answer");
        let r = rule(&[RetryOn::ServerError], 2);
        let mut t = Tries::new(Some(&r), true);
        assert!(!t.next_is_retry());
        assert_eq!(t.after(Outcome::Status(503)), Verdict::Retry);
        assert!(t.next_is_retry());
        assert_eq!(t.after(Outcome::Status(502)), Verdict::Retry);
        assert_eq!(t.after(Outcome::Status(500)), Verdict::Stop, "1 + 2 attempts");
        let mut t = Tries::new(Some(&r), true);
        assert_eq!(t.after(Outcome::Status(200)), Verdict::Return);
    }

    #[test]
    fn failures_retry_only_on_their_condition_and_only_with_a_replayable_body() {
        let r = rule(&[RetryOn::ConnectFailure], 3);
        let mut t = Tries::new(Some(&r), true);
        assert_eq!(t.after(Outcome::Failed(Failure::Connect)), Verdict::Retry);
        assert_eq!(t.after(Outcome::Failed(Failure::Reset)), Verdict::Stop, "not retried on reset");
        let mut streamed = Tries::new(Some(&r), false);
        assert_eq!(streamed.after(Outcome::Failed(Failure::Connect)), Verdict::Stop, "a streamed body goes once");
        assert_eq!(exhausted(Some(Failure::Timeout)).0, 504);
        assert_eq!(exhausted(Some(Failure::Connect)).0, 502);
        assert!(Outcome::Status(503).failed() && Outcome::Failed(Failure::Reset).failed());
        assert!(!Outcome::Status(404).failed());
    }

    #[test]
    fn choice_prefers_untried_and_not_ejected_instances() {
        let target = |node: &str| Target {
            service: "s".to_owned(),
            node: node.to_owned(),
            addr: std::net::IpAddr::from([127, 0, 0, 1]),
            port: 80,
            labels: Default::default(),
            healthy: true,
        };
        let mut tables = Tables::default();
        tables.services.insert(
            "s".to_owned(),
            super::super::ServiceTable { targets: vec![target("a"), target("b")], ..Default::default() },
        );
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
        let none = Ejections::default();
        let now = Instant::now();
        let tried = [InstanceKey::of(&target("a"))];
        for _ in 0..20 {
            let (t, subset) = choose(&tables, "s", None, None, &tried, &none, now, |_| 0, &mut rng).expect("one");
            assert_eq!((t.node.as_str(), subset), ("b", None), "the untried instance");
        }
        let mut ejected = Ejections::default();
        let peers = [InstanceKey::of(&target("a")), InstanceKey::of(&target("b"))];
        for _ in 0..Ejections::CONSECUTIVE {
            ejected.record(&peers[1], true, &peers, now);
        }
        for _ in 0..20 {
            let (t, _) = choose(&tables, "s", None, None, &[], &ejected, now, |_| 0, &mut rng).expect("one");
            assert_eq!(t.node, "a", "b is ejected");
        }
        let all = [peers[0].clone(), peers[1].clone()];
        assert!(choose(&tables, "s", None, None, &all, &ejected, now, |_| 0, &mut rng).is_some(), "all tried: any");
        assert!(choose(&tables, "t", None, None, &[], &none, now, |_| 0, &mut rng).is_none(), "unknown service");
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
        let key = |node: &str| InstanceKey { node: node.to_owned(), service: "s".to_owned(), port: 80 };
        let (a, b) = (key("a"), key("b"));
        let peers = vec![a.clone(), b.clone()];
        let t = Instant::now();
        for _ in 0..4 {
            assert!(!e.record(&a, true, &peers, t));
        }
        assert!(!e.record(&a, false, &peers, t), "a success resets the count");
        for _ in 0..4 {
            e.record(&a, true, &peers, t);
        }
        assert!(e.record(&a, true, &peers, t), "the fifth in a row ejects");
        assert!(e.is_ejected(&a, t));
        for _ in 0..10 {
            assert!(!e.record(&b, true, &peers, t), "never more than half");
        }
        assert!(!e.is_ejected(&a, t + Ejections::BASE), "back after the base time");
    }
}
