//! The local control socket of `lb run`, end to end: `lb backend weight|drain` (without `--zk`)
//! edit the static configuration file in place (comments kept) and the data plane follows, so new
//! TCP connections through the XDP program go where the file now says; refusals (unknown service
//! or backend, an unwritable file, a non-root caller) leave the file byte for byte and the maps as
//! they were; `lb stats zero` zeroes the traffic counters while established flows keep working;
//! with no daemon the CLI says how to reach one or ZooKeeper.

use std::fs::Permissions;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use lb_tests::config::ServiceConfig;
use lb_tests::scenario::{
    Status, Tolerance, backend_state, compare, counter, expected_shares, render, service,
    status_shows, vip,
};
use lb_tests::{HeldConn, Lab, LabOptions, assert_eventually, hold, spread};
use lb_userspace::control::default_socket_path;

const SETTLE: Duration = Duration::from_secs(10);
const CONNS: usize = 300;
const CONCURRENCY: usize = 8;

/// Comments the edits must keep, one per line of the file they sit on.
const COMMENTS: [&str; 5] = [
    "# The lab's web service (kept by `lb backend weight|drain`).",
    "# the name the CLI uses",
    "# b0: the big one",
    "# b1",
    "# b2: to be drained",
];

/// The configuration file of `svc` (three backends), with [`COMMENTS`] in it.
fn commented_config(svc: &ServiceConfig) -> String {
    let b = &svc.backends;
    format!(
        "{}\n[[services]]\nname = \"{}\"  {}\nvip = \"{}\"\nscheduler = \"{}\"\nbackends = [\n  {}\n  {{ addr = \"{}\", weight = {} }},\n  {}\n  {{ addr = \"{}\", weight = {}, state = \"active\" }},\n  {}\n  {{ addr = \"{}\", weight = {} }},\n]\n",
        COMMENTS[0],
        svc.name,
        COMMENTS[1],
        svc.vip,
        svc.scheduler,
        COMMENTS[2],
        b[0].addr,
        b[0].weight,
        COMMENTS[3],
        b[1].addr,
        b[1].weight,
        COMMENTS[4],
        b[2].addr,
        b[2].weight,
    )
}

/// A lab whose `lb run --config` serves `svc` from [`commented_config`], applied.
fn lab_serving(svc: &ServiceConfig) -> Lab {
    let mut lab = Lab::start(LabOptions {
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..LabOptions::default()
    })
    .expect("the lab starts");
    lab.start_lb(0, &commented_config(svc), &[])
        .expect("lb starts");
    assert_eventually!(
        lab.lb_status_json(0).is_ok_and(|s| status_shows(&s, svc)),
        SETTLE,
        "lb0 never showed web; last status: {:?}",
        lab.lb_status_json(0)
    );
    assert!(
        socket(&lab).exists(),
        "no control socket at {}",
        socket(&lab).display()
    );
    lab
}

/// The daemon's default control socket (it is named after the pin directory).
fn socket(lab: &Lab) -> PathBuf {
    default_socket_path(&lab.lb_pin_dir(0))
}

/// Removes the control socket if the daemon left it (it removes it itself when it stops).
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the `lb` CLI to completion. `$LB_ZK` is removed: with it, `weight|drain` would go to
/// ZooKeeper instead of the local daemon.
fn lb(prefix: &[&str], args: &[&str]) -> Output {
    let bin = lb_tests::lab::lb_bin().expect("the lb binary");
    let mut cmd = match prefix.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.args(args)
        .env_remove("LB_ZK")
        .output()
        .expect("lb starts")
}

