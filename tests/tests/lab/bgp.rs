//! VIP announcement with a real BGP daemon: `lb run --announce-bird-include` on each LB, BIRD 2
//! in every LB namespace and in the router, which installs the learned VIP routes with ECMP (the
//! lab's `bgp` option; no static VIP routes).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use lb_tests::config::to_toml;
use lb_tests::lab::topology::{lb_v4, lb_v6};
use lb_tests::scenario::{service, status_shows, vip};
use lb_tests::{ContinuousLoad, Lab, LabOptions, ServiceConfig, assert_eventually};

/// BGP converges within a few seconds with the lab's timers (hold 3 s, connect retry 1 s).
const CONVERGE: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(10);
/// Connections held over the graceful stop (the minimum is 50).
const HELD: usize = 50;
const LOAD_MAX: Duration = Duration::from_secs(90);
/// `--withdraw-grace-s` of the LB stopped gracefully.
const GRACE_S: u64 = 4;

fn start_lab(lbs: usize) -> Lab {
    Lab::start(LabOptions {
        lbs,
        bgp: true,
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..Default::default()
    })
    .expect("the BGP lab starts")
}

fn start_serving(lab: &mut Lab, lb: usize, services: &[ServiceConfig], extra: &[&str]) {
    lab.start_lb(lb, &to_toml(services), extra)
        .expect("lb starts");
    assert_eventually!(
        lab.lb_status_json(lb)
            .is_ok_and(|s| services.iter().all(|svc| status_shows(&s, svc))),
        SETTLE,
        "lb{lb} never showed the services; last status: {:?}",
        lab.lb_status_json(lb)
    );
}

/// Waits until the router's BGP route to `vip` goes via exactly the load balancers `lbs`.
fn assert_routed_via(lab: &Lab, vip: IpAddr, lbs: &[usize]) {
    let want: Vec<IpAddr> = {
        let mut v: Vec<IpAddr> = lbs
            .iter()
            .map(|&lb| {
                if vip.is_ipv6() {
                    IpAddr::V6(lb_v6(lb))
                } else {
                    IpAddr::V4(lb_v4(lb))
                }
            })
            .collect();
        v.sort();
        v
    };
    assert_eventually!(
        lab.router_vip_next_hops(vip).is_ok_and(|h| h == want),
        CONVERGE,
        "the router's route to {vip} never went via {want:?}: {:?}\nrouter's BIRD: {:?}",
        lab.router_vip_next_hops(vip),
        lab.birdc("router", &["show", "route", "all"])
    );
}

fn announced(lab: &Lab, lb: usize) -> Vec<IpAddr> {
    lab.lb_status_json(lb)
        .ok()
        .and_then(|s| s.daemon)
        .and_then(|d| d.report.announce)
        .map(|a| a.announced)
        .unwrap_or_default()
}

