//! The last good state survives the daemon: `lb run` writes it to its state file after every
//! apply, and a restart whose source cannot deliver (ZooKeeper stopped, the configuration file
//! broken) forwards it — real TCP through the real program — with health as last known, then
//! resyncs when the source is back. In the first tests the first daemon runs with `--detach-on-exit`,
//! so the restart loads fresh maps: what forwards after it comes from the state file alone; the last
//! one restarts on the pinned maps under load, for every scheduler.

use std::net::SocketAddr;
use std::time::Duration;

use lb_tests::config::to_toml;
use lb_tests::scenario::{backend_state, daemon, service, status_shows, vip};
use lb_tests::zk_lab::{APPLY_TIMEOUT, ZkLab};
use lb_tests::{Lab, LabOptions, Spread, assert_eventually, spread};
use lb_userspace::state_file;

const INTERVAL_MS: u64 = 200;
const CHECK: &str =
    r#"{"kind": "tcp", "interval_ms": 200, "timeout_ms": 100, "rise": 2, "fall": 2}"#;
const SETTLE: Duration = Duration::from_secs(15);

fn options() -> LabOptions {
    LabOptions {
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..LabOptions::default()
    }
}

fn b(i: usize) -> SocketAddr {
    Lab::backend_addr(i, false)
}

fn spread_ok(lab: &Lab, vip: SocketAddr, n: usize) -> Spread {
    let s = lab
        .in_client(|| spread(vip, n, 4))
        .expect("client namespace");
    assert_eq!(s.failures, 0, "{:?}", s.failure_samples);
    s
}

/// The state file of lb0 holds `service` with backend `down` marked down.
fn state_file_has_down(lab: &Lab, service: &str, down: SocketAddr) -> bool {
    match state_file::read(&lab.lb_state_file(0)) {
        Ok(Some(saved)) => {
            saved.desired.services.contains_key(service)
                && saved
                    .down
                    .iter()
                    .any(|d| d.service == service && d.backend == down)
        }
        _ => false,
    }
}

#[test]
fn a_restart_with_zookeeper_stopped_forwards_the_last_good_state_with_its_health() {
    let mut t = ZkLab::start(options()).expect("the lab with ZooKeeper starts");
    let web = service("web", vip(1, false), "rr", &[1, 1, 1]);
    let vip_arg = web.vip.to_string();
    t.admin(&[
        "service",
        "put",
        "web",
        "--vip",
        &vip_arg,
        "--scheduler",
        "rr",
        "--health-check",
        CHECK,
    ])
    .expect("service put");
    for i in 0..3 {
        t.put_backend("web", b(i), 1).expect("backend put");
    }
    t.start_lb(0, &["--detach-on-exit"]).expect("lb starts");
    t.wait_serves(0, &web).expect("lb0 serves web");

    // b1 stops answering: its check takes it down, and the state file records it.
    t.lab.stop_backend_server(1).expect("stop b1");
    assert_eventually!(
        t.status(0)
            .is_ok_and(|s| backend_state(&s, "web", b(1)).is_some_and(|(st, _)| st == "down")),
        Duration::from_millis(10 * INTERVAL_MS) + SETTLE,
        "b1 never went down: {:?}",
        t.status(0)
    );
    assert_eventually!(
        state_file_has_down(&t.lab, "web", b(1)),
        SETTLE,
        "the state file never recorded b1 down: {:?}",
        state_file::read(&t.lab.lb_state_file(0))
    );

    t.lab.stop_lb(0).expect("stop lb0");
    assert!(
        !t.lab.lb_has_xdp(0).expect("ip link"),
        "--detach-on-exit left the program"
    );
    t.zk.stop().expect("stop ZooKeeper");
    // ZooKeeper answers nothing: after its start wait the daemon forwards the state file's state.
    t.start_lb(0, &[]).expect("lb starts without ZooKeeper");
    let status = t.status(0).expect("lb status");
    assert_eq!(
        status.service("web").map(|svc| svc.backends.len()),
        Some(3),
        "the last good state's service is not there: {status:?}"
    );
    let from = daemon(&status).from_state_file.clone();
    let from =
        from.unwrap_or_else(|| panic!("the status does not show the state file: {status:#?}"));
    assert_eq!(from.path, t.lab.lb_state_file(0));
    assert_eq!(
        backend_state(&status, "web", b(1))
            .map(|(st, _)| st)
            .as_deref(),
        Some("down"),
        "health restarted all-up: {status:?}"
    );
    let text = t.lab.lb_status_text(0).expect("lb status");
    assert!(text.contains("STATE FILE"), "{text}");
    let s = spread_ok(&t.lab, web.vip, 200);
    assert_eq!(s.count("b1"), 0, "the down backend got connections: {s:?}");
    assert!(s.count("b0") > 50 && s.count("b2") > 50, "{s:?}");

    // ZooKeeper is back: a change made there applies, and the state file is no longer the source.
    t.zk.restart().expect("start ZooKeeper again");
    t.put_backend("web", b(0), 3).expect("backend put");
    assert_eventually!(
        t.status(0).is_ok_and(
            |s| backend_state(&s, "web", b(0)) == Some(("active".into(), 3))
                && daemon(&s).from_state_file.is_none()
        ),
        APPLY_TIMEOUT + SETTLE,
        "the change in ZooKeeper never applied: {:?}",
        t.status(0)
    );
    assert_eq!(
        backend_state(&t.status(0).unwrap(), "web", b(1))
            .map(|(st, _)| st)
            .as_deref(),
        Some("down"),
        "b1 is still stopped"
    );
    t.lab.stop_lb(0).expect("stop lb0");
}

