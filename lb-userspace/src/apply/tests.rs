//! Applying against the recording fake: per-service isolation, rollback without leaks, retries.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lb_common::{BACKEND_F_DOWN, BACKEND_F_DRAINING, BACKEND_F_VALID, BackendEntry};

use super::*;
use crate::execute::fake::RecordingWriter;
use crate::model::HealthCheckSpec;
use crate::plan::tests::{addr, capacity, down, service};

fn state(services: &[&ServiceSpec]) -> DesiredState {
    DesiredState::of(services.iter().map(|s| (*s).clone()))
}

fn failed_names(report: &ApplyReport) -> Vec<&str> {
    report.failed.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn a_service_over_capacity_fails_alone() {
    let mut applier = Applier::new(capacity(3), 0);
    let mut w = RecordingWriter::default();
    let (a, b, c) = (
        service("a", 1, &[0, 1]),
        service("b", 2, &[2, 3]),
        service("c", 3, &[4]),
    );
    let report = applier.apply(&mut w, &state(&[&a, &b, &c]));
    assert_eq!(report.added, ["a", "c"], "c is applied after b failed");
    assert_eq!(failed_names(&report), ["b"]);
    let message = report.failed[0].1.to_string();
    assert!(message.contains("--max-backends"), "{message}");
    assert_eq!(
        applier.failures().keys().collect::<Vec<_>>(),
        ["b"],
        "the failures stay visible for status and metrics"
    );
    assert!(w.maps.services.contains_key(&a.vip_key()));
    assert!(w.maps.services.contains_key(&c.vip_key()));
    assert!(!w.maps.services.contains_key(&b.vip_key()));
    // Nothing of b reached the maps: no backend entry with its service id, no metadata.
    assert_eq!(w.maps.backends.len(), 3);
    assert_eq!(w.maps.live_table(&c.vip_key()), Some(&[2][..]));
    assert_eq!(applier.applied_state(), state(&[&a, &c]));
}

#[test]
fn a_failed_update_keeps_the_last_version_and_every_id() {
    let mut applier = Applier::new(capacity(4), 0);
    let mut w = RecordingWriter::default();
    let a = service("a", 1, &[0, 1]);
    let other = service("z", 2, &[2]);
    applier.apply(&mut w, &state(&[&a, &other]));
    let maps = w.maps.without_tables();
    let table = w.maps.live_table(&a.vip_key()).map(<[u32]>::to_vec);
    let free = applier.planner.free_counts();

    // Three new backends do not fit the one id left: a stays as it was, z's change still applies.
    let too_big = service("a", 1, &[0, 1, 3, 4, 5]);
    let other_changed = service("z", 2, &[2, 6]);
    let report = applier.apply(&mut w, &state(&[&too_big, &other_changed]));
    assert_eq!(failed_names(&report), ["a"]);
    assert_eq!(report.changed, ["z"]);
    assert_eq!(applier.planner.spec("a"), Some(&a));
    assert_eq!(
        w.maps.services.get(&a.vip_key()),
        maps.services.get(&a.vip_key())
    );
    assert_eq!(w.maps.live_table(&a.vip_key()).map(<[u32]>::to_vec), table);
    assert_eq!(applier.planner.free_counts().0, free.0);
    assert_eq!(
        applier.planner.free_counts().1,
        free.1 - 1,
        "only z's new backend"
    );
}

#[test]
fn a_map_write_failure_undoes_what_the_service_wrote() {
    let mut applier = Applier::new(capacity(8), 0);
    let mut w = RecordingWriter::default();
    let a = service("a", 1, &[0, 1]);
    applier.apply(&mut w, &state(&[&a]));
    let maps = w.maps.without_tables();
    let free = applier.planner.free_counts();
    let generation = applier.generation();

    // New weights, a new backend and a dropped one; the flip fails.
    let mut changed = service("a", 1, &[0, 2]);
    if let Some(b) = changed.backends.get_mut(&addr(0)) {
        b.weight = 5;
    }
    w.fail_when(|op| matches!(op, Op::PutService { .. }));
    let report = applier.apply(&mut w, &state(&[&changed]));
    assert_eq!(failed_names(&report), ["a"]);
    assert!(matches!(report.failed[0].1, ApplyError::Dataplane(_)));
    assert_eq!(w.maps.without_tables().services, maps.services);
    assert_eq!(
        w.maps.without_tables().backends.get(&0),
        maps.backends.get(&0)
    );
    assert_eq!(
        w.maps.backends.get(&2).copied().unwrap_or_default(),
        BackendEntry::default(),
        "the new backend's entry is cleared again"
    );
    assert_eq!(applier.planner.free_counts(), free, "no id or slot leaked");
    assert_eq!(applier.applied_state(), state(&[&a]));
    assert_eq!(applier.generation(), generation, "nothing was applied");
    assert!(report.is_empty());

    // The same desired state next time: retried, and applied.
    w.succeed();
    let report = applier.apply(&mut w, &state(&[&changed]));
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.changed, ["a"]);
    assert!(applier.failures().is_empty());
    assert_eq!(applier.backend_id("a", &addr(2)), Some(2));
    assert_eq!(
        w.maps.backends.get(&1).map(|b| b.flags),
        Some(BACKEND_F_VALID | BACKEND_F_DRAINING),
        "the dropped backend drains"
    );
}

