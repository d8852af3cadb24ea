//! Health checks, graceful drain, exact connection accounting and session persistence, with real TCP
//! through the lab. Needs root, bpffs and `LB_BIN` (`cargo xtask test` provides all three).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_tests::client::held_per_backend;
use lb_tests::config::{BackendConfig, ServiceConfig, to_toml};
use lb_tests::scenario::{self, Status, active_conns, service, status_shows, vip};
use lb_tests::{Lab, LabOptions, assert_eventually, hold, spread};

const CONCURRENCY: usize = 8;
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Probe period of the checked services; with rise = fall = 2 a transition takes 2-3 intervals.
const INTERVAL_MS: u64 = 200;
const RISE: u64 = 2;
const FALL: u64 = 2;
/// What a detection may take beyond the probes: the apply, `lb status` and the test's polling.
const SLACK: Duration = Duration::from_millis(500);

fn health_check_line() -> String {
    format!(
        "health_check = {{ kind = \"tcp\", interval_ms = {INTERVAL_MS}, timeout_ms = 100, rise = {RISE}, fall = {FALL} }}"
    )
}

fn start_lab() -> Lab {
    let opts = LabOptions {
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..LabOptions::default()
    };
    Lab::start(opts).expect("the lab starts")
}

fn lab_serving(services: &[ServiceConfig], extra_args: &[&str]) -> Lab {
    let mut lab = start_lab();
    lab.start_lb(0, &to_toml(services), extra_args)
        .expect("lb starts");
    wait_applied(&lab, services);
    lab
}

fn wait_applied(lab: &Lab, services: &[ServiceConfig]) {
    assert_eventually!(
        lab.lb_status_json(0)
            .is_ok_and(|s| services.iter().all(|svc| status_shows(&s, svc))),
        RELOAD_TIMEOUT,
        "lb0 never showed the configuration; last status: {:?}",
        lab.lb_status_json(0)
    );
}

fn status(lab: &Lab) -> Status {
    lab.lb_status_json(0).expect("lb status")
}

/// A backend's `state` in `lb status --json` (`active`, `draining`, `down`).
fn backend_state(status: &Status, service: &str, backend: SocketAddr) -> Option<String> {
    scenario::backend_state(status, service, backend).map(|(state, _)| state)
}

/// Polls until backend `i` of `service` shows `state`; returns how long that took.
fn time_until_state(lab: &Lab, service: &str, i: usize, state: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let addr = Lab::backend_addr(i, false);
    assert_eventually!(
        lab.lb_status_json(0)
            .is_ok_and(|s| backend_state(&s, service, addr).as_deref() == Some(state)),
        limit + Duration::from_secs(5),
        "b{i} never became {state}; status: {:?}",
        lab.lb_status_json(0)
    );
    start.elapsed()
}

#[test]
fn a_stopped_backend_leaves_new_flow_selection_and_comes_back() {
    let svc = service("web", vip(1, false), "rr", &[1, 1, 1]).with(health_check_line());
    let mut lab = lab_serving(std::slice::from_ref(&svc), &[]);
    let before = lab
        .in_client(|| spread(svc.vip, 300, CONCURRENCY))
        .expect("client");
    assert_eq!(before.failures, 0, "{:?}", before.failure_samples);
    assert_eq!(before.per_backend.len(), 3, "{before:?}");

    lab.stop_backend_server(1).expect("stop b1");
    let down_limit = Duration::from_millis((FALL + 1) * INTERVAL_MS) + SLACK;
    let took = time_until_state(&lab, "web", 1, "down", down_limit);
    assert!(
        took <= down_limit,
        "b1 went down after {took:?}, more than {down_limit:?}"
    );
    let log = lab.lb_log(0).expect("log");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("backend is down") && l.contains("198.18.2.12:80"))
            .count(),
        1,
        "one log line per transition:\n{log}"
    );

    let during = lab
        .in_client(|| spread(svc.vip, 300, CONCURRENCY))
        .expect("client");
    assert_eq!(
        during.failures, 0,
        "a new connection went to the stopped backend: {:?}",
        during.failure_samples
    );
    assert_eq!(during.count("b1"), 0, "{during:?}");
    assert_eq!(during.succeeded(), 300);

    lab.start_backend_server(1).expect("restart b1");
    let up_limit = Duration::from_millis((RISE + 1) * INTERVAL_MS) + SLACK;
    let took = time_until_state(&lab, "web", 1, "active", up_limit);
    assert!(
        took <= up_limit,
        "b1 came back after {took:?}, more than {up_limit:?}"
    );
    let after = lab
        .in_client(|| spread(svc.vip, 300, CONCURRENCY))
        .expect("client");
    assert_eq!(after.failures, 0, "{:?}", after.failure_samples);
    assert!(after.count("b1") > 50, "b1 is back in selection: {after:?}");
}

