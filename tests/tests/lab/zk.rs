//! `lb run --zk` in the lab, against a real ZooKeeper (Debian's server, started in the router
//! namespace so every LB and backend reaches it): hand edits with zkCli, the admin CLI, `lb register`
//! on a backend, a ZooKeeper outage under traffic, malformed nodes, and two LBs following one tree.
//! Needs root, bpffs, Debian's `zookeeper` package and `LB_BIN` (`cargo xtask test` provides them).

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use lb_tests::client::{HeldConn, IO_TIMEOUT, held_per_backend};
use lb_tests::config::{BackendConfig, ServiceConfig};
use lb_tests::lab::run_in_netns;
use lb_tests::lab::topology::CLIENT_V4;
use lb_tests::scenario::{
    Tolerance, backend_state, compare, expected_shares, render, service, vip, zookeeper,
};
use lb_tests::zk_lab::{APPLY_TIMEOUT as APPLY, ZkLab};
use lb_tests::{Lab, LabOptions, assert_eventually, hold, spread};
use lb_userspace::report::ZkConnection;
const CONCURRENCY: usize = 4;

fn start(lbs: usize) -> ZkLab {
    ZkLab::start(LabOptions {
        lbs,
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..LabOptions::default()
    })
    .expect("the lab with ZooKeeper starts")
}

/// `spread` from the client namespace; every connection must succeed.
fn spread_ok(t: &ZkLab, vip: SocketAddr, n: usize) -> lb_tests::Spread {
    let s = t
        .lab
        .in_client(|| spread(vip, n, CONCURRENCY))
        .expect("client namespace");
    assert_eq!(s.failures, 0, "{:?}", s.failure_samples);
    s
}

fn hold_ok(t: &ZkLab, vip: SocketAddr, n: usize) -> Vec<HeldConn> {
    t.lab
        .in_client(|| hold(vip, n))
        .expect("client namespace")
        .expect("held connections open")
}

fn b(i: usize) -> SocketAddr {
    Lab::backend_addr(i, false)
}

fn backend_znode(service: &str, addr: SocketAddr) -> String {
    format!("/lb/services/{service}/backends/{addr}")
}

/// Every held connection is still answered by the backend that greeted it.
fn assert_held_stay(held: &mut [HeldConn], what: &str) {
    for c in held {
        let greeted = c.backend().to_string();
        let now = c
            .ping()
            .unwrap_or_else(|e| panic!("{what}: held connection {} broke: {e:#}", c.local_addr()));
        assert_eq!(
            now,
            greeted,
            "{what}: held connection {} moved",
            c.local_addr()
        );
    }
}

#[test]
fn zkcli_added_backend_takes_new_connections() {
    let mut t = start(1);
    let two = service("web", vip(1, false), "wrr", &[1, 1]);
    t.put(&two).unwrap();
    t.start_lb(0, &[]).unwrap();
    t.wait_serves(0, &two).unwrap();
    let s = spread_ok(&t, two.vip, 200);
    assert_eq!(s.count("b2"), 0, "{s:?}");
    assert!(s.count("b0") > 50 && s.count("b1") > 50, "{s:?}");
    assert_eventually!(
        zookeeper(&t.status(0).unwrap()).connection == ZkConnection::Connected,
        APPLY,
        "{:#?}",
        t.status(0).unwrap().daemon
    );

    // An operator's hand edit: an empty node is weight 1, active.
    t.zkcli(&["create", &backend_znode("web", b(2)), ""])
        .unwrap();
    let three = service("web", vip(1, false), "wrr", &[1, 1, 1]);
    t.wait_serves(0, &three).unwrap();
    let s = spread_ok(&t, three.vip, 300);
    assert!(
        s.count("b2") >= 80,
        "the added backend gets its third: {s:?}"
    );
}

#[test]
fn zkcli_removed_backend_gets_no_new_connections_while_held_ones_stay() {
    let mut t = start(1);
    let three = service("web", vip(1, false), "maglev", &[1, 1, 1]);
    t.put(&three).unwrap();
    t.start_lb(0, &[]).unwrap();
    t.wait_serves(0, &three).unwrap();
    let mut held = hold_ok(&t, three.vip, 30);
    let per = held_per_backend(&held);
    assert_eq!(
        per.len(),
        3,
        "30 held connections reach every backend: {per:?}"
    );

    t.zkcli(&["delete", &backend_znode("web", b(1))]).unwrap();
    let two = ServiceConfig::new(
        "web",
        three.vip,
        "maglev",
        vec![
            BackendConfig::active(b(0), 1),
            BackendConfig::active(b(2), 1),
        ],
    );
    t.wait_serves(0, &two).unwrap();
    // The removed backend is kept, draining, while the flow table still sends held connections to it.
    assert_eq!(
        backend_state(&t.status(0).unwrap(), "web", b(1)),
        Some(("draining".to_owned(), 0)),
        "{:#?}",
        t.status(0).unwrap()
    );
    assert_held_stay(&mut held, "after the removal");
    let s = spread_ok(&t, two.vip, 300);
    assert_eq!(s.count("b1"), 0, "no new connection reaches b1: {s:?}");
    assert_held_stay(&mut held, "after new traffic");
}