#[test]
fn a_failed_return_keeps_the_backend_retired_under_its_id() {
    let mut applier = Applier::new(capacity(3), 0);
    let mut w = RecordingWriter::default();
    applier.apply(&mut w, &state(&[&service("a", 1, &[0, 1])]));
    applier.apply(&mut w, &state(&[&service("a", 1, &[0])]));
    let b1 = 1;
    let retired_entry = w.maps.backends.get(&b1).copied();
    assert_eq!(applier.retired().len(), 1);

    // b1 comes back with two new backends, but only one id is free.
    let back = service("a", 1, &[0, 1, 2, 3]);
    let report = applier.apply(&mut w, &state(&[&back]));
    assert!(matches!(
        report.failed[0].1,
        ApplyError::Capacity(CapacityError::TooManyBackends {
            needed: 2,
            free: 1,
            ..
        })
    ));
    assert_eq!(
        applier.retired().iter().map(|r| r.id).collect::<Vec<_>>(),
        [b1]
    );
    assert_eq!(w.maps.backends.get(&b1).copied(), retired_entry);

    // Now a map write fails after b1's entry was rewritten: the undo restores its retired entry.
    let back = service("a", 1, &[0, 1, 2]);
    w.fail_when(|op| matches!(op, Op::WriteTable { .. }));
    let report = applier.apply(&mut w, &state(&[&back]));
    assert_eq!(failed_names(&report), ["a"]);
    assert_eq!(w.maps.backends.get(&b1).copied(), retired_entry);
    assert_eq!(
        applier.retired().iter().map(|r| r.id).collect::<Vec<_>>(),
        [b1]
    );

    // And once it fits and writes, b1 is back under its old id.
    w.succeed();
    let report = applier.apply(&mut w, &state(&[&back]));
    assert!(report.failed.is_empty());
    assert_eq!(applier.backend_id("a", &addr(1)), Some(b1));
    assert!(applier.retired().is_empty());
}

#[test]
fn a_service_over_capacity_is_retried_once_capacity_frees_up() {
    let mut applier = Applier::new(capacity(3), 0);
    let mut w = RecordingWriter::default();
    let a = service("a", 1, &[0]);
    applier.apply(&mut w, &state(&[&service("a", 1, &[0, 1, 2])]));
    let b = service("b", 2, &[3, 4]);
    // a drops two backends; they drain and hold their ids, so b does not fit yet.
    let desired = state(&[&a, &b]);
    let report = applier.apply(&mut w, &desired);
    assert_eq!(report.changed, ["a"]);
    assert_eq!(failed_names(&report), ["b"]);
    assert_eq!(
        applier
            .release_retired(&mut w, &BTreeSet::new(), Duration::ZERO)
            .ok(),
        Some(2)
    );
    // The desired state did not change; the next apply (a health flip, a SIGHUP) applies b.
    let report = applier.apply(&mut w, &desired);
    assert_eq!(report.added, ["b"]);
    assert!(report.failed.is_empty() && applier.failures().is_empty());
    assert!(w.maps.services.contains_key(&b.vip_key()));
}

#[test]
fn too_many_services_and_too_large_tables_leak_nothing() {
    let mut applier = Applier::new(
        Capacity {
            table_size: 2,
            ..capacity(8)
        },
        0,
    );
    let mut w = RecordingWriter::default();
    let services: Vec<ServiceSpec> = (0..5)
        .map(|i| service(&format!("s{i}"), i + 1, &[i]))
        .collect();
    let big = service("big", 9, &[5, 6, 7]);
    let mut all: Vec<&ServiceSpec> = services.iter().collect();
    all.push(&big);
    let report = applier.apply(&mut w, &state(&all));
    let mut failed: Vec<String> = report
        .failed
        .iter()
        .map(|(n, e)| format!("{n}: {e}"))
        .collect();
    failed.sort();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed[0].starts_with("big:") && failed[0].contains("--table-size"),
        "{failed:?}"
    );
    assert!(
        failed[1].starts_with("s4:") && failed[1].contains("--max-services"),
        "{failed:?}"
    );
    assert_eq!(
        applier.planner.free_counts(),
        (0, 4, 12 - 4),
        "four services with one backend each"
    );
}

