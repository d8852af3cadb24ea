//! The planner without a data plane: ids, slots, quarantine, retire/unretire, capacity, ordering.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_common::limits::Capacity;
use lb_common::{BACKEND_F_DOWN, BACKEND_F_DRAINING, BACKEND_F_VALID, Scheduler, VipKey};

use super::*;
use crate::health::{Health, HealthView, ProbeTarget};
use crate::model::{BackendSpec, HealthCheckSpec, ServiceSpec};

/// Backend `i` of the tests: 198.18.2.(10+i):80.
pub fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 2, 10 + i], 80))
}

/// VIP `n`: 198.18.100.n:80.
pub fn vip(n: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 100, n], 80))
}

/// An rr service at VIP `n` over backends `backends` (see [`addr`]).
pub fn service(name: &str, n: u8, backends: &[u8]) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, vip(n));
    s.scheduler = Scheduler::RoundRobin;
    for i in backends {
        s = s.with_backend(BackendSpec::new(addr(*i)));
    }
    s
}

/// Small maps: 4 services (12 table slots), `max_backends` backends, tables of 8.
pub fn capacity(max_backends: u32) -> Capacity {
    Capacity {
        max_services: 4,
        max_backends,
        table_size: 8,
        ..Capacity::default()
    }
}

/// The health view with `which` down under `spec`'s check.
pub fn down(spec: &ServiceSpec, which: &[u8]) -> HealthView {
    let mut view = HealthView::default();
    for i in which {
        let target = ProbeTarget {
            addr: addr(*i),
            check: spec.health_check.clone().unwrap_or_default(),
        };
        view.set(target, Health::Down);
    }
    view
}

fn claimed(specs: &[&ServiceSpec]) -> BTreeSet<VipKey> {
    specs.iter().map(|s| s.vip_key()).collect()
}

/// Plans and commits `spec` with every backend healthy.
fn put(p: &mut Planner, spec: &ServiceSpec, now: Instant) -> ServiceChange {
    let change = p
        .plan_service(
            &Arc::new(spec.clone()),
            ServiceHealth::default(),
            &claimed(&[spec]),
            1,
        )
        .expect("fits");
    p.commit(change.clone(), now);
    change
}

fn ops(change: &ServiceChange) -> Vec<&Op> {
    change.steps.iter().map(|s| &s.op).collect()
}

fn flip(change: &ServiceChange) -> ServiceEntry {
    match change.steps.last().map(|s| &s.op) {
        Some(Op::PutService { entry, .. }) => *entry,
        other => panic!("the last step is not the flip: {other:?}"),
    }
}

#[test]
fn a_new_service_writes_backends_then_its_table_then_metadata_then_the_flip() {
    let p = Planner::new(capacity(8), 0);
    let spec = service("web", 1, &[0, 1]);
    let change = p
        .plan_service(
            &Arc::new(spec.clone()),
            ServiceHealth::default(),
            &claimed(&[&spec]),
            7,
        )
        .expect("fits");
    let kinds: Vec<&str> = ops(&change)
        .iter()
        .map(|op| match op {
            Op::SetBackendConns { .. } => "conns",
            Op::PutBackend { .. } => "backend",
            Op::WriteTable { .. } => "table",
            Op::PutServiceMeta { .. } => "meta",
            Op::PutService { .. } => "flip",
            Op::DeleteService { .. } => "delete",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "conns", "backend", "conns", "backend", "table", "meta", "flip"
        ]
    );
    // The round-robin list, then the service's consistent-hash table (Maglev over the largest prime
    // that fits the slot's room: 5 of 6).
    let Op::WriteTable { offset, ids } = ops(&change)[4] else {
        panic!("step 4 writes the table");
    };
    assert_eq!(*offset, 0);
    assert_eq!(ids[..2], [0, 1]);
    assert_eq!(ids.len(), 7);
    let flip_entry = flip(&change);
    assert_eq!(
        (
            flip_entry.table_len,
            flip_entry.hash_offset,
            flip_entry.hash_len
        ),
        (2, 2, 5)
    );
    assert!(
        ids[2..].contains(&0) && ids[2..].contains(&1),
        "both backends hashed"
    );
    let entry = flip(&change);
    assert_eq!((entry.id, entry.table_len, entry.generation), (0, 2, 7));
    assert!(change.cleanup.is_empty());
    // Planning takes nothing: only a commit does.
    assert_eq!(p.free_counts(), (4, 8, 12));
    assert!(p.applied_state().services.is_empty());
}