#[test]
fn a_draining_backend_keeps_its_connections_and_gets_no_new_ones() {
    let svc = service("web", vip(1, false), "rr", &[1, 1, 1]);
    let mut lab = lab_serving(std::slice::from_ref(&svc), &[]);
    let mut held = lab
        .in_client(|| hold(svc.vip, 30))
        .expect("client")
        .expect("hold");
    let per = held_per_backend(&held);
    let on_b1 = per.get("b1").copied().unwrap_or(0);
    assert!(on_b1 > 0, "{per:?}");

    let mut drained = svc.clone();
    drained.backends[1] = BackendConfig {
        state: "draining".into(),
        ..drained.backends[1].clone()
    };
    lab.rewrite_config(0, &to_toml(std::slice::from_ref(&drained)))
        .expect("rewrite");
    time_until_state(&lab, "web", 1, "draining", RELOAD_TIMEOUT);

    for c in &mut held {
        let greeted = c.backend().to_string();
        assert_eq!(c.ping().expect("a held connection keeps working"), greeted);
    }
    let spread = lab
        .in_client(|| spread(svc.vip, 300, CONCURRENCY))
        .expect("client");
    assert_eq!(spread.failures, 0, "{:?}", spread.failure_samples);
    assert_eq!(spread.count("b1"), 0, "{spread:?}");
    // The operator sees how many connections the draining backend still has.
    let status = status(&lab);
    assert_eq!(
        active_conns(&status, "web", Lab::backend_addr(1, false)),
        Some(on_b1 as u64),
        "{status:#?}"
    );
    drop(held);
    assert_eventually!(
        status_now(&lab).and_then(|s| active_conns(&s, "web", Lab::backend_addr(1, false)))
            == Some(0),
        Duration::from_secs(5),
        "b1's connections never drained: {:#?}",
        status_now(&lab)
    );
}

/// The status now, `None` while `lb status` fails (for polling).
fn status_now(lab: &Lab) -> Option<Status> {
    lab.lb_status_json(0).ok()
}

fn all_counters_zero(status: &Status) -> bool {
    (0..3).all(|i| active_conns(status, "web", Lab::backend_addr(i, false)) == Some(0))
}

#[test]
fn connection_counters_return_to_zero_and_least_conn_uses_them() {
    let svc = service("web", vip(1, false), "least-conn", &[1, 1, 1]);
    let mut lab = lab_serving(std::slice::from_ref(&svc), &["--sweep-interval-s", "1"]);
    let opened = lab
        .in_client(|| spread(svc.vip, 500, CONCURRENCY))
        .expect("client");
    assert_eq!(opened.failures, 0, "{:?}", opened.failure_samples);
    let closed_at = Instant::now();
    assert_eventually!(
        status_now(&lab).is_some_and(|s| all_counters_zero(&s)),
        Duration::from_secs(2),
        "counters not back to 0 within a sweep interval: {:#?}",
        status_now(&lab)
    );
    assert!(closed_at.elapsed() <= Duration::from_secs(2));

    // b0 alone gets 50 long-lived connections; then the others join and get all of the next 100.
    let only_b0 = ServiceConfig {
        backends: svc.backends[..1].to_vec(),
        ..svc.clone()
    };
    lab.rewrite_config(0, &to_toml(std::slice::from_ref(&only_b0)))
        .expect("rewrite");
    // b1 and b2 stay listed (draining) while the closed flows of the first round are in the table.
    for i in [1, 2] {
        time_until_state(&lab, "web", i, "draining", RELOAD_TIMEOUT);
    }
    let first = lab
        .in_client(|| hold(svc.vip, 50))
        .expect("client")
        .expect("hold 50");
    assert_eq!(held_per_backend(&first).get("b0"), Some(&50));
    lab.rewrite_config(0, &to_toml(std::slice::from_ref(&svc)))
        .expect("rewrite");
    wait_applied(&lab, std::slice::from_ref(&svc));
    let next = lab
        .in_client(|| hold(svc.vip, 100))
        .expect("client")
        .expect("hold 100");
    let per = held_per_backend(&next);
    assert_eq!(per.get("b0"), None, "b0 already holds 50: {per:?}");
    assert_eq!(per.get("b1"), Some(&50), "{per:?}");
    assert_eq!(per.get("b2"), Some(&50), "{per:?}");
    drop(first);
    drop(next);
    assert_eventually!(
        status_now(&lab).is_some_and(|s| all_counters_zero(&s)),
        Duration::from_secs(2),
        "counters not back to 0: {:#?}",
        status_now(&lab)
    );
}

