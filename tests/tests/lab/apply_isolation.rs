//! One service that does not fit the data plane's capacity must not block the others: with a small
//! `--max-backends`, an over-capacity service stays out (and says why in the log), while another
//! service's backend changes and a health flip still reach the real XDP program, checked with real TCP
//! through the lab. Needs root, bpffs and `LB_BIN` (`cargo xtask test` provides all three).

use std::time::Duration;

use lb_tests::config::{BackendConfig, ServiceConfig, to_toml};
use lb_tests::scenario::{self, status_serves, vip};
use lb_tests::{Lab, LabOptions, assert_eventually, spread};

const CONNS: usize = 200;
const CONCURRENCY: usize = 8;
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Four backend ids in all: `web` uses two or three, so `wide` (three more) never fits.
const MAX_BACKENDS: &str = "4";

/// An rr service over the lab's backends `backends` (indexes), weight 1 each.
fn service(name: &str, n: u8, backends: &[usize]) -> ServiceConfig {
    let backends = backends
        .iter()
        .map(|&i| BackendConfig::active(Lab::backend_addr(i, false), 1))
        .collect();
    ServiceConfig::new(name, vip(n, false), "rr", backends)
}

/// `web` with a TCP health check (a stopped server goes down within a second).
fn web(backends: &[usize]) -> ServiceConfig {
    service("web", 1, backends).with(
        "health_check = { kind = \"tcp\", interval_ms = 200, timeout_ms = 100, rise = 2, fall = 2 }",
    )
}

fn wide() -> ServiceConfig {
    service("wide", 2, &[0, 1, 2])
}

/// Waits until `lb status` serves `svc` exactly as configured (retired backends aside).
fn wait_serves(lab: &Lab, svc: &ServiceConfig) {
    assert_eventually!(
        lab.lb_status_json(0).is_ok_and(|s| status_serves(&s, svc)),
        RELOAD_TIMEOUT,
        "lb0 never served {}; status: {:?}\nlog:\n{}",
        svc.name,
        lab.lb_status_json(0),
        lab.lb_log(0).unwrap_or_default()
    );
}

/// `wide` is not in the data plane, and `lb status` says why.
fn assert_wide_left_out(lab: &Lab) {
    let status = lab.lb_status_json(0).expect("lb status");
    let names: Vec<&str> = status.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web"], "{status:?}");
    let not_applied = &scenario::daemon(&status).not_applied;
    assert!(
        not_applied
            .iter()
            .any(|n| n.service == "wide" && n.reason.contains("--max-backends")),
        "lb status does not report wide as not applied: {not_applied:?}"
    );
}

/// Log lines that report `wide` as failing for lack of backend ids.
fn wide_failures(lab: &Lab) -> usize {
    lab.lb_log(0)
        .expect("log")
        .lines()
        .filter(|l| l.contains("wide") && l.contains("--max-backends"))
        .count()
}

/// New connections to `web`, which must all succeed; returns how many each backend got.
fn web_spread(lab: &Lab) -> lb_tests::client::Spread {
    let s = lab
        .in_client(|| spread(vip(1, false), CONNS, CONCURRENCY))
        .expect("client namespace");
    assert_eq!(s.failures, 0, "{:?}", s.failure_samples);
    assert_eq!(s.succeeded(), CONNS);
    s
}

#[test]
fn a_service_over_capacity_does_not_block_the_others() {
    let opts = LabOptions {
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..LabOptions::default()
    };
    let mut lab = Lab::start(opts).expect("the lab starts");
    lab.start_lb(
        0,
        &to_toml(&[web(&[0, 1]), wide()]),
        &["--max-backends", MAX_BACKENDS],
    )
    .expect("lb starts although one service does not fit");
    wait_serves(&lab, &web(&[0, 1]));
    assert_wide_left_out(&lab);
    assert!(
        wide_failures(&lab) >= 1,
        "no log line names wide's error:\n{}",
        lab.lb_log(0).unwrap_or_default()
    );
    let before = web_spread(&lab);
    assert_eq!(before.count("b2"), 0, "{before:?}");
    assert!(
        before.count("b0") > 0 && before.count("b1") > 0,
        "{before:?}"
    );

    // A backend added to web: new connections reach it; wide is retried and still does not fit.
    let failures_so_far = wide_failures(&lab);
    lab.rewrite_config(0, &to_toml(&[web(&[0, 1, 2]), wide()]))
        .expect("rewrite");
    wait_serves(&lab, &web(&[0, 1, 2]));
    let added = web_spread(&lab);
    assert!(added.count("b2") > CONNS / 6, "{added:?}");
    assert_wide_left_out(&lab);
    assert!(
        wide_failures(&lab) > failures_so_far,
        "wide was not retried:\n{}",
        lab.lb_log(0).unwrap_or_default()
    );

    // A backend removed from web: new connections leave it.
    lab.rewrite_config(0, &to_toml(&[web(&[1, 2]), wide()]))
        .expect("rewrite");
    wait_serves(&lab, &web(&[1, 2]));
    let removed = web_spread(&lab);
    assert_eq!(removed.count("b0"), 0, "{removed:?}");

    // A health flip: b1's server stops, web takes it out of new flows.
    lab.stop_backend_server(1).expect("stop b1");
    assert_eventually!(
        lab.lb_status_json(0).is_ok_and(|s| {
            scenario::backend_state(&s, "web", Lab::backend_addr(1, false))
                .is_some_and(|(state, _)| state == "down")
        }),
        RELOAD_TIMEOUT,
        "b1 never went down in web; status: {:?}",
        lab.lb_status_json(0)
    );
    let flipped = web_spread(&lab);
    assert_eq!(flipped.count("b1"), 0, "{flipped:?}");
    assert_eq!(flipped.count("b2"), CONNS, "{flipped:?}");
    assert_wide_left_out(&lab);
}