#[test]
fn ids_are_the_lowest_free_and_stay_with_their_backends() {
    let mut p = Planner::new(capacity(8), 0);
    let now = Instant::now();
    put(&mut p, &service("a", 1, &[0, 1]), now);
    put(&mut p, &service("b", 2, &[2]), now);
    assert_eq!((p.service_id("a"), p.service_id("b")), (Some(0), Some(1)));
    assert_eq!(p.backend_id("b", &addr(2)), Some(2));
    // A new version of a: backend 0 and 1 keep their ids, backend 3 gets the lowest free one.
    let change = put(&mut p, &service("a", 1, &[0, 1, 3]), now);
    assert_eq!(p.backend_id("a", &addr(0)), Some(0));
    assert_eq!(p.backend_id("a", &addr(1)), Some(1));
    assert_eq!(p.backend_id("a", &addr(3)), Some(3));
    assert_eq!(p.all_backend_ids(), [0, 1, 2, 3].into_iter().collect());
    // Only the new backend is written: the others' entries are unchanged.
    let written: Vec<u32> = ops(&change)
        .iter()
        .filter_map(|op| match op {
            Op::PutBackend { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(written, [3]);
}

#[test]
fn every_version_gets_a_free_slot_and_the_old_one_is_quarantined() {
    let mut p = Planner::new(capacity(8), 0);
    let t0 = Instant::now();
    let spec = service("a", 1, &[0]);
    assert_eq!(flip(&put(&mut p, &spec, t0)).table_offset, 0);
    let second = put(&mut p, &service("a", 1, &[0, 1]), t0);
    assert_eq!(flip(&second).table_offset, 8, "slot 1 × table size 8");
    // Slot 0 is quarantined, not free: the next version takes slot 2.
    assert_eq!(
        flip(&put(&mut p, &spec, t0)).table_offset,
        16,
        "the quarantined slot is skipped"
    );
    assert_eq!(p.free_counts().2, 12 - 3);
    assert_eq!(p.release_quarantine(t0), None, "slots are still free");
    assert_eq!(p.free_counts().2, 12 - 3, "quarantine is not over yet");
    p.release_quarantine(t0 + SLOT_QUARANTINE);
    assert_eq!(p.free_counts().2, 12 - 1, "only the live slot is taken");
    assert_eq!(flip(&put(&mut p, &spec, t0)).table_offset, 0);
}

#[test]
fn with_every_slot_quarantined_the_planner_says_how_long_to_wait() {
    let mut p = Planner::new(capacity(8), 0);
    let t0 = Instant::now();
    for i in 0..12 {
        let spec = service("a", 1, &[i % 2]);
        put(&mut p, &spec, t0);
    }
    let spec = service("a", 1, &[0, 1]);
    assert_eq!(
        p.plan_service(
            &Arc::new(spec.clone()),
            ServiceHealth::default(),
            &claimed(&[&spec]),
            1
        )
        .map(|_| ()),
        Err(CapacityError::NoFreeSlot { slots: 12 })
    );
    let wait = p.release_quarantine(t0).expect("a slot frees up");
    assert!(wait <= SLOT_QUARANTINE, "{wait:?}");
    assert_eq!(p.release_quarantine(t0 + wait), None);
    assert!(
        p.plan_service(
            &Arc::new(spec.clone()),
            ServiceHealth::default(),
            &claimed(&[&spec]),
            1
        )
        .is_ok()
    );
}

#[test]
fn a_backend_that_leaves_drains_and_gets_its_id_back_when_it_returns() {
    let mut p = Planner::new(capacity(8), 0);
    let now = Instant::now();
    put(&mut p, &service("a", 1, &[0, 1]), now);
    let b1 = p.backend_id("a", &addr(1)).expect("b1");
    let left = put(&mut p, &service("a", 1, &[0]), now);
    // After the flip, b1 is marked draining with weight 0, and stays in use.
    assert_eq!(
        left.cleanup,
        [Op::PutBackend {
            id: b1,
            entry: backend_entry(&addr(1), 0, 0, BACKEND_F_VALID | BACKEND_F_DRAINING)
        }]
    );
    assert_eq!(p.retired().len(), 1);
    assert!(p.all_backend_ids().contains(&b1));
    assert!(p.backend_addrs().contains(&addr(1)));
    // Another backend does not get b1's id.
    put(&mut p, &service("a", 1, &[0, 2]), now);
    assert_ne!(p.backend_id("a", &addr(2)), Some(b1));
    // b1 comes back: same id, its counter untouched (its flows continue), no longer retired.
    let back = put(&mut p, &service("a", 1, &[0, 1, 2]), now);
    assert_eq!(p.backend_id("a", &addr(1)), Some(b1));
    assert!(
        !ops(&back).contains(&&Op::SetBackendConns { id: b1, conns: 0 }),
        "{:?}",
        ops(&back)
    );
    assert!(p.retired().iter().all(|r| r.id != b1));
}

#[test]
fn released_retired_ids_are_reused() {
    let mut p = Planner::new(capacity(2), 0);
    let now = Instant::now();
    put(&mut p, &service("a", 1, &[0, 1]), now);
    put(&mut p, &service("a", 1, &[0]), now);
    let grace = Duration::from_secs(1);
    // Still referred to by a flow, or within its grace: kept.
    assert!(
        p.plan_release(&[1].into_iter().collect(), grace, now + grace)
            .is_empty()
    );
    assert!(p.plan_release(&BTreeSet::new(), grace, now).is_empty());
    let releases = p.plan_release(&BTreeSet::new(), grace, now + grace);
    assert_eq!(releases.len(), 1);
    assert_eq!(
        releases[0].ops,
        [
            Op::PutBackend {
                id: 1,
                entry: BackendEntry::default()
            },
            Op::SetBackendConns { id: 1, conns: 0 }
        ]
    );
    // Both ids are in use until the release is committed.
    let spec = service("a", 1, &[0, 2]);
    assert!(matches!(
        p.plan_service(
            &Arc::new(spec.clone()),
            ServiceHealth::default(),
            &claimed(&[&spec]),
            1
        ),
        Err(CapacityError::TooManyBackends {
            needed: 1,
            free: 0,
            max: 2
        })
    ));
    p.commit_release(1);
    assert!(p.retired().is_empty());
    put(&mut p, &spec, now);
    assert_eq!(p.backend_id("a", &addr(2)), Some(1));
}

#[test]
fn a_removed_service_keeps_its_id_until_its_backends_are_released() {
    let mut p = Planner::new(capacity(8), 0);
    let now = Instant::now();
    put(&mut p, &service("a", 1, &[0]), now);
    let removal = p.plan_removal("a", &BTreeSet::new()).expect("applied");
    let key = service("a", 1, &[]).vip_key();
    assert_eq!(removal.steps, [Step::new(Op::DeleteService { key }, None)]);
    assert_eq!(removal.cleanup.len(), 2, "metadata and one backend");
    p.commit_removal(removal, now);
    assert_eq!(
        p.free_counts().0,
        3,
        "service id 0 is held by its draining backend"
    );
    put(&mut p, &service("b", 2, &[1]), now);
    assert_eq!(p.service_id("b"), Some(1));
    p.commit_release(0);
    assert_eq!(p.free_counts().0, 3, "b holds 1; 0 is free again");
    put(&mut p, &service("c", 3, &[2]), now);
    assert_eq!(p.service_id("c"), Some(0));
}

#[test]
fn capacity_errors_name_the_flag_and_take_nothing() {
    let now = Instant::now();
    let mut p = Planner::new(capacity(3), 0);
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        put(&mut p, &service(name, i as u8 + 1, &[]), now);
    }
    let before = p.free_counts();
    let e = service("e", 5, &[0]);
    let err = p
        .plan_service(
            &Arc::new(e.clone()),
            ServiceHealth::default(),
            &claimed(&[&e]),
            1,
        )
        .map(|_| ())
        .expect_err("a fifth service");
    assert_eq!(err, CapacityError::TooManyServices { max: 4 });
    assert!(err.to_string().contains("--max-services"), "{err}");

    let a = service("a", 1, &[0, 1, 2, 3]);
    let err = p
        .plan_service(
            &Arc::new(a.clone()),
            ServiceHealth::default(),
            &claimed(&[&a]),
            1,
        )
        .map(|_| ())
        .expect_err("four backends");
    assert!(err.to_string().contains("--max-backends"), "{err}");

    let mut small = Planner::new(
        Capacity {
            table_size: 2,
            ..capacity(8)
        },
        0,
    );
    let a = service("a", 1, &[0, 1, 2]);
    let err = small
        .plan_service(
            &Arc::new(a.clone()),
            ServiceHealth::default(),
            &claimed(&[&a]),
            1,
        )
        .map(|_| ())
        .expect_err("three backends in a table of two");
    assert_eq!(
        err,
        CapacityError::TableTooLarge {
            count: 3,
            table_size: 2
        }
    );
    assert!(err.to_string().contains("--table-size"), "{err}");
    assert_eq!(small.free_counts(), (4, 8, 12));
    put(&mut small, &service("a", 1, &[0, 1]), now);
    assert_eq!(p.free_counts(), before);
}

#[test]
fn down_backends_keep_their_entry_flagged_but_leave_the_table_unless_in_panic() {
    let mut p = Planner::new(capacity(8), 0);
    let now = Instant::now();
    let mut spec = service("a", 1, &[0, 1, 2, 3]);
    spec.health_check = Some(HealthCheckSpec::default());
    put(&mut p, &spec, now);
    let health = ServiceHealth::of(&spec, &down(&spec, &[1]));
    let change = p
        .plan_service(&Arc::new(spec.clone()), health, &claimed(&[&spec]), 2)
        .expect("fits");
    // Only b1's entry changes (flagged down), and the table leaves it out.
    let b1 = p.backend_id("a", &addr(1)).expect("b1");
    let expected = backend_entry(&addr(1), 0, 1, BACKEND_F_VALID | BACKEND_F_DOWN);
    assert_eq!(
        change.steps[0],
        Step::new(
            Op::PutBackend {
                id: b1,
                entry: expected
            },
            Some(Op::PutBackend {
                id: b1,
                entry: backend_entry(&addr(1), 0, 1, BACKEND_F_VALID)
            })
        )
    );
    assert!(
        matches!(&change.steps[1].op, Op::WriteTable { ids, .. } if ids[..3] == [0, 2, 3] && !ids.contains(&1)),
        "{:?}",
        change.steps[1].op
    );
    assert_eq!(
        change.steps.len(),
        3,
        "no metadata change: {:?}",
        change.steps
    );

    // Panic: 1 of 4 healthy is below 50 %, so every backend stays in the table.
    spec.panic_threshold = 50;
    let health = ServiceHealth::of(&spec, &down(&spec, &[0, 1, 2]));
    assert!(health.panic);
    let change = p
        .plan_service(&Arc::new(spec.clone()), health, &claimed(&[&spec]), 2)
        .expect("fits");
    assert!(matches!(&change.steps[0].op, Op::WriteTable { ids, .. } if ids[..4] == [0, 1, 2, 3]));
}

#[test]
fn a_moved_vip_is_deleted_before_the_flip_unless_another_service_claims_it() {
    let mut p = Planner::new(capacity(8), 0);
    let now = Instant::now();
    let old = service("a", 1, &[0]);
    put(&mut p, &old, now);
    let moved = service("a", 2, &[0]);
    let change = p
        .plan_service(
            &Arc::new(moved.clone()),
            ServiceHealth::default(),
            &claimed(&[&moved]),
            2,
        )
        .expect("fits");
    let n = change.steps.len();
    assert!(
        matches!(&change.steps[n - 2], Step { op: Op::DeleteService { key }, undo: Some(Op::PutService { key: back, .. }) } if *key == old.vip_key() && *back == old.vip_key()),
        "{:?}",
        change.steps
    );
    assert_eq!(change.vacated(), None);
    // Another desired service takes VIP 1 over: it stays for it.
    let b = service("b", 1, &[1]);
    let change = p
        .plan_service(
            &Arc::new(moved.clone()),
            ServiceHealth::default(),
            &claimed(&[&moved, &b]),
            2,
        )
        .expect("fits");
    assert!(!ops(&change).contains(&&Op::DeleteService { key: old.vip_key() }));
    assert_eq!(change.vacated(), Some(old.vip_key()));
    p.commit(change, now);
    assert_eq!(
        p.unheld(&[old.vip_key()].into_iter().collect()),
        [old.vip_key()]
    );
    put(&mut p, &b, now);
    assert!(p.unheld(&[old.vip_key()].into_iter().collect()).is_empty());
}

#[test]
fn fresh_maps_need_no_counter_zeroed_until_an_id_comes_back() {
    let zeroed = |change: &ServiceChange| -> Vec<u32> {
        ops(change)
            .iter()
            .filter_map(|op| match op {
                Op::SetBackendConns { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    };
    let now = Instant::now();
    // Maps of unknown history: every new id's counter is zeroed.
    let mut unknown = Planner::new(capacity(4), 0);
    assert_eq!(
        zeroed(&put(&mut unknown, &service("a", 1, &[0, 1]), now)),
        [0, 1]
    );

    let mut fresh = Planner::new(capacity(4), 0);
    fresh.on_fresh_maps();
    assert!(zeroed(&put(&mut fresh, &service("a", 1, &[0, 1]), now)).is_empty());
    // Id 1 is retired and released: given out again, its counter may hold a count.
    put(&mut fresh, &service("a", 1, &[0]), now);
    let grace = Duration::from_secs(1);
    for release in fresh.plan_release(&BTreeSet::new(), grace, now + grace) {
        fresh.commit_release(release.id);
    }
    let again = put(&mut fresh, &service("a", 1, &[0, 2, 3]), now + grace);
    assert_eq!(fresh.backend_id("a", &addr(2)), Some(1));
    assert_eq!(fresh.backend_id("a", &addr(3)), Some(2));
    assert_eq!(zeroed(&again), [1], "id 2 was never given out");
}