#[test]
fn two_announcing_lbs_give_the_router_two_next_hops_per_vip_kill_9_keeps_them_and_detach_withdraws()
{
    let v4 = service("web", vip(1, false), "maglev", &[1, 1, 1]);
    let v6 = service("web6", vip(1, true), "maglev", &[1, 1, 1]);
    let services = [v4.clone(), v6.clone()];
    let mut lab = start_lab(2);
    for lb in 0..2 {
        start_serving(&mut lab, lb, &services, &[]);
    }
    assert_routed_via(&lab, v4.vip.ip(), &[0, 1]);
    assert_routed_via(&lab, v6.vip.ip(), &[0, 1]);
    for lb in 0..2 {
        assert_eq!(
            announced(&lab, lb),
            vec![v4.vip.ip(), v6.vip.ip()],
            "lb{lb}'s status"
        );
        let metrics = lab.lb_status_text(lb).expect("lb status");
        assert!(metrics.contains("announced to BIRD"), "{metrics}");
    }
    // Real TCP through the routes BGP installed.
    for svc in &services {
        let spread = lab
            .in_client(|| lb_tests::spread(svc.vip, 60, 4))
            .expect("client namespace");
        assert_eq!(spread.failures, 0, "{:?}", spread.failure_samples);
    }
    // kill -9: the pinned program forwards on, so the announcement stays (the include file is
    // untouched, lb0's BIRD still exports the VIPs) and the router keeps both next hops.
    lab.kill_lb(0).expect("kill -9 lb0");
    let include = std::fs::read_to_string(lab.lb_bird_include(0)).expect("lb0's include file");
    assert!(
        include.contains(&format!("{}/32", v4.vip.ip())),
        "{include}"
    );
    let exported = lab
        .birdc("lb0", &["show", "route", "protocol", "lb_vips4"])
        .expect("birdc on lb0");
    assert!(exported.contains(&v4.vip.ip().to_string()), "{exported}");
    assert_eq!(
        lab.router_vip_next_hops(v4.vip.ip()).expect("router route"),
        vec![IpAddr::V4(lb_v4(0)), IpAddr::V4(lb_v4(1))]
    );
    let spread = lab
        .in_client(|| lb_tests::spread(v4.vip, 60, 4))
        .expect("client namespace");
    assert_eq!(spread.failures, 0, "{:?}", spread.failure_samples);
    // Detaching the crashed run's data plane withdraws what it left announced first (the include
    // file its status file names), so the router stops sending lb0 traffic it no longer forwards.
    lab.lb_detach_with(0, &["--withdraw-grace-s", "1"])
        .expect("lb detach on lb0");
    assert!(
        !lab.lb_has_xdp(0).expect("ip link on lb0"),
        "still attached"
    );
    let include = std::fs::read_to_string(lab.lb_bird_include(0)).expect("lb0's include file");
    assert!(
        !include.contains("route "),
        "the include file still lists VIPs: {include}"
    );
    assert_routed_via(&lab, v4.vip.ip(), &[1]);
    assert_routed_via(&lab, v6.vip.ip(), &[1]);
    for svc in &services {
        let spread = lab
            .in_client(|| lb_tests::spread(svc.vip, 60, 4))
            .expect("client namespace");
        assert_eq!(spread.failures, 0, "{:?}", spread.failure_samples);
    }
}

/// Checked by TCP every 200 ms: down after 2 failures, up after 2 successes.
const HEALTH_CHECK: &str =
    "health_check = { kind = \"tcp\", interval_ms = 200, timeout_ms = 100, rise = 2, fall = 2 }";

#[test]
fn a_vip_without_a_backend_taking_new_flows_is_withdrawn_and_comes_back() {
    let a = service("a", vip(1, false), "maglev", &[1, 1, 1]);
    let b = service("b", vip(2, false), "maglev", &[1, 1, 1]);
    let b_drained = service("b", vip(2, false), "maglev", &[0, 0, 0]);
    // Only backend b0, health-checked.
    let c = service("c", vip(3, false), "maglev", &[1]).with(HEALTH_CHECK);
    let mut lab = start_lab(1);
    start_serving(&mut lab, 0, &[a.clone(), b.clone(), c.clone()], &[]);
    for svc in [&a, &b, &c] {
        assert_routed_via(&lab, svc.vip.ip(), &[0]);
    }

    // Every backend of b at weight 0: b goes, the others stay.
    lab.rewrite_config(0, &to_toml(&[a.clone(), b_drained, c.clone()]))
        .expect("rewrite the configuration");
    assert_routed_via(&lab, b.vip.ip(), &[]);
    assert_routed_via(&lab, a.vip.ip(), &[0]);
    assert_routed_via(&lab, c.vip.ip(), &[0]);
    assert_eq!(announced(&lab, 0), vec![a.vip.ip(), c.vip.ip()]);

    lab.rewrite_config(0, &to_toml(&[a.clone(), b.clone(), c.clone()]))
        .expect("rewrite the configuration");
    assert_routed_via(&lab, b.vip.ip(), &[0]);
    let spread = lab
        .in_client(|| lb_tests::spread(b.vip, 30, 4))
        .expect("client namespace");
    assert_eq!(spread.failures, 0, "{:?}", spread.failure_samples);

    // c's only backend fails its health check: c goes (a and b are unchecked and stay).
    lab.stop_backend_server(0).expect("stop b0's server");
    assert_routed_via(&lab, c.vip.ip(), &[]);
    assert_routed_via(&lab, a.vip.ip(), &[0]);
    assert_routed_via(&lab, b.vip.ip(), &[0]);
    lab.start_backend_server(0).expect("start b0's server");
    assert_routed_via(&lab, c.vip.ip(), &[0]);
    let spread = lab
        .in_client(|| lb_tests::spread(c.vip, 30, 4))
        .expect("client namespace");
    assert_eq!(spread.failures, 0, "{:?}", spread.failure_samples);
}