#[test]
fn a_removal_that_fails_is_retried() {
    let mut applier = Applier::new(capacity(8), 0);
    let mut w = RecordingWriter::default();
    let a = service("a", 1, &[0]);
    applier.apply(&mut w, &state(&[&a]));
    w.fail_when(|op| matches!(op, Op::DeleteService { .. }));
    let report = applier.apply(&mut w, &DesiredState::default());
    assert_eq!(failed_names(&report), ["a"]);
    assert_eq!(applier.applied_state(), state(&[&a]));
    w.succeed();
    let report = applier.apply(&mut w, &DesiredState::default());
    assert_eq!(report.removed, ["a"]);
    assert!(w.maps.services.is_empty());
    assert_eq!(applier.retired().len(), 1);
}

#[test]
fn a_vip_handed_to_a_service_that_fails_is_deleted() {
    let mut applier = Applier::new(capacity(2), 0);
    let mut w = RecordingWriter::default();
    let old = service("old", 1, &[0]);
    applier.apply(&mut w, &state(&[&old]));
    // "new" takes VIP 1 over but needs more ids than are free: the VIP must not keep pointing at
    // old's quarantined table slot.
    let new = service("new", 1, &[1, 2, 3]);
    let report = applier.apply(&mut w, &state(&[&new]));
    assert_eq!(report.removed, ["old"]);
    assert_eq!(failed_names(&report), ["new"]);
    assert!(w.maps.services.is_empty(), "{:?}", w.maps.services);
    // When it fits, it gets the VIP.
    let new = service("new", 1, &[1]);
    let report = applier.apply(&mut w, &state(&[&new]));
    assert_eq!(report.added, ["new"]);
    assert!(w.maps.services.contains_key(&new.vip_key()));
}

#[test]
fn a_health_flip_applies_to_the_healthy_service_while_another_fails() {
    let mut applier = Applier::new(capacity(3), 0);
    let mut w = RecordingWriter::default();
    let mut a = service("a", 1, &[0, 1]);
    a.health_check = Some(HealthCheckSpec::default());
    let b = service("b", 2, &[2, 3]);
    let desired = state(&[&a, &b]);
    assert_eq!(failed_names(&applier.apply(&mut w, &desired)), ["b"]);
    let report = applier.apply_with_health(&mut w, &desired, &down(&a, &[1]));
    assert_eq!(report.health_changed, ["a"]);
    assert_eq!(
        failed_names(&report),
        ["b"],
        "b is retried, and fails again"
    );
    let b1 = applier.backend_id("a", &addr(1)).expect("b1");
    assert_eq!(
        w.maps.backends.get(&b1).map(|e| e.flags),
        Some(BACKEND_F_VALID | BACKEND_F_DOWN)
    );
    assert_eq!(w.maps.live_table(&a.vip_key()), Some(&[0][..]));
    assert_eq!(applier.service_health("a").map(|h| h.down.len()), Some(1));
}

#[test]
fn an_unchanged_state_writes_nothing() {
    let mut applier = Applier::new(capacity(8), 0);
    let mut w = RecordingWriter::default();
    let desired = state(&[&service("a", 1, &[0, 1])]);
    let first = applier.apply(&mut w, &desired);
    assert_eq!((first.added.len(), first.generation), (1, 1));
    let n = w.written.len();
    let again = applier.apply(&mut w, &desired);
    assert!(again.is_empty() && again.failed.is_empty());
    assert_eq!(again.generation, 1);
    assert_eq!(w.written.len(), n);
}

// Adoption: a restarted daemon seeded from what the pinned maps hold.

use crate::execute::fake::FakeMaps;
use crate::model::BackendSpec;
use crate::plan::{PinnedService, PinnedState};
use lb_common::Scheduler;

/// What `lb run` reads back from the pins: the fake maps as `MapsView::pinned_state` gives them.
fn pinned(maps: &FakeMaps) -> PinnedState {
    PinnedState {
        services: maps
            .services
            .iter()
            .map(|(key, entry)| PinnedService {
                key: *key,
                entry: *entry,
                meta: maps.meta.get(&entry.id).copied().unwrap_or_default(),
                table: maps.slot_contents(key).unwrap_or_default(),
            })
            .collect(),
        backends: maps
            .backends
            .iter()
            .filter(|(_, b)| b.flags & BACKEND_F_VALID != 0)
            .map(|(id, b)| (*id, *b))
            .collect(),
    }
}