#[test]
fn weight_change_shifts_the_distribution() {
    let mut t = start(1);
    let even = service("web", vip(1, false), "wrr", &[1, 1, 1]);
    t.put(&even).unwrap();
    t.start_lb(0, &[]).unwrap();
    t.wait_serves(0, &even).unwrap();
    for (weights, change) in [([1, 1, 1], None), ([1, 1, 4], Some(4))] {
        if let Some(weight) = change {
            t.admin(&[
                "backend",
                "weight",
                "web",
                &b(2).to_string(),
                &weight.to_string(),
            ])
            .unwrap();
            t.wait_serves(0, &service("web", vip(1, false), "wrr", &weights))
                .unwrap();
        }
        let s = spread_ok(&t, even.vip, 600);
        let rows = compare(
            &s,
            &expected_shares("wrr", &weights),
            Tolerance::for_scheduler("wrr"),
        );
        assert!(
            rows.iter().all(|r| r.ok()),
            "weights {weights:?}:\n{}",
            render(&rows)
        );
    }
}

#[test]
fn registered_backend_appears_drains_on_sigterm_and_expires_on_sigkill() {
    let mut t = start(1);
    let two = service("web", vip(1, false), "wrr", &[1, 1]);
    t.put(&two).unwrap();
    t.start_lb(0, &[]).unwrap();
    t.wait_serves(0, &two).unwrap();
    let with_b2 = service("web", vip(1, false), "wrr", &[1, 1, 2]);
    let connect = t.backend_connect();
    let register_args = [
        "--weight",
        "2",
        "--check",
        "tcp",
        "--drain-s",
        "3",
        "--zk-session-timeout-ms",
        "2000",
    ];

    // SIGTERM: draining (no new connections, held ones go on), then the node is deleted.
    t.lab
        .start_register(2, &connect, "web", false, &register_args)
        .expect("lb register starts");
    t.wait_serves(0, &with_b2).unwrap();
    let s = spread_ok(&t, two.vip, 200);
    assert!(
        s.count("b2") >= 60,
        "the registered backend takes its half: {s:?}"
    );
    let mut held = hold_ok(&t, two.vip, 12);
    assert!(
        held.iter().any(|c| c.backend() == "b2"),
        "{:?}",
        held_per_backend(&held)
    );
    t.lab
        .signal_register(2, libc::SIGTERM)
        .expect("SIGTERM to lb register");
    assert_eventually!(
        backend_state(&t.status(0).unwrap(), "web", b(2)) == Some(("draining".to_owned(), 2)),
        APPLY,
        "b2 never showed as draining: {:#?}\nregister log: {:?}",
        t.status(0).unwrap(),
        t.lab.register_log(2)
    );
    let s = spread_ok(&t, two.vip, 100);
    assert_eq!(
        s.count("b2"),
        0,
        "a draining backend takes no new connection: {s:?}"
    );
    assert_held_stay(&mut held, "while b2 drains");
    let exit = t
        .lab
        .wait_register_exit(2, Duration::from_secs(15))
        .expect("lb register exits after draining");
    assert!(exit.success(), "lb register after SIGTERM: {exit}");
    let nodes = t.admin(&["backend", "ls", "web"]).unwrap();
    assert!(
        !nodes.contains(&b(2).to_string()),
        "the node is gone: {nodes}"
    );
    t.wait_serves(0, &two).unwrap();
    assert_held_stay(&mut held, "after b2 left");
    drop(held);

    // SIGKILL: nothing deletes the node; the session expiry does.
    t.lab
        .start_register(2, &connect, "web", false, &register_args)
        .expect("lb register starts again");
    t.wait_serves(0, &with_b2).unwrap();
    t.lab
        .signal_register(2, libc::SIGKILL)
        .expect("SIGKILL to lb register");
    let exit = t
        .lab
        .wait_register_exit(2, Duration::from_secs(5))
        .expect("lb register dies");
    assert!(!exit.success());
    t.wait_serves(0, &two).unwrap();
    let s = spread_ok(&t, two.vip, 200);
    assert_eq!(s.count("b2"), 0, "{s:?}");
}

