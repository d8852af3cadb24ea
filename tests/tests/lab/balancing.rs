//! Real TCP connections from the lab's client through the real XDP program: every scheduler's spread,
//! IPv6, reloads that must not move established connections, least-conn, a bad reload, and two load
//! balancers behind ECMP. Needs root, bpffs and `LB_BIN` (`cargo xtask test` provides all three).

use std::time::Duration;

use lb_tests::client::held_per_backend;
use lb_tests::config::{ServiceConfig, to_toml};
use lb_tests::scenario::{
    Status, Tolerance, active_conns, compare, drops, expected_shares, render, service,
    status_shows, vip,
};
use lb_tests::{Lab, LabOptions, assert_eventually, hold, spread};

/// New connections per spread (the brief's minimum is 1000).
const CONNS: usize = 1000;
const CONCURRENCY: usize = 8;
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

fn start_lab(opts: LabOptions) -> Lab {
    let opts = LabOptions {
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..opts
    };
    Lab::start(opts).expect("the lab starts")
}

/// A lab with three backends and one load balancer serving `services`, applied.
fn lab_serving(services: &[ServiceConfig]) -> Lab {
    let mut lab = start_lab(LabOptions::default());
    lab.start_lb(0, &to_toml(services), &[]).expect("lb starts");
    wait_applied(&lab, 0, services);
    lab
}

/// Waits until `lb status` shows every service of `services` as configured.
fn wait_applied(lab: &Lab, lb: usize, services: &[ServiceConfig]) {
    assert_eventually!(
        lab.lb_status_json(lb)
            .is_ok_and(|s| services.iter().all(|svc| status_shows(&s, svc))),
        RELOAD_TIMEOUT,
        "lb{lb} never showed the configuration; last status: {:?}",
        lab.lb_status_json(lb)
    );
}

fn status(lab: &Lab) -> Status {
    lab.lb_status_json(0).expect("lb status")
}

/// Spreads `CONNS` connections over a three-backend service and checks every backend's share.
fn spread_follows(scheduler: &str, weights: &[u32], v6: bool) -> Lab {
    let svc = service("web", vip(1, v6), scheduler, weights);
    let lab = lab_serving(std::slice::from_ref(&svc));
    let spread = lab
        .in_client(|| spread(svc.vip, CONNS, CONCURRENCY))
        .expect("client namespace");
    let rows = compare(
        &spread,
        &expected_shares(scheduler, weights),
        Tolerance::for_scheduler(scheduler),
    );
    let status = status(&lab);
    assert_eq!(
        spread.failures, 0,
        "{scheduler}: failed connections: {:?}\nstatus: {status:#?}",
        spread.failure_samples
    );
    assert_eq!(spread.succeeded(), CONNS);
    assert!(
        rows.iter().all(|r| r.ok()),
        "{scheduler} over {}:\n{}",
        svc.vip,
        render(&rows)
    );
    assert!(
        drops(&status).is_empty(),
        "{scheduler}: the data plane dropped packets: {:?}",
        drops(&status)
    );
    lab
}

#[test]
fn rr_spreads_evenly() {
    spread_follows("rr", &[1, 1, 1], false);
}

#[test]
fn wrr_follows_weights_and_counts_every_new_flow() {
    let weights = [1, 2, 3];
    let svc = service("web", vip(1, false), "wrr", &weights);
    let lab = spread_follows("wrr", &weights, false);
    // Every connection was one new flow on the backend that answered it.
    let status = status(&lab);
    let web = status.service(&svc.name).expect("the service in status");
    let flows: u64 = web.backends.iter().map(|b| b.new_flows).sum();
    assert_eq!(flows, CONNS as u64, "new flows in status: {status:#?}");
}

#[test]
fn random_spreads_evenly() {
    spread_follows("random", &[1, 1, 1], false);
}

#[test]
fn wrandom_follows_weights() {
    spread_follows("wrandom", &[1, 2, 3], false);
}

#[test]
fn maglev_follows_weights_over_distinct_source_ports() {
    spread_follows("maglev", &[1, 2, 3], false);
}

#[test]
fn ipv6_vip_end_to_end() {
    let lab = spread_follows("wrr", &[1, 2, 3], true);
    let mut held = lab
        .in_client(|| hold(vip(1, true), 6))
        .expect("client namespace")
        .expect("hold over IPv6");
    for c in &mut held {
        let first = c.backend().to_string();
        assert_eq!(c.ping().expect("ping over IPv6"), first);
    }
}

