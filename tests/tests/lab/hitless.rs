//! Hitless operation under real TCP load: the XDP program outlives `lb run` (kill -9, SIGTERM),
//! one daemon per pin directory, and `lb detach` / `--detach-on-exit` remove everything `lb run`
//! created.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use lb_tests::config::to_toml;
use lb_tests::scenario::{SCHEDULERS, service, status_shows, vip};
use lb_tests::synflood::syn_stream;
use lb_tests::{ContinuousLoad, Lab, LabOptions, LoadReport, ServiceConfig, assert_eventually};
use lb_userspace::owner::lock_file_path;
use lb_userspace::report::AdoptionReport;
use lb_userspace::report::status_file_path;
use lb_userspace::status::{ServiceStatus, Status};

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

fn start_serving(lab: &mut Lab, services: &[ServiceConfig], extra: &[&str]) {
    lab.start_lb(0, &to_toml(services), extra)
        .expect("lb starts");
    assert_eventually!(
        lab.lb_status_json(0)
            .is_ok_and(|s| services.iter().all(|svc| status_shows(&s, svc))),
        SETTLE,
        "lb0 never showed {:?}; last status: {:?}",
        services.iter().map(|s| &s.name).collect::<Vec<_>>(),
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
    let left = lb_neighbours(lab);
    assert!(
        left.trim().is_empty(),
        "lb's neighbour entries left: {left}"
    );
}

/// The neighbour entries lb made in load balancer 0's namespace (managed, lb's protocol number).
fn lb_neighbours(lab: &Lab) -> String {
    let proto = lb_userspace::nexthop::LB_NEIGH_PROTOCOL.to_string();
    lb_tests::lab::cmd::ip(&lab.lb_netns(0), &["neigh", "show", "proto", &proto])
        .expect("ip neigh on lb0")
}

/// The probe service of the swap-gap measurement: its VIP gets only the paced SYNs.
fn probe() -> ServiceConfig {
    service("probe", vip(2, false), "maglev", &WEIGHTS)
}

/// SYNs of the swap-gap measurement, one per `SWAP_PACE` (spanning the whole restart).
const SWAP_SYNS: usize = 4000;
const SWAP_PACE: Duration = Duration::from_millis(1);

/// A copy of the `lb` binary whose embedded XDP program differs from the built one by a log
/// string (as a rebuild with a changed message would): an upgrade to a different program.
fn patched_lb(lab: &Lab) -> PathBuf {
    let built = lb_tests::lab::lb_bin().expect("the lb binary");
    let mut bytes = std::fs::read(&built).expect("read lb");
    let (from, to) = (b"lb_balancer: drop ", b"lb_balancer: DROP ");
    let at: Vec<usize> = bytes
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the log string is in the eBPF object once");
    bytes[at[0]..at[0] + to.len()].copy_from_slice(to);
    let path = lab.dir().join("lb-upgraded");
    std::fs::write(&path, &bytes).expect("write the upgraded lb");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    path
}

fn web_status(status: &Status) -> &ServiceStatus {
    status
        .services
        .iter()
        .find(|s| s.name == "web")
        .expect("web in lb status")
}

fn adoption(status: &Status) -> AdoptionReport {
    lb_tests::scenario::daemon(status)
        .adoption
        .clone()
        .expect("the daemon adopted the pins")
}

/// Active connections the maps count for web: the held ones, plus the few new ones in flight.
fn assert_conns_exact(scheduler: &str, status: &Status) {
    let conns: u64 = web_status(status)
        .backends
        .iter()
        .map(|b| b.active_conns)
        .sum();
    assert!(
        (HELD as u64..=HELD as u64 + 4).contains(&conns),
        "{scheduler}: the connection counters are off after the restart: {conns} for {HELD} held"
    );
}

/// For every scheduler, under load (≥ 50 held connections exchanging data and a stream of new
/// ones): a second `lb run` is refused and changes nothing; `kill -9` breaks nothing and `lb status`
/// says the program runs unmanaged; a restart adopts the pins (no write for an unchanged service,
/// every held connection on its backend, persistence honoured, connection counters kept); an upgrade
/// to a different program swaps it into the pinned link with no packet lost; `lb detach` removes
/// everything.
#[test]
fn kill_9_restart_and_upgrade_break_nothing_and_detach_removes_everything() {
    let mut lab = start_lab();
    let client = lab.client_netns();
    let upgraded = patched_lb(&lab);
    for scheduler in SCHEDULERS {
        let svc = web(scheduler);
        let services = [svc.clone(), probe()];
        lab.set_lb_bin(None);
        start_serving(&mut lab, &services, &[]);
        let load = ContinuousLoad::start(&client, svc.vip, HELD, LOAD_MAX).expect("load starts");
        let_traffic_flow(&load, 5);

        // 5. A second daemon on the same pins is refused; the first goes on.
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
        let_traffic_flow(&load, 5);
        assert_hitless(scheduler, "second lb run", &load.finish().expect("load"));

        // 1. kill -9: forwarding goes on, unmanaged.
        let load = ContinuousLoad::start(&client, svc.vip, HELD, LOAD_MAX).expect("load starts");
        let_traffic_flow(&load, 5);
        let prog_before = lab.lb_xdp_prog_id(0).expect("ip link").expect("attached");
        lab.kill_lb(0).expect("kill -9");
        let_traffic_flow(&load, 10);
        assert_eq!(lab.lb_xdp_prog_id(0).expect("ip link"), Some(prog_before));
        let status = lab.lb_status_json(0).expect("the pins are intact");
        assert_eq!(status.attached, ["eth0"], "{scheduler}");
        assert_eq!(status.manager_pid, None, "{scheduler}: nobody manages it");
        let text = lab.lb_status_text(0).expect("lb status");
        assert!(text.contains("UNMANAGED since"), "{scheduler}: {text}");
        assert_hitless(scheduler, "kill -9", &load.finish().expect("load"));

        // 2. A restart adopts the pins, under load opened while no daemon ran.
        let load = ContinuousLoad::start(&client, svc.vip, HELD, LOAD_MAX).expect("load starts");
        let_traffic_flow(&load, 5);
        let before = lab.lb_status_json(0).expect("status");
        start_serving(&mut lab, &services, &[]);
        let_traffic_flow(&load, 10);
        let after = lab.lb_status_json(0).expect("status");
        let adopted = adoption(&after);
        assert_eq!(
            (
                adopted.unchanged.as_slice(),
                adopted.rewritten.len(),
                adopted.removed.len()
            ),
            (&["probe".to_owned(), "web".to_owned()][..], 0, 0),
            "{scheduler}: {adopted:?}"
        );
        assert_eq!(adopted.replaced_prog_id, Some(prog_before), "{scheduler}");
        assert_ne!(adopted.prog_id, Some(prog_before), "{scheduler}");
        assert_eq!(lab.lb_xdp_prog_id(0).expect("ip link"), adopted.prog_id);
        assert_eq!(
            after.manager_pid,
            Some(lb_tests::scenario::daemon(&after).pid)
        );
        assert_eq!(
            web_status(&after).generation,
            web_status(&before).generation,
            "{scheduler}: the unchanged service was not rewritten"
        );
        assert_conns_exact(scheduler, &after);
        if scheduler == "rr" {
            // Every new flow since before the restart went to the persisted backend.
            let grew: Vec<&str> = web_status(&after)
                .backends
                .iter()
                .filter(|b| {
                    let was = web_status(&before).backends.iter().find(|o| o.id == b.id);
                    was.is_none_or(|o| o.new_flows != b.new_flows)
                })
                .map(|b| b.addr.as_str())
                .collect();
            assert_eq!(
                grew.len(),
                1,
                "{scheduler}: persistence not honoured: {grew:?}"
            );
        }
        assert_hitless(scheduler, "restart (adopt)", &load.finish().expect("load"));

        // 3. An upgrade to a different program, with a paced SYN stream to count the swap gap.
        let load = ContinuousLoad::start(&client, svc.vip, HELD, LOAD_MAX).expect("load starts");
        let_traffic_flow(&load, 5);
        let probe_before = probe_packets(&lab);
        let SocketAddr::V4(probe_vip) = probe().vip else {
            unreachable!("an IPv4 VIP")
        };
        let stream = {
            let client = client.clone();
            std::thread::spawn(move || {
                lb_tests::lab::run_in_netns(&client, || {
                    syn_stream(
                        probe_vip,
                        Ipv4Addr::new(198, 18, 1, 100),
                        100,
                        SWAP_SYNS,
                        SWAP_PACE,
                    )
                })
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        lab.stop_lb(0).expect("SIGTERM");
        lab.set_lb_bin(Some(upgraded.clone()));
        start_serving(&mut lab, &services, &[]);
        let sent = stream
            .join()
            .expect("the stream thread")
            .expect("netns")
            .expect("the SYN stream");
        let upgraded_status = lab.lb_status_json(0).expect("status");
        let up = adoption(&upgraded_status);
        assert_ne!(
            up.prog_id, adopted.prog_id,
            "{scheduler}: the program was not replaced"
        );
        assert_eq!(up.replaced_prog_id, adopted.prog_id, "{scheduler}");
        assert_eq!(lab.lb_xdp_prog_id(0).expect("ip link"), up.prog_id);
        assert_eventually!(
            probe_packets(&lab) >= probe_before + sent as u64,
            SETTLE,
            "{scheduler}: swap gap: {} of {sent} SYNs were not balanced",
            (probe_before + sent as u64).saturating_sub(probe_packets(&lab))
        );
        let gap = (probe_before + sent as u64).saturating_sub(probe_packets(&lab));
        eprintln!("{scheduler:>10} upgrade swap gap {gap} of {sent} packets");
        let_traffic_flow(&load, 10);
        assert_hitless(
            scheduler,
            "upgrade (link update)",
            &load.finish().expect("load"),
        );

        lab.stop_lb(0).expect("SIGTERM");
        lab.lb_detach(0).expect("lb detach");
        assert_all_removed(&lab);
    }
}

fn probe_packets(lab: &Lab) -> u64 {
    let status = lab.lb_status_json(0).expect("status");
    status
        .services
        .iter()
        .find(|s| s.name == "probe")
        .map_or(0, |s| s.packets)
}

/// SIGTERM leaves the program forwarding (and says so); `--detach-on-exit` removes everything.
#[test]
fn sigterm_leaves_forwarding_and_detach_on_exit_removes_everything() {
    let mut lab = start_lab();
    let client = lab.client_netns();
    let svc = web("maglev");
    start_serving(&mut lab, std::slice::from_ref(&svc), &[]);
    let load = ContinuousLoad::start(&client, svc.vip, HELD, LOAD_MAX).expect("load starts");
    lab.stop_lb(0).expect("SIGTERM");
    let log = lab.lb_log(0).expect("log");
    assert!(
        log.contains("keeps forwarding on the last applied state") && log.contains("lb detach"),
        "the log does not say the program stays: {log}"
    );
    let_traffic_flow(&load, 10);
    assert_hitless("maglev", "SIGTERM", &load.finish().expect("load"));
    // The program forwards on, so its next hops stay resolved by lb's entries until the detach.
    assert!(
        !lb_neighbours(&lab).trim().is_empty(),
        "lb0 made no neighbour entry"
    );
    lab.lb_detach(0).expect("lb detach");
    assert_all_removed(&lab);

    start_serving(&mut lab, std::slice::from_ref(&svc), &["--detach-on-exit"]);
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

/// One balancer per interface: a second `lb run` with another pin dir is refused at once while the
/// first runs; once the first is killed, the second is refused at attach, naming how to adopt. Neither
/// refusal touches the first's program or leaves anything of its own behind.
#[test]
fn a_second_lb_run_on_the_same_interface_is_refused_and_changes_nothing() {
    let mut lab = start_lab();
    let svc = web("maglev");
    start_serving(&mut lab, std::slice::from_ref(&svc), &[]);
    let prog = lab.lb_xdp_prog_id(0).expect("ip link").expect("attached");
    let other = lab.pin_root_path().join("other");
    let (other_arg, config, state) = (
        other.display().to_string(),
        lab.lb_config_path(0).display().to_string(),
        lab.dir().join("other.state.json").display().to_string(),
    );
    let args = [
        "run",
        "--iface",
        "eth0",
        "--pin-dir",
        &other_arg,
        "--config",
        &config,
        "--state-file",
        &state,
        "--max-services",
        "16",
        "--max-backends",
        "256",
        "--table-size",
        "4099",
        "--flow-table-size",
        "65536",
        "--persist-table-size",
        "4096",
    ];
    let assert_untouched = |lab: &Lab, when: &str| {
        assert_eq!(
            lab.lb_xdp_prog_id(0).expect("ip link"),
            Some(prog),
            "{when}"
        );
        let spread = lab
            .in_client(|| lb_tests::spread(svc.vip, 20, 4))
            .expect("client");
        assert_eq!(spread.failures, 0, "{when}: {:?}", spread.failure_samples);
        for file in [
            other.clone(),
            lock_file_path(&other),
            status_file_path(&other),
        ] {
            assert!(!file.exists(), "{when}: {} left behind", file.display());
        }
    };

    let err = lab
        .run_lb_in(&lab.lb_netns(0), &args)
        .expect_err("a second balancer on eth0");
    let err = format!("{err:#}");
    assert!(
        err.contains("already balances interface eth0"),
        "unclear refusal: {err}"
    );
    assert_untouched(&lab, "while the first runs");

    lab.kill_lb(0).expect("kill -9");
    let err = lab
        .run_lb_in(&lab.lb_netns(0), &args)
        .expect_err("a balancer on eth0 whose program another pin dir holds");
    let err = format!("{err:#}");
    assert!(
        err.contains("already runs an XDP program that is not pinned in this pin dir")
            && err.contains("--pin-dir"),
        "unclear refusal: {err}"
    );
    assert_untouched(&lab, "while the first is unmanaged");

    lab.lb_detach(0).expect("lb detach");
    assert_all_removed(&lab);
}