/// rr over 0,1 with a health check (1 down); maglev over 2,3,4 weighted; wrr with persistence.
fn three_services() -> (DesiredState, HealthView) {
    let mut a = service("a", 1, &[0, 1]);
    a.health_check = Some(HealthCheckSpec::default());
    let mut b = service("b", 2, &[2, 3, 4]);
    b.scheduler = Scheduler::Maglev;
    b.backends.values_mut().for_each(|x| x.weight = 3);
    let mut c = service("c", 3, &[5, 6]);
    c.scheduler = Scheduler::WeightedRoundRobin;
    c.persistence_timeout_s = 300;
    let health = down(&a, &[1]);
    (state(&[&a, &b, &c]), health)
}

fn big() -> Capacity {
    Capacity {
        table_size: 4099,
        ..capacity(16)
    }
}

#[test]
fn adopting_what_the_maps_hold_writes_nothing_and_keeps_every_id() {
    let (desired, health) = three_services();
    let mut before = Applier::new(big(), 7);
    let mut w = RecordingWriter::default();
    before.apply_with_health(&mut w, &desired, &health);
    let pins = pinned(&w.maps);

    let mut after = Applier::new(big(), 7);
    let adoption = after.adopt(&pins, &desired, &health).expect("adopt");
    assert_eq!(adoption.unchanged, ["a", "b", "c"]);
    assert!(adoption.rewrite.is_empty() && adoption.orphans.is_empty());
    assert_eq!(adoption.generation, before.generation());
    let mut w2 = RecordingWriter::over(w.maps.clone());
    let report = after.apply_with_health(&mut w2, &desired, &health);
    assert!(report.is_empty(), "{report:?}");
    assert!(w2.written.is_empty(), "{:?}", w2.written);
    for name in ["a", "b", "c"] {
        assert_eq!(after.service_id(name), before.service_id(name));
        for b in desired.services[name].backends.keys() {
            assert_eq!(after.backend_id(name, b), before.backend_id(name, b));
        }
    }
    // The same free ids and slots: nothing adopted is handed out again.
    assert_eq!(after.planner.free_counts(), before.planner.free_counts());
}