/// Connects once alone (so the persistence entry exists), then `n - 1` times concurrently.
fn persistent_spread(lab: &Lab, vip: SocketAddr, n: usize) -> lb_tests::Spread {
    lab.in_client(|| {
        let mut s = spread(vip, 1, 1);
        let rest = spread(vip, n - 1, CONCURRENCY);
        for (name, count) in rest.per_backend {
            *s.per_backend.entry(name).or_default() += count;
        }
        s.failures += rest.failures;
        s.failure_samples.extend(rest.failure_samples);
        s
    })
    .expect("client")
}

#[test]
fn persistence_keeps_a_client_on_one_backend_until_it_goes_down() {
    let svc = service("web", vip(1, false), "rr", &[1, 1, 1])
        .with("persistence_timeout_s = 300")
        .with(health_check_line());
    let mut lab = lab_serving(std::slice::from_ref(&svc), &[]);
    let first = persistent_spread(&lab, svc.vip, 200);
    assert_eq!(first.failures, 0, "{:?}", first.failure_samples);
    assert_eq!(
        first.per_backend.len(),
        1,
        "200 connections of one client on one backend: {first:?}"
    );
    let (pinned, _) = first
        .per_backend
        .iter()
        .next()
        .map(|(n, c)| (n.clone(), *c))
        .expect("one backend");
    let i: usize = pinned
        .trim_start_matches('b')
        .parse()
        .expect("backend name bN");

    lab.stop_backend_server(i).expect("stop the pinned backend");
    time_until_state(&lab, "web", i, "down", RELOAD_TIMEOUT);
    let moved = persistent_spread(&lab, svc.vip, 200);
    assert_eq!(moved.failures, 0, "{:?}", moved.failure_samples);
    assert_eq!(moved.count(&pinned), 0, "{moved:?}");
    assert_eq!(
        moved.per_backend.len(),
        1,
        "the client moved to one healthy backend: {moved:?}"
    );
}

fn counter(lab: &Lab, name: &str) -> u64 {
    scenario::counter(&status(lab), name)
}

#[test]
fn persistence_expires_when_the_client_stays_away_longer_than_its_timeout() {
    const TIMEOUT_S: u64 = 2;
    let svc = service("web", vip(1, false), "rr", &[1, 1, 1])
        .with(format!("persistence_timeout_s = {TIMEOUT_S}"));
    let lab = lab_serving(std::slice::from_ref(&svc), &[]);
    let first = persistent_spread(&lab, svc.vip, 20);
    assert_eq!(first.failures, 0, "{:?}", first.failure_samples);
    assert_eq!(first.per_backend.len(), 1, "{first:?}");
    // The first connection was scheduled and created the entry; the other 19 followed it.
    assert_eq!(counter(&lab, "persist_hit"), 19, "{:#?}", status_now(&lab));

    // Back within the timeout: the entry still holds.
    let again = lab.in_client(|| spread(svc.vip, 1, 1)).expect("client");
    assert!(
        again.per_backend.keys().eq(first.per_backend.keys()),
        "{again:?} vs {first:?}"
    );
    assert_eq!(counter(&lab, "persist_hit"), 20);

    // Away for longer than the timeout (the passing of time is what is tested): the next connection
    // is scheduled afresh (no persistence hit, one more new flow) instead of following the old entry.
    let new_flows = counter(&lab, "flow_new");
    std::thread::sleep(Duration::from_secs(TIMEOUT_S) + Duration::from_millis(1500));
    let later = lab.in_client(|| spread(svc.vip, 1, 1)).expect("client");
    assert_eq!(later.failures, 0, "{:?}", later.failure_samples);
    assert_eq!(counter(&lab, "persist_hit"), 20, "{:#?}", status_now(&lab));
    assert_eq!(counter(&lab, "flow_new"), new_flows + 1);
}