#[test]
fn zookeeper_outage_under_traffic_fails_static_then_applies_changes() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let mut t = start(1);
    let two = service("web", vip(1, false), "maglev", &[1, 1]);
    t.put(&two).unwrap();
    t.start_lb(0, &[]).unwrap();
    t.wait_serves(0, &two).unwrap();
    let mut held = hold_ok(&t, two.vip, 16);
    assert_eventually!(
        zookeeper(&t.status(0).unwrap()).connection == ZkConnection::Connected,
        APPLY
    );

    t.zk.stop().expect("ZooKeeper stops");
    let started = Instant::now();
    let client_ns = t.lab.client_netns();
    let (traffic, states) = std::thread::scope(|scope| {
        // Traffic for the whole outage: new connections and pings on the held ones, bounded in time.
        let traffic = scope.spawn(|| {
            run_in_netns(&client_ns, || {
                let mut new_conns = lb_tests::Spread::default();
                let mut pings = 0usize;
                let mut ping_failures = Vec::new();
                while started.elapsed() < OUTAGE {
                    let s = spread(two.vip, 8, CONCURRENCY);
                    for (backend, n) in s.per_backend {
                        *new_conns.per_backend.entry(backend).or_default() += n;
                    }
                    new_conns.failures += s.failures;
                    new_conns.failure_samples.extend(s.failure_samples);
                    for c in held.iter_mut() {
                        pings += 1;
                        let greeted = c.backend().to_string();
                        match c.ping() {
                            Ok(now) if now == greeted => {}
                            other => ping_failures.push(format!("{}: {other:?}", c.local_addr())),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                (new_conns, pings, ping_failures)
            })
        });
        // Meanwhile: what the daemon reports about ZooKeeper.
        let mut states = Vec::new();
        while started.elapsed() < OUTAGE {
            if let Ok(s) = t.lab.lb_status_json(0) {
                let state = zookeeper(&s).connection;
                if states.last() != Some(&state) {
                    states.push(state);
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        (traffic.join(), states)
    });
    let (new_conns, pings, ping_failures) = match traffic {
        Ok(r) => r.expect("client namespace"),
        Err(panic) => std::panic::resume_unwind(panic),
    };
    assert_eq!(
        new_conns.failures, 0,
        "new connections failed during the outage: {:?}",
        new_conns.failure_samples
    );
    assert!(new_conns.succeeded() > 200, "{new_conns:?}");
    assert!(
        pings > 200 && ping_failures.is_empty(),
        "{pings} pings: {ping_failures:?}"
    );
    assert!(
        states.contains(&ZkConnection::Disconnected),
        "lb status showed ZooKeeper as {states:?} during the outage"
    );

    t.zk.restart().expect("ZooKeeper restarts");
    t.put_backend("web", b(2), 1).unwrap();
    let three = service("web", vip(1, false), "maglev", &[1, 1, 1]);
    t.wait_serves(0, &three).unwrap();
    assert_eventually!(
        zookeeper(&t.status(0).unwrap()).connection == ZkConnection::Connected,
        APPLY
    );
    let s = spread_ok(&t, three.vip, 300);
    assert!(
        s.count("b2") > 30,
        "the backend added after the outage: {s:?}"
    );
    assert_held_stay(&mut held, "after the outage");
}

#[test]
fn malformed_nodes_leave_every_other_service_forwarding() {
    let mut t = start(1);
    let web = service("web", vip(1, false), "wrr", &[1, 1]);
    let api = ServiceConfig::new(
        "api",
        vip(2, false),
        "maglev",
        vec![
            BackendConfig::active(b(1), 1),
            BackendConfig::active(b(2), 1),
        ],
    );
    t.put(&web).unwrap();
    t.put(&api).unwrap();
    t.start_lb(0, &[]).unwrap();
    t.wait_serves(0, &web).unwrap();
    t.wait_serves(0, &api).unwrap();

    let wrong_port = SocketAddr::new(b(2).ip(), 8080);
    let bad_nodes = [
        "/lb/services/bad".to_owned(),
        backend_znode("web", wrong_port),
        "/lb/services/api".to_owned(),
    ];
    t.zkcli(&["create", &bad_nodes[0], "{oops"]).unwrap();
    t.zkcli(&["create", &bad_nodes[1], ""]).unwrap();
    // A bad edit of a serving service: it keeps its last good version.
    t.zkcli(&["set", &bad_nodes[2], "garbage{"]).unwrap();
    assert_eventually!(
        zookeeper(&t.status(0).unwrap()).current_rejections == 3,
        APPLY,
        "{:#?}",
        t.status(0).unwrap().daemon
    );
    assert!(zookeeper(&t.status(0).unwrap()).rejections >= 3);
    let log = t.lab.lb_log(0).expect("lb log");
    for node in &bad_nodes {
        assert!(
            log.lines()
                .any(|l| l.contains("rejected") && l.contains(node.as_str())),
            "the rejection of {node} is logged: {log}"
        );
    }
    assert!(
        log.contains("port 8080"),
        "the port mismatch is explained: {log}"
    );

    t.wait_serves(0, &web).unwrap();
    t.wait_serves(0, &api).unwrap();
    let s = spread_ok(&t, web.vip, 200);
    assert_eq!(s.count("b2"), 0, "the rejected backend gets nothing: {s:?}");
    let s = spread_ok(&t, api.vip, 200);
    assert!(s.count("b1") > 0 && s.count("b2") > 0, "{s:?}");

    // Fixing the service node applies it again.
    t.zkcli(&[
        "set",
        &bad_nodes[2],
        &format!(r#"{{"vip":"{}","scheduler":"rr"}}"#, api.vip),
    ])
    .unwrap();
    let api_rr = ServiceConfig {
        scheduler: "rr".into(),
        ..api.clone()
    };
    t.wait_serves(0, &api_rr).unwrap();
}

/// Connects from a fixed client port, reads the greeting and resets the connection (no TIME_WAIT,
/// so the same 5-tuple can be used again through the other load balancer).
fn greeting_from_port(vip: SocketAddr, port: u16) -> anyhow::Result<String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_linger(Some(Duration::ZERO))?;
    socket.bind(&SocketAddr::new(IpAddr::V4(CLIENT_V4), port).into())?;
    socket
        .connect_timeout(&vip.into(), IO_TIMEOUT)
        .with_context(|| format!("connect from port {port}"))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .with_context(|| format!("greeting on port {port}"))?;
    ensure!(
        line.ends_with('\n'),
        "port {port}: incomplete greeting {line:?}"
    );
    Ok(line.trim_end().to_owned())
}

#[test]
fn two_lbs_choose_alike_and_take_over_each_others_flows() {
    let mut t = start(2);
    let svc = service("web", vip(1, false), "maglev", &[1, 2, 3]);
    // LB0 sees the backends arrive one by one; LB1 starts later and reads them all at once.
    let first = service("web", svc.vip, "maglev", &[1]);
    t.put(&first).unwrap();
    t.start_lb(0, &[]).unwrap();
    t.wait_serves(0, &first).unwrap();
    for i in 1..3 {
        t.put_backend("web", b(i), svc.backends[i].weight).unwrap();
        t.wait_serves(0, &service("web", svc.vip, "maglev", &[1, 2, 3][..=i]))
            .unwrap();
    }
    t.start_lb(1, &[]).unwrap();
    t.wait_serves(1, &svc).unwrap();

    // The same 5-tuples through each LB alone reach the same backends.
    const PORTS: std::ops::Range<u16> = 41_000..41_200;
    let mut choices = Vec::new();
    for lb in 0..2 {
        t.lab.route_vips_via(&[lb]).expect("route the VIPs");
        let chosen = t
            .lab
            .in_client(|| {
                PORTS
                    .map(|port| greeting_from_port(svc.vip, port))
                    .collect::<anyhow::Result<Vec<String>>>()
            })
            .expect("client namespace")
            .unwrap_or_else(|e| panic!("through lb{lb}: {e:#}"));
        choices.push(chosen);
    }
    let differ: Vec<u16> = PORTS
        .zip(choices[0].iter().zip(&choices[1]))
        .filter(|(_, (a, b))| a != b)
        .map(|(port, _)| port)
        .collect();
    assert!(
        differ.is_empty(),
        "lb0 and lb1 chose differently for client ports {differ:?}"
    );
    let mut per = std::collections::BTreeMap::<&str, usize>::new();
    for name in &choices[0] {
        *per.entry(name.as_str()).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "200 ports reach every backend: {per:?}");

    // Connections opened through LB0 survive a move to LB1, which never saw their SYN.
    t.lab.route_vips_via(&[0]).expect("route the VIPs to lb0");
    let mut held = hold_ok(&t, svc.vip, 30);
    let lb1_packets = |t: &ZkLab| t.status(1).unwrap().services[0].packets;
    let before = lb1_packets(&t);
    t.lab.route_vips_via(&[1]).expect("route the VIPs to lb1");
    assert_held_stay(&mut held, "moved from lb0 to lb1");
    assert!(
        lb1_packets(&t) >= before + 30,
        "the pings went through lb1 ({before} packets before)"
    );
}