#[test]
fn an_adopted_service_that_changed_keeps_its_ids_and_writes_only_the_difference() {
    let (desired, health) = three_services();
    let mut before = Applier::new(big(), 7);
    let mut w = RecordingWriter::default();
    before.apply_with_health(&mut w, &desired, &health);
    let mut after = Applier::new(big(), 7);
    after
        .adopt(&pinned(&w.maps), &desired, &health)
        .expect("adopt");

    let mut changed = desired.clone();
    let c = changed.services.get_mut("c").expect("c");
    *c = Arc::new(ServiceSpec::clone(c).with_backend(BackendSpec::new(addr(7))));
    let mut w2 = RecordingWriter::over(w.maps.clone());
    let report = after.apply_with_health(&mut w2, &changed, &health);
    assert_eq!(report.changed, ["c"]);
    assert_eq!(
        after.backend_id("c", &addr(5)),
        before.backend_id("c", &addr(5))
    );
    let new_id = after.backend_id("c", &addr(7)).expect("a new id");
    let backend_writes: Vec<u32> = w2
        .written
        .iter()
        .filter_map(|op| match op {
            Op::PutBackend { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(backend_writes, [new_id], "only the new backend is written");
    assert!(
        !before.all_backend_ids().contains(&new_id),
        "the new backend got an id no pinned backend holds"
    );
}

#[test]
fn maps_that_differ_from_the_desired_state_are_rewritten_on_their_ids() {
    let (desired, health) = three_services();
    let mut before = Applier::new(big(), 7);
    let mut w = RecordingWriter::default();
    before.apply_with_health(&mut w, &desired, &health);
    // While no daemon ran, backend 2's weight changed in the source: the maps still hold weight 3.
    let mut newer = desired.clone();
    let b = Arc::make_mut(newer.services.get_mut("b").expect("b"));
    b.backends.get_mut(&addr(2)).expect("backend 2").weight = 9;

    let mut after = Applier::new(big(), 7);
    let adoption = after
        .adopt(&pinned(&w.maps), &newer, &health)
        .expect("adopt");
    assert_eq!(adoption.unchanged, ["a", "c"]);
    assert_eq!(adoption.rewrite, ["b"]);
    let mut w2 = RecordingWriter::over(w.maps.clone());
    let report = after.apply_with_health(&mut w2, &newer, &health);
    assert_eq!(report.changed, ["b"]);
    assert!(report.added.is_empty() && report.removed.is_empty());
    let id = before.backend_id("b", &addr(2)).expect("id");
    assert_eq!(after.backend_id("b", &addr(2)), Some(id));
    assert_eq!(w2.maps.backends[&id].weight, 9);
    assert_eq!(after.service_id("b"), before.service_id("b"));
    // What the maps hold now is what a planner that never restarted would have written.
    let mut never_restarted = RecordingWriter::over(w.maps.clone());
    before.apply_with_health(&mut never_restarted, &newer, &health);
    let key = newer.services["b"].vip_key();
    assert_eq!(
        w2.maps.live_table(&key),
        never_restarted.maps.live_table(&key)
    );
    assert_eq!(w2.maps.backends, never_restarted.maps.backends);
}

#[test]
fn pinned_services_nobody_claims_are_removed_and_their_backends_drain() {
    let (desired, health) = three_services();
    let mut before = Applier::new(big(), 7);
    let mut w = RecordingWriter::default();
    before.apply_with_health(&mut w, &desired, &health);
    let mut fewer = desired.clone();
    fewer.services.remove("b");

    let mut after = Applier::new(big(), 7);
    let adoption = after
        .adopt(&pinned(&w.maps), &fewer, &health)
        .expect("adopt");
    assert_eq!(adoption.orphans, ["(pinned 198.18.100.2:80)"]);
    let mut w2 = RecordingWriter::over(w.maps.clone());
    let report = after.apply_with_health(&mut w2, &fewer, &health);
    assert_eq!(report.removed, ["(pinned 198.18.100.2:80)"]);
    assert!(
        !w2.maps
            .services
            .contains_key(&desired.services["b"].vip_key())
    );
    for addr_b in desired.services["b"].backends.keys() {
        let id = before.backend_id("b", addr_b).expect("id");
        assert_ne!(
            w2.maps.backends[&id].flags & BACKEND_F_DRAINING,
            0,
            "{addr_b} drains"
        );
        assert!(after.retired().iter().any(|r| r.id == id));
    }
    assert_eq!(after.applied_state(), fewer);
}

#[test]
fn backends_that_were_draining_stay_draining_until_released() {
    let mut before = Applier::new(big(), 7);
    let mut w = RecordingWriter::default();
    let a = service("a", 1, &[0, 1]);
    before.apply(&mut w, &state(&[&a]));
    let gone = before.backend_id("a", &addr(1)).expect("id");
    let smaller = service("a", 1, &[0]);
    before.apply(&mut w, &state(&[&smaller]));

    let mut after = Applier::new(big(), 7);
    let adoption = after
        .adopt(
            &pinned(&w.maps),
            &state(&[&smaller]),
            &HealthView::default(),
        )
        .expect("adopt");
    assert_eq!(adoption.unchanged, ["a"]);
    assert_eq!(adoption.draining, 1);
    assert_eq!(
        after.retired().iter().map(|r| r.id).collect::<Vec<_>>(),
        [gone]
    );
    // A flow still refers to it: kept. None does: released and cleared.
    let mut w2 = RecordingWriter::over(w.maps.clone());
    let in_use = BTreeSet::from([gone]);
    assert_eq!(
        after.release_retired(&mut w2, &in_use, Duration::ZERO).ok(),
        Some(0)
    );
    assert_eq!(
        after
            .release_retired(&mut w2, &BTreeSet::new(), Duration::ZERO)
            .ok(),
        Some(1)
    );
    assert_eq!(w2.maps.backends[&gone], BackendEntry::default());
}

#[test]
fn pins_this_planner_cannot_have_written_are_refused() {
    let (desired, health) = three_services();
    let mut before = Applier::new(big(), 7);
    let mut w = RecordingWriter::default();
    before.apply_with_health(&mut w, &desired, &health);
    let mut pins = pinned(&w.maps);
    let first = pins.services[0].entry;
    pins.services[1].entry.id = first.id;
    let err = Applier::new(big(), 7)
        .adopt(&pins, &desired, &health)
        .expect_err("two services on one id");
    assert!(err.to_string().contains("service id"), "{err}");

    let mut pins = pinned(&w.maps);
    pins.services[0].entry.table_offset += 1;
    let err = Applier::new(big(), 7)
        .adopt(&pins, &desired, &health)
        .expect_err("a table off its slot");
    assert!(err.to_string().contains("not a table slot"), "{err}");
}