#[test]
fn a_graceful_stop_withdraws_and_held_connections_move_to_the_other_lb_unbroken() {
    let web = service("web", vip(1, false), "maglev", &[1, 2, 3]);
    let mut lab = start_lab(2);
    let grace = GRACE_S.to_string();
    for lb in 0..2 {
        start_serving(
            &mut lab,
            lb,
            std::slice::from_ref(&web),
            &["--withdraw-grace-s", &grace],
        );
    }
    assert_routed_via(&lab, web.vip.ip(), &[0, 1]);
    let load = ContinuousLoad::start(&lab.client_netns(), web.vip, HELD, LOAD_MAX)
        .expect("the held connections open");
    // The router hashes on ports: both LBs carry some of the held connections.
    for lb in 0..2 {
        assert_eventually!(
            lab.lb_status_json(lb)
                .is_ok_and(|s| s.services.first().is_some_and(|svc| svc.new_flows > 0)),
            SETTLE,
            "lb{lb} carried no connection: {:?}",
            lab.lb_status_json(lb)
        );
    }
    let target = load.rounds() + 5;
    assert_eventually!(load.rounds() >= target, SETTLE, "the load stalled");

    let stopped = Instant::now();
    lab.signal_lb(0, libc::SIGTERM).expect("SIGTERM lb0");
    assert_routed_via(&lab, web.vip.ip(), &[1]);
    let withdrawn = stopped.elapsed();
    assert!(
        withdrawn < Duration::from_secs(GRACE_S),
        "the route went only after {withdrawn:?}, not within the grace"
    );
    // lb0 still runs (and forwards) during the grace.
    lab.check_lb_running(0)
        .expect("lb0 runs on during its withdraw grace");
    let target = load.rounds() + 10;
    assert_eventually!(load.rounds() >= target, SETTLE, "the load stalled");
    assert_eventually!(
        lab.check_lb_running(0).is_err(),
        Duration::from_secs(GRACE_S + 10),
        "lb0 did not exit after its grace"
    );
    let exited = stopped.elapsed();
    assert!(
        exited >= Duration::from_secs(GRACE_S),
        "lb0 exited after {exited:?}, before its {GRACE_S}s grace"
    );
    let log = lab.lb_log(0).expect("lb0's log");
    assert!(log.contains("withdrew every VIP from BIRD"), "{log}");
    // After the grace the traffic still flows, all of it through lb1.
    let target = load.rounds() + 10;
    assert_eventually!(load.rounds() >= target, SETTLE, "the load stalled");
    let report = load.finish().expect("the load report");
    eprintln!("graceful stop: {report:?}");
    assert!(report.held >= HELD && report.rounds > 0, "{report:?}");
    assert_eq!(
        (report.broken, report.moved, report.new_failures),
        (0, 0, 0),
        "{report:?}"
    );
    assert!(report.new_conns > 0, "{report:?}");
}