#[test]
fn a_restart_with_a_broken_config_file_forwards_the_last_good_state() {
    let mut lab = Lab::start(options()).expect("the lab starts");
    let web = service("web", vip(1, false), "wrr", &[1, 2]);
    lab.start_lb(
        0,
        &to_toml(std::slice::from_ref(&web)),
        &["--detach-on-exit"],
    )
    .expect("lb starts");
    assert_eventually!(
        lab.lb_status_json(0).is_ok_and(|s| status_shows(&s, &web)),
        SETTLE,
        "lb0 never showed web: {:?}",
        lab.lb_status_json(0)
    );
    assert_eventually!(
        matches!(state_file::read(&lab.lb_state_file(0)), Ok(Some(s)) if s.desired.services.contains_key("web")),
        SETTLE,
        "no state file"
    );
    lab.stop_lb(0).expect("stop lb0");

    // Half a file, as a deploy tool caught mid-write leaves it.
    let broken = "[[services]]\nname = \"web\"\nvip = ";
    lab.start_lb(0, broken, &[])
        .expect("lb starts from the state file");
    let status = lab.lb_status_json(0).expect("lb status");
    assert!(status_shows(&status, &web), "{status:?}");
    let from = daemon(&status)
        .from_state_file
        .clone()
        .expect("started from the state file");
    assert!(from.reason.contains("lb0.toml"), "{from:?}");
    let s = spread_ok(&lab, web.vip, 150);
    assert!(s.count("b0") > 20 && s.count("b1") > 50, "{s:?}");

    // The file is fixed (and changed): the file source's poll picks it up.
    let three = service("web", vip(1, false), "wrr", &[1, 2, 1]);
    lab.rewrite_config(0, &to_toml(std::slice::from_ref(&three)))
        .expect("rewrite");
    assert_eventually!(
        lab.lb_status_json(0)
            .is_ok_and(|s| status_shows(&s, &three) && daemon(&s).from_state_file.is_none()),
        SETTLE,
        "the fixed file never applied: {:?}",
        lab.lb_status_json(0)
    );
    assert_eventually!(
        matches!(state_file::read(&lab.lb_state_file(0)), Ok(Some(s)) if s.desired.services["web"].backends.len() == 3),
        SETTLE,
        "the state file never took the new state"
    );
    lab.stop_lb(0).expect("stop lb0");
}

