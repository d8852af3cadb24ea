//! The packet path under abuse, with real TCP through the real XDP program: spoofed-ACK floods
//! cannot evict or inflate anything (state only from a SYN), and a spoofed-SYN flood above the
//! new-flow guard's rate leaves held and new legitimate connections working.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use lb_tests::client::held_per_backend;
use lb_tests::config::{ServiceConfig, to_toml};
use lb_tests::scenario::{self, Status, active_conns, service, status_shows, vip};
use lb_tests::synflood::{ACK, SYN, tcp_stream};
use lb_tests::{HeldConn, Lab, LabOptions, assert_eventually, hold, spread};

fn lab_serving(services: &[ServiceConfig], extra_args: &[&str]) -> Lab {
    let mut lab = Lab::start(LabOptions {
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..LabOptions::default()
    })
    .expect("the lab starts");
    lab.start_lb(0, &to_toml(services), extra_args)
        .expect("lb starts");
    assert_eventually!(
        lab.lb_status_json(0)
            .is_ok_and(|s| services.iter().all(|svc| status_shows(&s, svc))),
        Duration::from_secs(10),
        "lb never applied the services"
    );
    lab
}

fn status(lab: &Lab) -> Status {
    lab.lb_status_json(0).expect("lb status")
}

fn v4(vip: SocketAddr) -> SocketAddrV4 {
    match vip {
        SocketAddr::V4(v) => v,
        SocketAddr::V6(_) => unreachable!("an IPv4 VIP"),
    }
}

/// Every held connection still answers, from the backend that greeted it.
fn assert_held_on_their_backends(held: &mut [HeldConn]) {
    for c in held.iter_mut() {
        let greeted = c.backend().to_string();
        assert_eq!(
            c.ping().expect("a held connection survives the flood"),
            greeted,
            "a held connection moved to another backend"
        );
    }
}

/// The active-connection counters are exactly the held connections per backend.
fn assert_counts_exact(s: &Status, service: &str, held: &[HeldConn]) {
    let per = held_per_backend(held);
    for i in 0..3 {
        let want = per.get(&Lab::backend_name(i)).copied().unwrap_or(0) as u64;
        assert_eq!(
            active_conns(s, service, Lab::backend_addr(i, false)),
            Some(want),
            "{service} b{i}: counters off: {s:#?}"
        );
    }
}

/// A spoofed-ACK flood of 20× the flow table: no flow is created, so nothing is evicted, the held
/// connections stay on their backends, and least-conn's counters stay exact.
#[test]
fn a_spoofed_ack_flood_of_20x_the_flow_table_moves_and_inflates_nothing() {
    const TABLE: u32 = 1024;
    const ACKS: usize = 20 * TABLE as usize;
    let svc = service("web", vip(1, false), "least-conn", &[1, 1, 1]);
    let lab = lab_serving(
        std::slice::from_ref(&svc),
        &[
            "--flow-table-size",
            &TABLE.to_string(),
            "--sweep-interval-s",
            "1",
        ],
    );
    let mut held = lab
        .in_client(|| hold(svc.vip, 30))
        .expect("client")
        .expect("hold");
    assert_eventually!(
        lab.lb_status_json(0).is_ok_and(|s| {
            (0..3).all(|i| active_conns(&s, "web", Lab::backend_addr(i, false)).is_some())
        }),
        Duration::from_secs(5),
        "no status"
    );
    let before = status(&lab);
    assert_counts_exact(&before, "web", &held);
    let vip4 = v4(svc.vip);
    let sent = lab
        .in_client(|| {
            tcp_stream(
                vip4,
                Ipv4Addr::new(198, 18, 1, 100),
                100,
                ACKS,
                Duration::ZERO,
                ACK,
            )
        })
        .expect("client")
        .expect("flood");
    assert_eq!(sent, ACKS);
    let flooded = status(&lab);
    let misses = scenario::counter(&flooded, "flow_miss_non_syn")
        - scenario::counter(&before, "flow_miss_non_syn");
    assert!(
        misses >= ACKS as u64 * 9 / 10,
        "the flood reached the balancer as stateless misses: {misses}"
    );
    assert!(
        flooded.flows <= held.len() + 8,
        "the flood created flows: {} in the table",
        flooded.flows
    );
    assert_eq!(scenario::counter(&flooded, "flow_rescheduled"), 0);
    assert_counts_exact(&flooded, "web", &held);
    assert_held_on_their_backends(&mut held);
    // A sweep later (1 s) nothing has drifted either.
    std::thread::sleep(Duration::from_millis(2500));
    assert_counts_exact(&status(&lab), "web", &held);
}

/// Spoofed SYNs far above `--max-new-flows-per-cpu`: the guard forwards them by consistent hash
/// without state, the flow table does not fill, held connections keep working and ≥ 99 % of new
/// legitimate connections made during the flood succeed.
#[test]
fn a_spoofed_syn_flood_above_the_guard_keeps_old_and_new_connections_working() {
    const SYNS: usize = 40_000;
    const LEGIT: usize = 300;
    let svc = service("web", vip(1, false), "rr", &[1, 1, 1]);
    let lab = lab_serving(
        std::slice::from_ref(&svc),
        &[
            "--max-new-flows-per-cpu",
            "500",
            "--half-open-timeout-s",
            "2",
        ],
    );
    let mut held = lab
        .in_client(|| hold(svc.vip, 20))
        .expect("client")
        .expect("hold");
    let vip4 = v4(svc.vip);
    let (sent, legit) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            lab.in_client(|| {
                tcp_stream(
                    vip4,
                    Ipv4Addr::new(198, 18, 1, 100),
                    100,
                    SYNS,
                    Duration::ZERO,
                    SYN,
                )
            })
        });
        // Give the flood a head start so the legitimate connections meet the tripped guard.
        std::thread::sleep(Duration::from_millis(50));
        let legit = lab.in_client(|| spread(svc.vip, LEGIT, 4));
        (flood.join(), legit)
    });
    let sent = sent
        .expect("the flood thread")
        .expect("client")
        .expect("flood");
    let legit = legit.expect("client");
    assert_eq!(sent, SYNS);
    assert!(
        legit.succeeded() * 100 >= LEGIT * 99,
        "new connections during the flood: {} of {LEGIT} ({:?})",
        legit.succeeded(),
        legit.failure_samples
    );
    let s = status(&lab);
    let bypassed = scenario::counter(&s, "flow_guard_bypass");
    assert!(bypassed > 0, "the guard never tripped: {:?}", s.counters);
    let recorded = scenario::counter(&s, "flow_new");
    assert!(
        recorded + bypassed >= SYNS as u64 / 2,
        "the flood reached the balancer: {recorded} recorded + {bypassed} bypassed"
    );
    assert_held_on_their_backends(&mut held);
    assert_counts_exact(&s, "web", &held);
}