#[test]
fn a_syn_flood_never_inflates_counters_and_keeps_established_flows() {
    use lb_tests::synflood::syn_flood;
    use std::net::{Ipv4Addr, SocketAddrV4};

    const SYNS: usize = 20_000;
    let svc = service("web", vip(1, false), "rr", &[1, 1, 1]);
    let lab = lab_serving(
        std::slice::from_ref(&svc),
        &["--half-open-timeout-s", "2", "--sweep-interval-s", "1"],
    );
    let mut held = lab
        .in_client(|| hold(svc.vip, 30))
        .expect("client")
        .expect("hold");
    let per = held_per_backend(&held);
    let SocketAddr::V4(vip4) = svc.vip else {
        unreachable!("an IPv4 VIP")
    };
    // Spoofed sources on the client's subnet that nobody answers for.
    let sent = lab
        .in_client(|| {
            syn_flood(
                SocketAddrV4::new(*vip4.ip(), vip4.port()),
                Ipv4Addr::new(198, 18, 1, 100),
                100,
                SYNS,
            )
        })
        .expect("client")
        .expect("flood");
    assert_eq!(sent, SYNS);
    let flooded = status(&lab);
    let new_flows =
        scenario::counter(&flooded, "flow_new") + scenario::counter(&flooded, "flow_guard_bypass");
    assert!(
        new_flows >= 30 + SYNS as u64 * 9 / 10,
        "the flood reached the balancer: {new_flows} new flows"
    );
    // Half-open flows are no connections: the counters hold exactly the held ones, even now.
    let held_on = |i: usize| per.get(&Lab::backend_name(i)).copied().unwrap_or(0) as u64;
    let exact = |s: &Status| {
        (0..3).all(|i| active_conns(s, "web", Lab::backend_addr(i, false)) == Some(held_on(i)))
    };
    assert!(
        exact(&flooded),
        "half-open flows were counted: {flooded:#?}"
    );

    // `lb top` shows the flood's rates while it is fresh, and every backend.
    let top = lab.lb_top_text(0, 1, 500).expect("lb top");
    assert!(
        top.contains("CPS") && top.contains("web 198.18.100.1:80 rr"),
        "{top}"
    );
    for i in 0..3 {
        assert!(
            top.contains(&Lab::backend_addr(i, false).to_string()),
            "{top}"
        );
    }

    // Half-open flows expire after 2 s; the sweeps (1 s) leave the counters exact.
    let residue = |s: &Status| s.flows;
    assert_eventually!(
        status_now(&lab).is_some_and(|s| exact(&s) && residue(&s) <= 40),
        Duration::from_secs(6),
        "half-open flows stayed or counters moved after the flood: {:#?}",
        status_now(&lab)
    );
    for c in &mut held {
        let greeted = c.backend().to_string();
        assert_eq!(
            c.ping()
                .expect("an established connection survives the flood"),
            greeted
        );
    }
    let after = status(&lab);
    assert_eq!(
        scenario::counter(&after, "flow_rescheduled"),
        0,
        "{after:#?}"
    );
}

#[test]
fn panic_mode_keeps_every_backend_when_too_few_are_healthy() {
    let svc = service("web", vip(1, false), "rr", &[1, 1, 1])
        .with(health_check_line())
        .with("panic_threshold = 50");
    let mut lab = lab_serving(std::slice::from_ref(&svc), &[]);
    // One of three down is 67 % healthy: above the threshold, b2 leaves the table.
    lab.stop_backend_server(2).expect("stop b2");
    time_until_state(&lab, "web", 2, "down", RELOAD_TIMEOUT);
    // Two of three down is 33 %: panic, every backend is back in the table.
    lab.stop_backend_server(1).expect("stop b1");
    assert_eventually!(
        lab.lb_log(0).is_ok_and(|l| l.contains("panic mode")),
        RELOAD_TIMEOUT,
        "panic mode never logged: {:?}",
        lab.lb_log(0)
    );
    let status = status(&lab);
    for i in 0..3 {
        assert_eq!(
            backend_state(&status, "web", Lab::backend_addr(i, false)).as_deref(),
            Some("active"),
            "b{i} in panic mode: {status:#?}"
        );
    }
    let text = lab.lb_status_text(0).expect("lb status");
    assert!(text.contains("panic mode: web"), "{text}");
    // The healthy backend is not the only one offered new flows.
    let s = lab
        .in_client(|| spread(svc.vip, 60, CONCURRENCY))
        .expect("client");
    assert!(s.count("b0") < 60, "{s:?}");
    assert!(
        s.failures > 0,
        "connections to the stopped servers fail: {s:?}"
    );

    // b1 back: 67 % healthy, panic over, b2 is out again.
    lab.start_backend_server(1).expect("restart b1");
    assert_eventually!(
        lab.lb_log(0).is_ok_and(|l| l.contains("panic mode over")),
        RELOAD_TIMEOUT,
        "panic mode never ended: {:?}",
        lab.lb_log(0)
    );
    time_until_state(&lab, "web", 2, "down", RELOAD_TIMEOUT);
}