/// `lb ARGS --pin-dir <lb0's>`: the CLI finds lb0's socket from its pin directory.
fn lb_local(lab: &Lab, args: &[&str]) -> Output {
    let pin = lab.lb_pin_dir(0).to_str().expect("UTF-8").to_owned();
    let mut all = args.to_vec();
    all.extend(["--pin-dir", &pin]);
    lb(&[], &all)
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn succeeds(out: Output) -> String {
    assert!(out.status.success(), "lb failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command failed and said `expected` (on stderr).
fn refused(out: Output, expected: &str) {
    assert!(
        !out.status.success(),
        "lb should have failed: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(expected),
        "{expected:?} not in: {}",
        text(&out)
    );
}

fn status(lab: &Lab) -> Status {
    lab.lb_status_json(0).expect("lb status")
}

/// The backend line of the file that names `addr`.
fn file_line(config: &str, addr: SocketAddr) -> String {
    let quoted = format!("\"{addr}\"");
    config
        .lines()
        .find(|l| l.contains(&quoted))
        .unwrap_or_else(|| panic!("no line for {addr} in:\n{config}"))
        .to_owned()
}

fn assert_comments_kept(config: &str) {
    for c in COMMENTS {
        assert!(config.contains(c), "comment {c:?} lost:\n{config}");
    }
}

/// A backend's (state, weight) in the maps, as `lb status` reads them.
fn in_maps(lab: &Lab, addr: SocketAddr) -> (String, u32) {
    backend_state(&status(lab), "web", addr).unwrap_or_else(|| panic!("{addr} not in the maps"))
}

fn addr_arg(i: usize) -> String {
    Lab::backend_addr(i, false).to_string()
}

#[test]
fn control_weight_and_drain_edit_the_file_and_steer_new_connections() {
    let svc = service("web", vip(1, false), "wrr", &[1, 1, 1]);
    let lab = lab_serving(&svc);
    let _socket = SocketGuard(socket(&lab));
    let config_path = lab.lb_config_path(0);
    let [b0, _, b2] = [0, 1, 2].map(|i| Lab::backend_addr(i, false));

    // Weight: b0 4, the others 1.
    let said = succeeds(lb_local(
        &lab,
        &["backend", "weight", "web", &addr_arg(0), "4"],
    ));
    assert!(said.contains("weight 1 -> 4"), "{said}");
    let config = std::fs::read_to_string(&config_path).expect("the config");
    assert!(
        file_line(&config, b0).contains("weight = 4"),
        "b0's line not edited:\n{config}"
    );
    assert_comments_kept(&config);
    // Applied before the answer, so the maps show it at once.
    assert_eq!(in_maps(&lab, b0), ("active".into(), 4));
    let s = lab
        .in_client(|| spread(svc.vip, CONNS, CONCURRENCY))
        .expect("client");
    assert_eq!(s.failures, 0, "{:?}", s.failure_samples);
    let rows = compare(
        &s,
        &expected_shares("wrr", &[4, 1, 1]),
        Tolerance::for_scheduler("wrr"),
    );
    assert!(
        rows.iter().all(|r| r.ok()),
        "after weight 4:\n{}",
        render(&rows)
    );

    // Drain b2 while connections to it are open: new ones avoid it, open ones stay.
    let held = lab
        .in_client(|| hold(svc.vip, 24))
        .expect("client")
        .expect("held");
    let mut on_b2: Vec<HeldConn> = held.into_iter().filter(|c| c.backend() == "b2").collect();
    assert!(!on_b2.is_empty(), "none of 24 connections reached b2");
    let said = succeeds(lb_local(&lab, &["backend", "drain", "web", &addr_arg(2)]));
    assert!(said.contains("state (default) -> \"draining\""), "{said}");
    let config = std::fs::read_to_string(&config_path).expect("the config");
    assert!(
        file_line(&config, b2).contains("state = \"draining\""),
        "b2's line not edited:\n{config}"
    );
    assert!(
        file_line(&config, b0).contains("weight = 4"),
        "the first edit was lost:\n{config}"
    );
    assert_comments_kept(&config);
    assert_eq!(in_maps(&lab, b2), ("draining".into(), 1));
    let s = lab
        .in_client(|| spread(svc.vip, CONNS, CONCURRENCY))
        .expect("client");
    assert_eq!(s.failures, 0, "{:?}", s.failure_samples);
    assert_eq!(
        s.count("b2"),
        0,
        "a new connection reached drained b2: {s:?}"
    );
    assert_eq!(s.succeeded(), CONNS, "{s:?}");
    for c in &mut on_b2 {
        assert_eq!(c.ping().expect("a held connection to b2"), "b2");
    }

    // --undo makes it active again.
    succeeds(lb_local(
        &lab,
        &["backend", "drain", "--undo", "web", &addr_arg(2)],
    ));
    let config = std::fs::read_to_string(&config_path).expect("the config");
    assert!(
        file_line(&config, b2).contains("state = \"active\""),
        "{config}"
    );
    assert_eq!(in_maps(&lab, b2), ("active".into(), 1));
    let s = lab.in_client(|| spread(svc.vip, 60, 4)).expect("client");
    assert!(s.count("b2") > 0, "b2 got nothing after --undo: {s:?}");
}

/// `chattr +i` on a file for as long as this lives: root cannot write, replace or rename over an
/// immutable file without first clearing the flag (CAP_LINUX_IMMUTABLE, which `lb run` drops),
/// whereas a 0444 file or 0555 directory would stop only processes without CAP_DAC_OVERRIDE.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let out = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .expect("chattr starts (e2fsprogs)");
        // No silent pass: a filesystem without the flag fails this test, loudly.
        assert!(
            out.status.success(),
            "chattr +i {} failed (does its filesystem support the immutable flag?): {}",
            path.display(),
            text(&out)
        );
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        if let Err(e) = Command::new("chattr").arg("-i").arg(&self.0).status() {
            eprintln!(
                "cannot clear the immutable flag of {}: {e}",
                self.0.display()
            );
        }
    }
}

#[test]
fn control_refusals_leave_the_file_and_the_maps_unchanged() {
    let svc = service("web", vip(1, false), "wrr", &[1, 1, 1]);
    let mut lab = lab_serving(&svc);
    let _socket = SocketGuard(socket(&lab));
    let config_path = lab.lb_config_path(0);
    let before_file = std::fs::read(&config_path).expect("the config");
    let before_maps = status(&lab).service("web").cloned().expect("web").backends;
    let unchanged = |what: &str| {
        assert_eq!(
            std::fs::read(&config_path).expect("the config"),
            before_file,
            "{what}: the file changed"
        );
        let now = status(&lab).service("web").cloned().expect("web").backends;
        let weights = |b: &[lb_tests::scenario::BackendStatus]| {
            b.iter()
                .map(|b| (b.addr.clone(), b.weight, b.state))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            weights(&now),
            weights(&before_maps),
            "{what}: the maps changed"
        );
    };

    refused(
        lb_local(&lab, &["backend", "weight", "nosuch", &addr_arg(0), "3"]),
        "has no service named \"nosuch\"",
    );
    unchanged("unknown service");
    refused(
        lb_local(&lab, &["backend", "drain", "web", "198.18.2.250:80"]),
        "has no backend 198.18.2.250:80",
    );
    unchanged("unknown backend");
    // Same IP, another port: a different backend.
    let other_port = SocketAddr::new(Lab::backend_addr(0, false).ip(), 8080).to_string();
    refused(
        lb_local(&lab, &["backend", "weight", "web", &other_port, "3"]),
        &format!("has no backend {other_port}"),
    );
    unchanged("unknown port");
    // The CLI checks the range before it asks.
    let out = lb_local(&lab, &["backend", "weight", "web", &addr_arg(0), "70000"]);
    assert!(!out.status.success(), "{}", text(&out));
    unchanged("weight out of range");

    // A non-root caller: the socket (0600 in a 0700 directory) does not let it in.
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ];
    let pin = lab.lb_pin_dir(0).to_str().expect("UTF-8").to_owned();
    let b0 = addr_arg(0);
    let weight_3 = ["backend", "weight", "web", &b0, "3", "--pin-dir", &pin];
    refused(lb(&nobody, &weight_3), "the socket is root-only");
    refused(
        lb(&nobody, &["stats", "zero", "--pin-dir", &pin]),
        "root-only",
    );
    unchanged("non-root caller");
    // The daemon checks the peer's uid too, should the socket's mode ever let one in.
    let chmod = |mode| std::fs::set_permissions(socket(&lab), Permissions::from_mode(mode));
    chmod(0o666).expect("chmod the socket");
    let out = lb(&nobody, &weight_3);
    chmod(0o600).expect("chmod the socket back");
    refused(
        out,
        "refused: the control socket is root-only (uid 65534 asked)",
    );
    unchanged("non-root caller through an open socket");

    // An unwritable file.
    {
        let _immutable = Immutable::set(&config_path);
        refused(
            lb_local(&lab, &["backend", "weight", "web", &addr_arg(0), "3"]),
            "so nothing changed",
        );
        unchanged("immutable file");
        let leftovers: Vec<_> = std::fs::read_dir(lab.dir())
            .expect("the lab directory")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
    // Writable again: the same request goes through.
    succeeds(lb_local(
        &lab,
        &["backend", "weight", "web", &addr_arg(0), "3"],
    ));
    assert_eq!(
        in_maps(&lab, Lab::backend_addr(0, false)),
        ("active".into(), 3)
    );
    lab.check_lb_running(0).expect("lb0 still runs");
}

#[test]
fn control_stats_zero_zeroes_the_counters_and_flows_keep_working() {
    let svc = service("web", vip(1, false), "rr", &[1, 1, 1]);
    let mut lab = lab_serving(&svc);
    let socket_path = socket(&lab);
    let _socket = SocketGuard(socket_path.clone());

    let mut held = lab
        .in_client(|| HeldConn::open(svc.vip))
        .expect("client")
        .expect("held");
    let s = lab
        .in_client(|| spread(svc.vip, CONNS, CONCURRENCY))
        .expect("client");
    assert_eq!(s.failures, 0, "{:?}", s.failure_samples);
    let before = status(&lab);
    let web = before.service("web").expect("web");
    assert_eq!(web.new_flows, CONNS as u64 + 1, "{web:?}");
    assert!(web.packets >= 3 * CONNS as u64, "{web:?}");
    // Every CPU's backend counters (LB_BE_STATS, per CPU by hand) add up to the service's.
    let backend_flows: u64 = web.backends.iter().map(|b| b.new_flows).sum();
    assert_eq!(backend_flows, web.new_flows, "{web:?}");
    assert_eq!(counter(&before, "flow_new"), CONNS as u64 + 1);
    let rx_before = counter(&before, "rx_packets");

    let said = succeeds(lb_local(&lab, &["stats", "zero"]));
    assert!(said.contains("zeroed"), "{said}");
    let after = status(&lab);
    let web = after.service("web").expect("web");
    // No connection was opened since and the held one was idle; the spread's last ACKs may
    // still have been in flight.
    assert_eq!(web.new_flows, 0, "{web:?}");
    assert!(web.packets <= 5, "{web:?}");
    for b in &web.backends {
        assert_eq!(b.new_flows, 0, "{b:?}");
    }
    assert_eq!(counter(&after, "flow_new"), 0);
    // Stray frames (neighbour discovery) may arrive in between; nothing like the traffic before.
    assert!(
        counter(&after, "rx_packets") < rx_before / 10,
        "rx_packets {} after zero, {rx_before} before",
        counter(&after, "rx_packets")
    );
    assert!(
        after.flows > 0,
        "the flow table was emptied: {}",
        after.flows
    );

    // The held connection stays on its backend, and is counted again.
    let first = held.backend().to_owned();
    assert_eq!(
        lab.in_client(|| held.ping())
            .expect("client")
            .expect("ping"),
        first
    );
    let i: usize = first[1..].parse().expect("bN");
    let b = status(&lab)
        .backend("web", Lab::backend_addr(i, false))
        .cloned()
        .expect("the held connection's backend");
    assert!(b.packets > 0 && b.new_flows == 0, "{b:?}");
    // New connections still balance and count from zero.
    let s = lab.in_client(|| spread(svc.vip, 30, 4)).expect("client");
    assert_eq!(s.failures, 0, "{:?}", s.failure_samples);
    assert_eq!(s.per_backend.len(), 3, "{s:?}");
    let again = status(&lab);
    assert_eq!(again.service("web").expect("web").new_flows, 30);
    assert_eq!(counter(&again, "flow_new"), 30);

    // The daemon removes its socket when it stops.
    lab.stop_lb(0).expect("stop lb0");
    assert!(
        !socket_path.exists(),
        "{} left behind",
        socket_path.display()
    );
}

#[test]
fn control_without_a_daemon_says_how_to_reach_one_or_zookeeper() {
    // A pin directory no daemon uses: its default socket does not exist.
    let pin = format!("/sys/fs/bpf/lbt-{}-no-daemon", std::process::id());
    assert!(!default_socket_path(Path::new(&pin)).exists());
    for args in [
        vec![
            "backend",
            "weight",
            "web",
            "198.18.2.11:80",
            "2",
            "--pin-dir",
            &pin,
        ],
        vec![
            "backend",
            "drain",
            "web",
            "198.18.2.11:80",
            "--pin-dir",
            &pin,
        ],
    ] {
        let out = lb(&[], &args);
        refused(out.clone(), "cannot reach the daemon's control socket");
        // Where else the change can go.
        refused(out, "--zk");
    }
    let socket = std::env::temp_dir().join(format!("lbt-{}-none.sock", std::process::id()));
    let socket = socket.to_str().expect("UTF-8");
    refused(
        lb(&[], &["stats", "zero", "--control-socket", socket]),
        &format!("cannot reach the daemon's control socket {socket}"),
    );
}