#[test]
fn least_conn_follows_weights_of_open_connections() {
    let weights = [1, 2, 3];
    let svc = service("web", vip(1, false), "least-conn", &weights);
    let lab = lab_serving(std::slice::from_ref(&svc));
    // Held one after another, each new connection goes to the backend with the fewest per weight.
    let held = lab
        .in_client(|| hold(svc.vip, 60))
        .expect("client namespace")
        .expect("hold");
    let per = held_per_backend(&held);
    for (i, w) in weights.iter().enumerate() {
        let got = per.get(&Lab::backend_name(i)).copied().unwrap_or(0);
        let want = 10 * *w as usize;
        assert!(
            got.abs_diff(want) <= 1,
            "b{i}: {got} held connections, expected {want}: {per:?}"
        );
    }
    let status = status(&lab);
    for (i, w) in weights.iter().enumerate() {
        let got = active_conns(&status, "web", Lab::backend_addr(i, false));
        let held_here = per.get(&Lab::backend_name(i)).copied().unwrap_or(0) as u64;
        assert_eq!(
            got,
            Some(held_here),
            "b{i} (weight {w}) active connections in status: {status:#?}"
        );
    }
    // Short connections on top still all succeed.
    let spread = lab
        .in_client(|| spread(svc.vip, CONNS, CONCURRENCY))
        .expect("client namespace");
    assert_eq!(spread.failures, 0, "{:?}", spread.failure_samples);
}

#[test]
fn least_conn_sends_new_connections_to_added_backends() {
    let only_b0 = service("web", vip(1, false), "least-conn", &[1]);
    let mut lab = lab_serving(std::slice::from_ref(&only_b0));
    let mut first = lab
        .in_client(|| hold(only_b0.vip, 20))
        .expect("client namespace")
        .expect("hold");
    assert_eq!(held_per_backend(&first).get("b0"), Some(&20));

    let all = service("web", vip(1, false), "least-conn", &[1, 1, 1]);
    lab.rewrite_config(0, &to_toml(std::slice::from_ref(&all)))
        .expect("rewrite config");
    wait_applied(&lab, 0, std::slice::from_ref(&all));
    let second = lab
        .in_client(|| hold(all.vip, 20))
        .expect("client namespace")
        .expect("hold");
    let per = held_per_backend(&second);
    assert_eq!(per.get("b0"), None, "b0 already holds 20: {per:?}");
    assert_eq!(per.get("b1"), Some(&10), "{per:?}");
    assert_eq!(per.get("b2"), Some(&10), "{per:?}");
    for c in &mut first {
        assert_eq!(c.ping().expect("ping"), "b0");
    }
}

/// Hold connections, change the backend set (add one, reweight another), and check that every held
/// connection still reaches the backend that greeted it while new connections reach the new backend.
fn established_connections_survive_reload(scheduler: &str) {
    let before = service("web", vip(1, false), scheduler, &[1, 1]);
    let mut lab = lab_serving(std::slice::from_ref(&before));
    let mut held = lab
        .in_client(|| hold(before.vip, 30))
        .expect("client namespace")
        .expect("hold");
    let per = held_per_backend(&held);
    assert!(
        per.len() == 2,
        "{scheduler}: 30 held connections should reach both backends: {per:?}"
    );

    let after = service("web", vip(1, false), scheduler, &[1, 3, 2]);
    lab.rewrite_config(0, &to_toml(std::slice::from_ref(&after)))
        .expect("rewrite config");
    wait_applied(&lab, 0, std::slice::from_ref(&after));

    for c in &mut held {
        let greeted = c.backend().to_string();
        let now = c.ping().unwrap_or_else(|e| {
            panic!(
                "{scheduler}: held connection {} broke: {e:#}",
                c.local_addr()
            )
        });
        assert_eq!(
            now,
            greeted,
            "{scheduler}: held connection {} moved",
            c.local_addr()
        );
    }
    let spread = lab
        .in_client(|| spread(after.vip, 300, CONCURRENCY))
        .expect("client namespace");
    assert_eq!(
        spread.failures, 0,
        "{scheduler}: {:?}",
        spread.failure_samples
    );
    assert!(
        spread.count("b2") > 0,
        "{scheduler}: the added backend got no connection: {spread:?}"
    );
}