#[test]
fn a_corrupt_state_file_with_a_broken_config_refuses_naming_both() {
    let mut lab = Lab::start(options()).expect("the lab starts");
    std::fs::write(
        lab.lb_state_file(0),
        b"{\"state_version\": 1, \"services\": [",
    )
    .unwrap();
    let err = lab
        .start_lb(0, "[[services]]\nname = ", &[])
        .expect_err("nothing to start from");
    let msg = format!("{err:#}");
    assert!(msg.contains("lb0.state.json"), "{msg}");
    assert!(msg.contains("lb0.toml"), "{msg}");
}

/// For every scheduler, under load (50 held connections exchanging data, new ones meanwhile): `lb run`
/// is stopped, ZooKeeper is stopped, and `lb run` starts again: it forwards the state file's services
/// (not none), adopts the pinned maps without rewriting them, breaks no held connection and fails no
/// new one, then resyncs when ZooKeeper is back.
#[test]
fn a_restart_with_zookeeper_stopped_breaks_no_connection_for_every_scheduler() {
    use lb_tests::ContinuousLoad;
    use lb_tests::scenario::SCHEDULERS;

    const HELD: usize = 50;
    let mut t = ZkLab::start(options()).expect("the lab with ZooKeeper starts");
    let client = t.lab.client_netns();
    for (n, scheduler) in SCHEDULERS.into_iter().enumerate() {
        let web = service("web", vip(1, false), scheduler, &[1, 2, 3]);
        let vip_arg = web.vip.to_string();
        t.admin(&[
            "service",
            "put",
            "web",
            "--vip",
            &vip_arg,
            "--scheduler",
            scheduler,
        ])
        .expect("service put");
        if n == 0 {
            for i in 0..3 {
                t.put_backend("web", b(i), i as u32 + 1)
                    .expect("backend put");
            }
        }
        if t.lab.check_lb_running(0).is_err() {
            t.start_lb(0, &[]).expect("lb starts");
        }
        t.wait_serves(0, &web).expect("lb0 serves web");
        assert_eventually!(
            state_file::read(&t.lab.lb_state_file(0)).is_ok_and(|s| s.is_some_and(|s| s
                .desired
                .services
                .get("web")
                .is_some_and(|w| w.scheduler.name() == scheduler))),
            SETTLE,
            "{scheduler}: the state file never held web"
        );
        let load = ContinuousLoad::start(&client, web.vip, HELD, Duration::from_secs(90))
            .expect("load starts");
        let rounds = load.rounds();
        assert_eventually!(load.rounds() >= rounds + 5, SETTLE, "the load stalled");

        t.lab.stop_lb(0).expect("SIGTERM");
        t.zk.stop().expect("stop ZooKeeper");
        t.start_lb(0, &[]).expect("lb starts without ZooKeeper");
        let status = t.status(0).expect("lb status");
        assert!(status_shows(&status, &web), "{scheduler}: {status:?}");
        assert!(
            daemon(&status).from_state_file.is_some(),
            "{scheduler}: not from the state file: {status:?}"
        );
        let adoption = daemon(&status).adoption.clone().expect("adopted the pins");
        assert_eq!(adoption.unchanged, ["web"], "{scheduler}: {adoption:?}");
        let rounds = load.rounds();
        assert_eventually!(load.rounds() >= rounds + 10, SETTLE, "the load stalled");

        t.zk.restart().expect("start ZooKeeper again");
        assert_eventually!(
            t.status(0)
                .is_ok_and(|s| daemon(&s).from_state_file.is_none()),
            APPLY_TIMEOUT + SETTLE,
            "{scheduler}: never resynced from ZooKeeper: {:?}",
            t.status(0)
        );
        let report = load.finish().expect("load");
        eprintln!(
            "{scheduler:>10} restart, ZooKeeper stopped  broken {}/{} moved {} new failures {}/{}",
            report.broken, report.held, report.moved, report.new_failures, report.new_conns
        );
        assert!(report.held >= HELD, "{scheduler}: {report:?}");
        assert_eq!(
            (report.broken, report.moved, report.new_failures),
            (0, 0, 0),
            "{scheduler}: {report:?}"
        );
    }
    t.lab.stop_lb(0).expect("stop lb0");
    t.lab.lb_detach(0).expect("lb detach");
}
