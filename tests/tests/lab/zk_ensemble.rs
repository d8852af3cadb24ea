//! Two load balancers following a three-member ZooKeeper ensemble (each member in its own namespace,
//! see `lb_tests::zk_ensemble`), with real TCP from the client namespace through XDP: the leader
//! killed under traffic, the quorum lost and regained, one LB's session expiring. Throughout, both
//! LBs' pinned tables (services, backends, scheduler and hash tables) are compared byte for byte.
//! Needs root, bpffs, Debian's `zookeeper` package and `LB_BIN` (`cargo xtask test` provides them).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use lb_tests::config::ServiceConfig;
use lb_tests::eventually::Eventually;
use lb_tests::lab::tables::PinnedTables;
use lb_tests::lab::topology::{ZK_PREFIX_V4, lb_v4};
use lb_tests::scenario::{service, vip, zookeeper};
use lb_tests::zk_ensemble::{ELECTION_TIMEOUT, MEMBERS, Partition, ZkEnsemble};
use lb_tests::zk_lab::{APPLY_TIMEOUT as APPLY, ZkLab};
use lb_tests::{ContinuousLoad, Lab, LabOptions, LoadReport};
use lb_userspace::report::ZkConnection;

/// Both LBs' session timeout unless a test gives one a shorter one: long enough to outlast an
/// election (a second or two), short enough that a lost quorum expires sessions within the test.
const SESSION_MS: &str = "6000";
const HELD: usize = 16;
/// The longest a test's background traffic runs.
const LOAD_MAX: Duration = Duration::from_secs(180);

type EnsembleLab = ZkLab<ZkEnsemble>;

fn start() -> EnsembleLab {
    ZkLab::start_ensemble(LabOptions {
        lbs: 2,
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..LabOptions::default()
    })
    .expect("the lab with a ZooKeeper ensemble starts")
}

/// `web` on b0, b1 (`weights`), written before both LBs start (so both read it the same way),
/// then both LBs with `session_ms[lb]`; returns the service once both serve it.
fn start_lbs(t: &mut EnsembleLab, weights: &[u32], session_ms: [&str; 2]) -> ServiceConfig {
    let svc = service("web", vip(1, false), "maglev", weights);
    t.put(&svc).expect("lb service/backend put");
    for (lb, session) in session_ms.iter().enumerate() {
        t.start_lb(lb, &["--zk-session-timeout-ms", session])
            .unwrap_or_else(|e| panic!("lb{lb} starts: {e:#}"));
    }
    for lb in 0..2 {
        t.wait_serves(lb, &svc).expect("serves");
        wait_connected(t, lb);
    }
    svc
}

fn connection(t: &EnsembleLab, lb: usize) -> Option<ZkConnection> {
    t.status(lb).ok().map(|s| zookeeper(&s).connection)
}

fn session_id(t: &EnsembleLab, lb: usize) -> Option<String> {
    t.status(lb)
        .ok()
        .and_then(|s| zookeeper(&s).session_id.clone())
}

/// Waits until `lb` reports its session connected and a serving member has its connection;
/// returns that member.
fn wait_connected(t: &EnsembleLab, lb: usize) -> usize {
    Eventually::new(format!("lb{lb} connected to a member"), APPLY)
        .every(Duration::from_millis(100))
        .poll(|| {
            let state = connection(t, lb);
            let members = t.zk.members_with_client(IpAddr::V4(lb_v4(lb)));
            match (state, members.as_slice()) {
                (Some(ZkConnection::Connected), [m]) => Ok(*m),
                _ => Err(format!(
                    "{state:?}, members with its connection {members:?}"
                )),
            }
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\nlb{lb}'s log:\n{}",
                t.lab.lb_log(lb).unwrap_or_default()
            )
        })
}