#[test]
fn draining_and_removed_backends_keep_established_connections() {
    let before = service("web", vip(1, false), "wrr", &[1, 1, 1]);
    let mut lab = lab_serving(std::slice::from_ref(&before));
    let mut held = lab
        .in_client(|| hold(before.vip, 30))
        .expect("client namespace")
        .expect("hold");
    assert_eq!(held_per_backend(&held).len(), 3);

    // b0 drains, b1 leaves the service, b2 stays.
    let mut after = service("web", vip(1, false), "wrr", &[1, 1, 1]);
    after.backends[0].state = "draining".into();
    after.backends.remove(1);
    lab.rewrite_config(0, &to_toml(std::slice::from_ref(&after)))
        .expect("rewrite config");
    wait_applied(&lab, 0, std::slice::from_ref(&after));

    for c in &mut held {
        let greeted = c.backend().to_string();
        let now = c
            .ping()
            .unwrap_or_else(|e| panic!("held connection to {greeted} broke: {e:#}"));
        assert_eq!(now, greeted);
    }
    let spread = lab
        .in_client(|| spread(after.vip, 300, CONCURRENCY))
        .expect("client namespace");
    assert_eq!(spread.failures, 0, "{:?}", spread.failure_samples);
    assert_eq!(
        spread.count("b2"),
        300,
        "only the active backend takes new connections: {spread:?}"
    );
}

#[test]
fn maglev_established_connections_survive_reload() {
    established_connections_survive_reload("maglev");
}

#[test]
fn wrr_established_connections_survive_reload() {
    established_connections_survive_reload("wrr");
}

/// Has the daemon logged a rejected configuration on one line with all of `parts`?
fn rejection_logged(lab: &Lab, parts: &[&str]) -> bool {
    lab.lb_log(0).is_ok_and(|log| {
        log.lines()
            .any(|l| l.contains("configuration rejected") && parts.iter().all(|p| l.contains(p)))
    })
}

#[test]
fn bad_config_reload_keeps_forwarding() {
    let svc = service("web", vip(1, false), "wrr", &[1, 1, 1]);
    let mut lab = lab_serving(std::slice::from_ref(&svc));
    let mut held = lab
        .in_client(|| hold(svc.vip, 6))
        .expect("client namespace")
        .expect("hold");

    // The scheduler is on line 4 of the rendered file; the error names the file, line and field.
    let bad = to_toml(&[service("web", vip(1, false), "fastest", &[1, 1, 1])]);
    lab.rewrite_config(0, &bad).expect("rewrite config");
    assert_eventually!(
        rejection_logged(&lab, &["lb0.toml:4:", "scheduler", "fastest"]),
        RELOAD_TIMEOUT,
        "the daemon never logged the rejected scheduler; log: {:?}",
        lab.lb_log(0)
    );
    let broken = "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\nscheduler = \"wrr\"\n\
                  backends = [ { addr = \"198.18.2.11:80\", weight = \"heavy\" } ]\n";
    lab.rewrite_config(0, broken).expect("rewrite config");
    assert_eventually!(
        rejection_logged(&lab, &["lb0.toml:5:", "weight"]),
        RELOAD_TIMEOUT,
        "the daemon never logged the bad line; log: {:?}",
        lab.lb_log(0)
    );

    lab.check_lb_running(0)
        .expect("the daemon survives bad configurations");
    assert!(
        status_shows(&status(&lab), &svc),
        "the last good configuration is still applied"
    );
    for c in &mut held {
        let greeted = c.backend().to_string();
        assert_eq!(c.ping().expect("ping"), greeted);
    }
    let spread = lab
        .in_client(|| spread(svc.vip, 300, CONCURRENCY))
        .expect("client namespace");
    assert_eq!(spread.failures, 0, "{:?}", spread.failure_samples);
    assert_eq!(spread.per_backend.len(), 3, "{spread:?}");
}

#[test]
fn two_load_balancers_behind_ecmp_agree() {
    let svc = service("web", vip(1, false), "maglev", &[1, 2, 3]);
    let mut lab = start_lab(LabOptions {
        lbs: 2,
        ..LabOptions::default()
    });
    for lb in 0..2 {
        lab.start_lb(lb, &to_toml(std::slice::from_ref(&svc)), &[])
            .expect("lb starts");
        wait_applied(&lab, lb, std::slice::from_ref(&svc));
    }
    let spread = lab
        .in_client(|| spread(svc.vip, CONNS, CONCURRENCY))
        .expect("client namespace");
    assert_eq!(spread.failures, 0, "{:?}", spread.failure_samples);
    let rows = compare(
        &spread,
        &expected_shares("maglev", &[1, 2, 3]),
        Tolerance::for_scheduler("maglev"),
    );
    assert!(
        rows.iter().all(|r| r.ok()),
        "maglev over two LBs:\n{}",
        render(&rows)
    );
    // The router hashes on ports, so both load balancers carried new flows.
    for lb in 0..2 {
        let status = lab.lb_status_json(lb).expect("lb status");
        let flows = status.services[0].new_flows;
        assert!(flows > 0, "lb{lb} carried no flow: {status:#?}");
    }
}
