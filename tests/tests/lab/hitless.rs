//! Hitless operation under real TCP load: the XDP program outlives `lb run` (kill -9, SIGTERM),
//! one daemon per pin directory, and `lb detach` / `--detach-on-exit` remove everything `lb run`
//! created.

use std::time::Duration;

use lb_tests::config::to_toml;
use lb_tests::scenario::{SCHEDULERS, service, status_shows, vip};
use lb_tests::{ContinuousLoad, Lab, LabOptions, LoadReport, ServiceConfig, assert_eventually};
use lb_userspace::owner::lock_file_path;
use lb_userspace::report::status_file_path;

/// Connections held open across every event (the minimum is 50).
const HELD: usize = 50;
const WEIGHTS: [u32; 3] = [1, 2, 3];
/// Upper bound of one load run (each phase ends it much sooner).
const LOAD_MAX: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(10);

fn start_lab() -> Lab {
    Lab::start(LabOptions {
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..Default::default()
    })
    .expect("the lab starts")
}

/// The service of the run for `scheduler`; `rr` runs with persistence on.
fn web(scheduler: &str) -> ServiceConfig {
    let svc = service("web", vip(1, false), scheduler, &WEIGHTS);
    if scheduler == "rr" {
        svc.with("persistence_timeout_s = 60")
    } else {
        svc
    }
}

fn start_serving(lab: &mut Lab, svc: &ServiceConfig, extra: &[&str]) {
    lab.start_lb(0, &to_toml(std::slice::from_ref(svc)), extra)
        .expect("lb starts");
    assert_eventually!(
        lab.lb_status_json(0).is_ok_and(|s| status_shows(&s, svc)),
        SETTLE,
        "lb0 never showed {}; last status: {:?}",
        svc.name,
        lab.lb_status_json(0)
    );
}

/// Waits until the load has done `more` further rounds (traffic flowed over the event).
fn let_traffic_flow(load: &ContinuousLoad, more: usize) {
    let target = load.rounds() + more;
    assert_eventually!(load.rounds() >= target, SETTLE, "the load stalled");
}

fn assert_hitless(scheduler: &str, event: &str, report: &LoadReport) {
    eprintln!(
        "{scheduler:>10} {event:<28} broken {}/{} moved {} new failures {}/{}",
        report.broken, report.held, report.moved, report.new_failures, report.new_conns
    );
    assert!(
        report.held >= HELD && report.rounds > 0,
        "{scheduler} {event}: {report:?}"
    );
    assert_eq!(
        (report.broken, report.moved, report.new_failures),
        (0, 0, 0),
        "{scheduler} {event}: {report:?}"
    );
}

/// Everything `lb run` created for lb0 is gone: program, pins, status and lock files.
fn assert_all_removed(lab: &Lab) {
    let pin_dir = lab.lb_pin_dir(0);
    assert_eventually!(
        lab.lb_has_xdp(0).is_ok_and(|attached| !attached),
        SETTLE,
        "the program is still on eth0"
    );
    assert!(!pin_dir.exists(), "{} left behind", pin_dir.display());
    for file in [status_file_path(&pin_dir), lock_file_path(&pin_dir)] {
        assert!(!file.exists(), "{} left behind", file.display());
    }
}

/// For every scheduler, under load: a second `lb run` is refused and changes nothing; `kill -9`
/// of the daemon breaks no held connection and fails no new one; a start-up on the pins left
/// behind refuses (it never deletes them) and traffic goes on; `lb detach` removes everything.
#[test]
fn kill_9_and_a_second_daemon_break_nothing_and_detach_removes_everything() {
    let mut lab = start_lab();
    let client = lab.client_netns();
    for scheduler in SCHEDULERS {
        let svc = web(scheduler);
        start_serving(&mut lab, &svc, &[]);
        let load = ContinuousLoad::start(&client, svc.vip, HELD, LOAD_MAX).expect("load starts");
        let_traffic_flow(&load, 5);

        let (exit, log) = lab.run_second_lb(0).expect("second lb run");
        assert!(
            !exit.success(),
            "{scheduler}: the second lb run started: {log}"
        );
        assert!(
            log.contains("already manages pin directory"),
            "{scheduler}: unclear refusal: {log}"
        );
        lab.check_lb_running(0).expect("the first daemon runs on");
        let status = lab.lb_status_json(0).expect("the first's pins are intact");
        assert!(status_shows(&status, &svc), "{scheduler}: {status:?}");
        assert!(status_file_path(&lab.lb_pin_dir(0)).exists());
        let_traffic_flow(&load, 5);

        lab.kill_lb(0).expect("kill -9");
        let_traffic_flow(&load, 10);
        assert!(lab.lb_has_xdp(0).expect("ip link"), "{scheduler}: detached");

        let err = lab
            .start_lb(0, &to_toml(std::slice::from_ref(&svc)), &[])
            .expect_err("a start-up on the pins of a dead daemon");
        let err = format!("{err:#}");
        assert!(err.contains("lb detach"), "{scheduler}: {err}");
        let_traffic_flow(&load, 5);
        let status = lab.lb_status_json(0).expect("the pins are intact");
        assert!(status_shows(&status, &svc), "{scheduler}: {status:?}");

        assert_hitless(
            scheduler,
            "second run, kill -9, refusal",
            &load.finish().expect("load"),
        );
        lab.lb_detach(0).expect("lb detach");
        assert_all_removed(&lab);
    }
}

/// SIGTERM leaves the program forwarding (and says so); `--detach-on-exit` removes everything.
#[test]
fn sigterm_leaves_forwarding_and_detach_on_exit_removes_everything() {
    let mut lab = start_lab();
    let client = lab.client_netns();
    let svc = web("maglev");
    start_serving(&mut lab, &svc, &[]);
    let load = ContinuousLoad::start(&client, svc.vip, HELD, LOAD_MAX).expect("load starts");
    lab.stop_lb(0).expect("SIGTERM");
    let log = lab.lb_log(0).expect("log");
    assert!(
        log.contains("keeps forwarding on the last applied state") && log.contains("lb detach"),
        "the log does not say the program stays: {log}"
    );
    let_traffic_flow(&load, 10);
    assert_hitless("maglev", "SIGTERM", &load.finish().expect("load"));
    lab.lb_detach(0).expect("lb detach");
    assert_all_removed(&lab);

    start_serving(&mut lab, &svc, &["--detach-on-exit"]);
    lab.stop_lb(0).expect("SIGTERM");
    assert!(
        lab.lb_log(0)
            .expect("log")
            .contains("detaching from eth0 (--detach-on-exit)")
    );
    assert_all_removed(&lab);
    let err = lab.lb_detach(0).expect_err("nothing left to detach");
    assert!(format!("{err:#}").contains("nothing to detach"), "{err:#}");
}