/// Both LBs' pinned tables, once they are byte-identical (they may differ for the moment one has
/// applied a change the other has not yet); the caller checks what they hold.
fn identical_tables(t: &EnsembleLab, what: &str) -> PinnedTables {
    Eventually::new(
        format!("lb0's and lb1's pinned tables to be identical ({what})"),
        APPLY,
    )
    .every(Duration::from_millis(50))
    .poll(|| {
        let a = t.lab.lb_pinned_tables(0).map_err(|e| format!("{e:#}"))?;
        let b = t.lab.lb_pinned_tables(1).map_err(|e| format!("{e:#}"))?;
        if a == b {
            Ok(a)
        } else {
            Err(a.differences(&b).join("\n"))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn serving(svc: &ServiceConfig) -> BTreeSet<SocketAddr> {
    svc.backends.iter().map(|b| b.addr).collect()
}

/// No held connection broke or moved, no new connection failed, and traffic flowed.
fn assert_no_failures(report: &LoadReport, what: &str) {
    assert!(
        report.broken == 0 && report.moved == 0 && report.new_failures == 0,
        "{what}: {report:#?}"
    );
    assert!(
        report.rounds > 10 && report.new_conns > 20,
        "{what}: too little traffic: {report:#?}"
    );
}

fn load(t: &EnsembleLab, svc: &ServiceConfig) -> ContinuousLoad {
    ContinuousLoad::start(&t.lab.client_netns(), svc.vip, HELD, LOAD_MAX).expect("load starts")
}

/// Waits until the load has done `more` further rounds (traffic flowed over an event).
fn wait_rounds(load: &ContinuousLoad, more: usize) {
    let target = load.rounds() + more;
    Eventually::new(format!("{more} more rounds of traffic"), APPLY)
        .poll(|| {
            if load.rounds() >= target {
                Ok(())
            } else {
                Err(load.rounds())
            }
        })
        .expect("traffic flows");
}

#[test]
fn leader_killed_under_traffic_both_lbs_reconnect_and_apply_a_change() {
    let mut t = start();
    let svc = start_lbs(&mut t, &[1, 1], [SESSION_MS, SESSION_MS]);
    let before = identical_tables(&t, "before the kill");
    assert_eq!(before.serving, serving(&svc));
    let on_before = [wait_connected(&t, 0), wait_connected(&t, 1)];
    let sessions = [session_id(&t, 0), session_id(&t, 1)];

    let load = load(&t, &svc);
    wait_rounds(&load, 5);
    let leader = t.zk.leader().expect("a leader");
    t.zk.kill(leader).expect("kill the leader");
    let killed = Instant::now();
    let new_leader = t.zk.leader().expect("a new leader is elected");
    let elected = killed.elapsed();
    assert_ne!(new_leader, leader);
    let mut reconnected = Vec::new();
    for (lb, session) in sessions.iter().enumerate() {
        let member = wait_connected(&t, lb);
        assert_ne!(member, leader, "lb{lb} is connected to the killed member");
        // The election took less than the session timeout: the session moved with the LB.
        assert_eq!(&session_id(&t, lb), session, "lb{lb}'s session");
        reconnected.push((member, killed.elapsed()));
    }
    // The LBs lost only ZooKeeper, never their state: the same bytes as before.
    assert_eq!(identical_tables(&t, "after the election"), before);

    // A change written after the election applies on both.
    t.put_backend("web", Lab::backend_addr(2, false), 2)
        .expect("lb backend put after the election");
    let three = service("web", svc.vip, "maglev", &[1, 1, 2]);
    t.wait_serves(0, &three).expect("lb0 applies the change");
    t.wait_serves(1, &three).expect("lb1 applies the change");
    let after = identical_tables(&t, "after the change");
    assert_eq!(after.serving, serving(&three));
    wait_rounds(&load, 5);
    let report = load.finish().expect("load report");
    assert_no_failures(&report, "over the leader's kill");
    println!(
        "leader {leader} killed: member {new_leader} elected in {elected:.2?}; lb0 on member {} -> {} after {:.2?}, \
         lb1 on member {} -> {} after {:.2?}; {} new connections, {} held, 0 failures",
        on_before[0],
        reconnected[0].0,
        reconnected[0].1,
        on_before[1],
        reconnected[1].0,
        reconnected[1].1,
        report.new_conns,
        report.held
    );
}

#[test]
fn lost_quorum_fails_static_and_a_change_applies_once_it_is_back() {
    const OUTAGE: Duration = Duration::from_secs(12);
    let mut t = start();
    let svc = start_lbs(&mut t, &[1, 1], [SESSION_MS, SESSION_MS]);
    let before = identical_tables(&t, "before the outage");
    assert_eq!(before.serving, serving(&svc));

    let load = load(&t, &svc);
    wait_rounds(&load, 5);
    let leader = t.zk.leader().expect("a leader");
    let killed: Vec<usize> = [leader, (leader + 1) % MEMBERS].into();
    for &m in &killed {
        t.zk.kill(m).expect("kill a member");
    }
    let started = Instant::now();
    // For the whole outage (bounded in time): both LBs' tables stay what they were, and both say
    // ZooKeeper is unreachable.
    let mut states = [BTreeSet::new(), BTreeSet::new()];
    let mut samples = 0;
    while started.elapsed() < OUTAGE {
        for (lb, seen) in states.iter_mut().enumerate() {
            if let Some(state) = connection(&t, lb) {
                seen.insert(format!("{state:?}"));
            }
            let tables = t.lab.lb_pinned_tables(lb).expect("read the pinned tables");
            assert_eq!(
                tables,
                before,
                "lb{lb}'s tables changed {:.1?} into the outage: {:?}",
                started.elapsed(),
                tables.differences(&before)
            );
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    for (lb, seen) in states.iter().enumerate() {
        assert!(
            seen.iter().any(|s| s != "Connected"),
            "lb{lb} never said ZooKeeper was unreachable: {seen:?}"
        );
        assert!(
            connection(&t, lb) != Some(ZkConnection::Connected),
            "lb{lb} says connected without a quorum ({seen:?})"
        );
    }

    t.zk.restart(&killed).expect("the members restart");
    let back = started.elapsed();
    t.zk.leader().expect("a leader once the quorum is back");
    t.put_backend("web", Lab::backend_addr(2, false), 1)
        .expect("lb backend put once the quorum is back");
    let three = service("web", svc.vip, "maglev", &[1, 1, 1]);
    t.wait_serves(0, &three).expect("lb0 applies the change");
    t.wait_serves(1, &three).expect("lb1 applies the change");
    for lb in 0..2 {
        wait_connected(&t, lb);
    }
    let applied = started.elapsed();
    assert_eq!(
        identical_tables(&t, "after the outage").serving,
        serving(&three)
    );
    let report = load.finish().expect("load report");
    assert_no_failures(&report, "over the lost quorum");
    println!(
        "no quorum for {back:.1?} (members {killed:?} killed until restarted and serving): {samples} samples, tables unchanged, states {states:?}; \
         the change applied on both {:.1?} after the restart; {} new connections, 0 failures",
        applied - back,
        report.new_conns
    );
}

#[test]
fn an_expired_session_resyncs_without_flapping_a_backend() {
    const LB1_SESSION_MS: u64 = 2000;
    let mut t = start();
    let svc = start_lbs(&mut t, &[1, 1, 1], [SESSION_MS, "2000"]);
    let before = identical_tables(&t, "before the partition");
    assert_eq!(before.serving, serving(&svc));
    let old_session = session_id(&t, 1).expect("lb1's session id");

    let load = load(&t, &svc);
    wait_rounds(&load, 5);
    // lb1 loses every member for three session timeouts: the ensemble expires its session.
    let partition = Partition::from_prefix_v4(&t.lab.lb_netns(1), ZK_PREFIX_V4)
        .expect("partition lb1 from the ensemble");
    let started = Instant::now();
    let cut = Duration::from_millis(3 * LB1_SESSION_MS);
    let mut partition = Some(partition);
    let mut states = Vec::new();
    let mut samples = 0;
    let mut healed_at = None;
    // Sample both LBs' tables until lb1 has a new session (bounded: the cut plus APPLY).
    let new_session = loop {
        assert!(
            started.elapsed() < cut + APPLY,
            "lb1 opened no new session; states {states:?}\nlb1's log:\n{}",
            t.lab.lb_log(1).unwrap_or_default()
        );
        if partition.is_some() && started.elapsed() >= cut {
            partition = None;
            healed_at = Some(started.elapsed());
        }
        for lb in 0..2 {
            let tables = t.lab.lb_pinned_tables(lb).expect("read the pinned tables");
            assert_eq!(
                tables,
                before,
                "lb{lb}'s tables changed {:.1?} into the episode: {:?}",
                started.elapsed(),
                tables.differences(&before)
            );
        }
        samples += 1;
        if let Ok(s) = t.status(1) {
            let zk = zookeeper(&s);
            if states.last() != Some(&zk.connection) {
                states.push(zk.connection);
            }
            if partition.is_none()
                && zk.connection == ZkConnection::Connected
                && zk.session_id.as_ref().is_some_and(|id| *id != old_session)
            {
                break zk.session_id.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let resynced = started.elapsed();
    assert!(
        states.contains(&ZkConnection::Expired),
        "lb1's states during the partition: {states:?}"
    );
    let log = t.lab.lb_log(1).expect("lb1's log");
    assert!(log.contains("session expired"), "{log}");
    wait_connected(&t, 1);
    assert_eq!(identical_tables(&t, "after the resync"), before);

    // The new session follows changes again.
    t.put_backend("web", Lab::backend_addr(2, false), 3)
        .expect("lb backend weight after the resync");
    let changed = service("web", svc.vip, "maglev", &[1, 1, 3]);
    t.wait_serves(0, &changed).expect("lb0 applies the change");
    t.wait_serves(1, &changed).expect("lb1 applies the change");
    assert_eq!(
        identical_tables(&t, "after the change").serving,
        serving(&changed)
    );
    let report = load.finish().expect("load report");
    assert_no_failures(&report, "over lb1's session expiry");
    println!(
        "lb1 cut off for {:.1?}: states {states:?}, new session {new_session:?} (was {old_session}) {resynced:.1?} \
         after the cut; {samples} samples of both LBs' tables, all identical to before; {} new connections, 0 failures",
        healed_at.unwrap_or_default(),
        report.new_conns
    );
}

#[test]
fn a_partitioned_member_loses_its_lb_to_another_member_with_the_session_kept() {
    let mut t = start();
    let svc = start_lbs(&mut t, &[1, 1], [SESSION_MS, SESSION_MS]);
    let before = identical_tables(&t, "before the partition");
    let member = wait_connected(&t, 0);
    let session = session_id(&t, 0).expect("lb0's session id");

    let load = load(&t, &svc);
    wait_rounds(&load, 5);
    t.zk.partition(member).expect("partition lb0's member");
    let started = Instant::now();
    // Until lb0 is connected elsewhere (bounded), both LBs' tables stay as they were.
    // Noticing takes 2/5 of the session timeout; when the member was the leader the others elect
    // first (they notice after syncLimit), and the client backs off while they refuse it.
    let moved_to = Eventually::new("lb0 connected to another member", ELECTION_TIMEOUT)
        .every(Duration::from_millis(100))
        .poll(|| {
            for lb in 0..2 {
                let tables = t.lab.lb_pinned_tables(lb).map_err(|e| format!("{e:#}"))?;
                assert_eq!(
                    tables,
                    before,
                    "lb{lb}'s tables changed: {:?}",
                    tables.differences(&before)
                );
            }
            let members = t.zk.members_with_client(IpAddr::V4(lb_v4(0)));
            match (connection(&t, 0), members.as_slice()) {
                (Some(ZkConnection::Connected), [m]) => Ok(*m),
                other => Err(format!("{other:?}")),
            }
        })
        .unwrap_or_else(|e| panic!("{e:#}\nlb0's log:\n{}", t.lab.lb_log(0).unwrap_or_default()));
    let moved_after = started.elapsed();
    assert_ne!(moved_to, member);
    // The client moved before the session timeout: the same session, no expiry, no full rebuild.
    assert_eq!(session_id(&t, 0).as_deref(), Some(session.as_str()));

    t.zk.heal(member).expect("heal the member");
    t.zk.leader().expect("a leader after the heal");
    t.put_backend("web", Lab::backend_addr(2, false), 1)
        .expect("lb backend put after the heal");
    let three = service("web", svc.vip, "maglev", &[1, 1, 1]);
    t.wait_serves(0, &three).expect("lb0 applies the change");
    t.wait_serves(1, &three).expect("lb1 applies the change");
    assert_eq!(
        identical_tables(&t, "after the change").serving,
        serving(&three)
    );
    let report = load.finish().expect("load report");
    assert_no_failures(&report, "over the member's partition");
    println!(
        "member {member} partitioned: lb0 on member {moved_to} after {moved_after:.2?}, session {session} kept; \
         {} new connections, 0 failures",
        report.new_conns
    );
}
