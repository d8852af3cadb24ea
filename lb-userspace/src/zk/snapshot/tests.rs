use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use lb_common::Scheduler;

use super::*;
use crate::model::BackendState;

fn schema() -> Schema {
    Schema::new("/lb").unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn service(data: &str, backends: &[(&str, &str)]) -> RawService {
    RawService {
        data: Some(data.as_bytes().to_vec()),
        backends: backends
            .iter()
            .map(|(n, d)| ((*n).to_owned(), d.as_bytes().to_vec()))
            .collect(),
    }
}

fn tree(services: Vec<(&str, RawService)>) -> RawTree {
    services
        .into_iter()
        .map(|(n, s)| (n.to_owned(), s))
        .collect()
}

fn build(raw: &RawTree, previous: &DesiredState) -> Snapshot {
    build_snapshot(&schema(), raw, previous)
}

const WEB: &str = r#"{"vip": "198.18.100.1:80", "scheduler": "wrr"}"#;

#[test]
fn a_good_tree_becomes_the_desired_state() {
    let raw = tree(vec![
        (
            "web",
            service(
                WEB,
                &[
                    ("198.18.2.11:80", ""),
                    ("198.18.2.12:80", r#"{"weight": 3, "state": "draining"}"#),
                ],
            ),
        ),
        (
            "v6",
            service(
                r#"{"vip": "[2001:db8::100]:443"}"#,
                &[("[2001:db8::11]:443", "")],
            ),
        ),
    ]);
    let snap = build(&raw, &DesiredState::default());
    assert_eq!(snap.rejections, vec![]);
    assert_eq!(snap.warnings, vec![]);
    snap.state.validate().unwrap();
    let web = &snap.state.services["web"];
    assert_eq!(web.scheduler, Scheduler::WeightedRoundRobin);
    assert_eq!(web.backends[&addr("198.18.2.11:80")].weight, 1);
    let b = &web.backends[&addr("198.18.2.12:80")];
    assert_eq!((b.weight, b.state), (3, BackendState::Draining));
    let v6 = &snap.state.services["v6"];
    assert_eq!(v6.scheduler, Scheduler::Maglev, "maglev is the default");
    assert_eq!(v6.backends.len(), 1);
}

fn only_rejection(snap: &Snapshot) -> &Rejection {
    assert_eq!(snap.rejections.len(), 1, "{:#?}", snap.rejections);
    &snap.rejections[0]
}

#[test]
fn a_bad_backend_node_is_skipped_and_the_others_stay() {
    let cases = [
        ("198.18.2.13:80", "{not json", "invalid backend JSON"),
        (
            "198.18.2.13:80",
            r#"{"weight": 70000}"#,
            "weight: 70000 is out of range; it must be between 0 and 65535",
        ),
        (
            "198.18.2.13:80",
            r#"{"weight": "3"}"#,
            "invalid backend JSON",
        ),
        (
            "198.18.2.13:80",
            r#"{"state": "sleeping"}"#,
            "unknown backend state",
        ),
        ("198.18.2.13:8080", "", "but the VIP port is 80"),
        (
            "[2001:db8::13]:80",
            "",
            "is IPv6 but VIP 198.18.100.1:80 is IPv4",
        ),
        ("224.0.0.1:80", "", "multicast"),
        ("backend-3", "", "is not an address"),
        ("198.18.2.013:80", "", "is not an address"),
        ("198.18.2.13:080", "", "name the node \"198.18.2.13:80\""),
    ];
    for (node, data, reason) in cases {
        let raw = tree(vec![(
            "web",
            service(WEB, &[("198.18.2.11:80", ""), (node, data)]),
        )]);
        let snap = build(&raw, &DesiredState::default());
        let r = only_rejection(&snap);
        assert_eq!(r.path, format!("/lb/services/web/backends/{node}"));
        assert!(r.reason.contains(reason), "{node} {data}: {}", r.reason);
        assert_eq!(r.outcome, BACKEND_SKIPPED);
        let web = &snap.state.services["web"];
        assert_eq!(
            web.backends.keys().copied().collect::<Vec<_>>(),
            vec![addr("198.18.2.11:80")],
            "{node} {data}"
        );
    }
}

#[test]
fn a_port_mismatch_says_why() {
    let raw = tree(vec![("web", service(WEB, &[("198.18.2.11:8080", "")]))]);
    let snap = build(&raw, &DesiredState::default());
    let reason = &only_rejection(&snap).reason;
    assert!(
        reason.contains("uses port 8080 but the VIP port is 80"),
        "{reason}"
    );
    assert!(reason.contains("direct server return"), "{reason}");
}

#[test]
fn a_bad_service_node_keeps_the_last_good_version() {
    let good = tree(vec![("web", service(WEB, &[("198.18.2.11:80", "")]))]);
    let previous = build(&good, &DesiredState::default()).state;
    let cases = [
        ("{broken", "invalid service JSON"),
        (
            r#"{"vip": "198.18.100.1:80", "scheduler": "fastest"}"#,
            "unknown scheduler",
        ),
        (r#"{"vip": "198.18.100.1"}"#, "expected IP:PORT"),
        (r#"{"vip": 80}"#, "invalid service JSON"),
        (r#"{"vip": "198.18.100.1:0"}"#, "port 0"),
        (r#"{"vip": "198.18.100.1:80", "proto": "udp"}"#, "TCP only"),
        (
            r#"{"vip": "198.18.100.1:80", "health_check": {"timeout_ms": 5000}}"#,
            "timeout_ms 5000 is longer than interval_ms",
        ),
        ("", "has no data"),
    ];
    for (data, reason) in cases {
        // A backend added while the service node is bad still joins (checked against the last good VIP).
        let raw = tree(vec![(
            "web",
            service(data, &[("198.18.2.11:80", ""), ("198.18.2.12:80", "")]),
        )]);
        let snap = build(&raw, &previous);
        let r = only_rejection(&snap);
        assert_eq!(r.path, "/lb/services/web");
        assert!(r.reason.contains(reason), "{data}: {}", r.reason);
        assert_eq!(r.outcome, KEPT_LAST_GOOD);
        let web = &snap.state.services["web"];
        assert_eq!(
            web.scheduler,
            Scheduler::WeightedRoundRobin,
            "{data}: the last good fields stay"
        );
        assert_eq!(web.backends.len(), 2, "{data}");
    }
}

#[test]
fn a_bad_new_service_is_not_applied_and_the_others_are() {
    let raw = tree(vec![
        ("web", service(WEB, &[("198.18.2.11:80", "")])),
        ("bad", service("{broken", &[("198.18.2.11:81", "")])),
    ]);
    let snap = build(&raw, &DesiredState::default());
    let r = only_rejection(&snap);
    assert_eq!(
        (r.path.as_str(), r.outcome),
        ("/lb/services/bad", NOT_APPLIED)
    );
    assert_eq!(snap.state.services.keys().collect::<Vec<_>>(), vec!["web"]);
}

#[test]
fn an_invalid_service_name_is_rejected() {
    let raw = tree(vec![("we b", service(WEB, &[]))]);
    let snap = build(&raw, &DesiredState::default());
    assert!(only_rejection(&snap).reason.contains("service name"));
    assert!(snap.state.services.is_empty());
}

#[test]
fn unknown_fields_are_warnings_not_errors() {
    let raw = tree(vec![(
        "web",
        service(
            r#"{"vip": "198.18.100.1:80", "color": "blue"}"#,
            &[("198.18.2.11:80", r#"{"weight": 2, "zone": "a"}"#)],
        ),
    )]);
    let snap = build(&raw, &DesiredState::default());
    assert_eq!(snap.rejections, vec![]);
    let paths: Vec<&str> = snap.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "/lb/services/web",
            "/lb/services/web/backends/198.18.2.11:80"
        ]
    );
    assert!(snap.warnings[0].message.contains("\"color\""));
    assert_eq!(snap.state.services["web"].backends.len(), 1);
}

#[test]
fn a_deleted_service_node_removes_the_service() {
    let raw = tree(vec![("web", service(WEB, &[]))]);
    let previous = build(&raw, &DesiredState::default()).state;
    let snap = build(&RawTree::new(), &previous);
    assert!(snap.state.services.is_empty());
    assert!(snap.rejections.is_empty());
}

#[test]
fn a_duplicate_vip_goes_to_the_first_name_without_history() {
    let raw = tree(vec![
        ("b-web", service(WEB, &[])),
        ("a-web", service(WEB, &[])),
    ]);
    let snap = build(&raw, &DesiredState::default());
    let r = only_rejection(&snap);
    assert_eq!(
        (r.path.as_str(), r.outcome),
        ("/lb/services/b-web", NOT_APPLIED)
    );
    assert!(
        r.reason.contains("both use VIP 198.18.100.1:80"),
        "{}",
        r.reason
    );
    assert_eq!(
        snap.state.services.keys().collect::<Vec<_>>(),
        vec!["a-web"]
    );
}

#[test]
fn a_duplicate_vip_stays_with_the_service_that_held_it() {
    let first = tree(vec![("z-web", service(WEB, &[("198.18.2.11:80", "")]))]);
    let previous = build(&first, &DesiredState::default()).state;
    let raw = tree(vec![
        ("z-web", service(WEB, &[("198.18.2.11:80", "")])),
        ("a-new", service(WEB, &[])),
    ]);
    let snap = build(&raw, &previous);
    let r = only_rejection(&snap);
    assert_eq!(r.path, "/lb/services/a-new");
    assert_eq!(
        snap.state.services.keys().collect::<Vec<_>>(),
        vec!["z-web"]
    );
    snap.state.validate().unwrap();
}

#[test]
fn a_service_moving_onto_a_taken_vip_keeps_its_old_vip() {
    let first = tree(vec![
        ("web", service(WEB, &[])),
        ("api", service(r#"{"vip": "198.18.100.2:80"}"#, &[])),
    ]);
    let previous = build(&first, &DesiredState::default()).state;
    let raw = tree(vec![("web", service(WEB, &[])), ("api", service(WEB, &[]))]);
    let snap = build(&raw, &previous);
    let r = only_rejection(&snap);
    assert_eq!(
        (r.path.as_str(), r.outcome),
        ("/lb/services/api", KEPT_LAST_GOOD)
    );
    assert_eq!(snap.state.services["api"].vip, addr("198.18.100.2:80"));
    assert_eq!(snap.state.services["web"].vip, addr("198.18.100.1:80"));
    snap.state.validate().unwrap();
}

#[test]
fn the_state_does_not_depend_on_read_order() {
    // BTreeMaps make order irrelevant by construction; this guards against a future HashMap.
    let a = tree(vec![
        (
            "web",
            service(WEB, &[("198.18.2.11:80", ""), ("198.18.2.12:80", "")]),
        ),
        ("api", service(r#"{"vip": "198.18.100.2:80"}"#, &[])),
    ]);
    let b = tree(vec![
        ("api", service(r#"{"vip": "198.18.100.2:80"}"#, &[])),
        (
            "web",
            service(WEB, &[("198.18.2.12:80", ""), ("198.18.2.11:80", "")]),
        ),
    ]);
    assert_eq!(
        build(&a, &DesiredState::default()),
        build(&b, &DesiredState::default())
    );
}

/// A sequence of trees, each differing from the last in the services named: bad backend nodes,
/// unknown fields, a service node going bad and good again, a VIP taken over, a service deleted.
fn evolving_trees() -> Vec<(RawTree, BTreeSet<String>)> {
    let api = r#"{"vip": "198.18.100.2:80", "extra": 1}"#;
    let good = |data: &str, weight: u32| {
        service(
            data,
            &[
                ("198.18.2.11:80", &format!(r#"{{"weight": {weight}}}"#)),
                ("198.18.2.12:80", "not json"),
            ],
        )
    };
    let names = |n: &[&str]| {
        n.iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<String>>()
    };
    let t0 = tree(vec![
        ("web", good(WEB, 1)),
        ("api", good(api, 1)),
        ("db", good(r#"{"vip": "198.18.100.3:80"}"#, 1)),
    ]);
    let mut t1 = t0.clone();
    t1.insert("web".into(), good(WEB, 5));
    let mut t2 = t1.clone();
    t2.insert("api".into(), good("{not json", 1));
    let mut t3 = t2.clone();
    t3.insert("db".into(), good(WEB, 2));
    let mut t4 = t3.clone();
    t4.insert("api".into(), good(api, 3));
    let mut t5 = t4.clone();
    t5.remove("web");
    vec![
        (t0, names(&["web", "api", "db"])),
        (t1, names(&["web"])),
        (t2, names(&["api"])),
        (t3, names(&["db"])),
        (t4, names(&["api"])),
        (t5, names(&["web"])),
    ]
}

#[test]
fn building_only_the_changed_services_gives_what_a_full_build_gives() {
    let mut builder = SnapshotBuilder::default();
    let (mut full_previous, mut previous) = (DesiredState::default(), DesiredState::default());
    let (mut rejections, mut warnings, mut kept_last_good) = (0, 0, 0);
    for (i, (raw, changed)) in evolving_trees().into_iter().enumerate() {
        let full = build(&raw, &full_previous);
        let changed = (i > 0).then_some(&changed);
        let partial = builder.build(&schema(), &raw, &previous, changed);
        assert_eq!(partial, full, "tree {i}");
        rejections += full.rejections.len();
        warnings += full.warnings.len();
        kept_last_good += (full.rejections.iter())
            .filter(|r| r.outcome == KEPT_LAST_GOOD)
            .count();
        (full_previous, previous) = (full.state, partial.state);
    }
    assert!(rejections > 0 && warnings > 0 && kept_last_good > 0);
}

#[test]
fn a_service_not_named_as_changed_is_not_built_again() {
    let trees = evolving_trees();
    let mut builder = SnapshotBuilder::default();
    let first = builder.build(&schema(), &trees[0].0, &DesiredState::default(), None);
    let second = builder.build(&schema(), &trees[1].0, &first.state, Some(&trees[1].1));
    assert!(Arc::ptr_eq(
        &first.state.services["api"],
        &second.state.services["api"]
    ));
    assert!(!Arc::ptr_eq(
        &first.state.services["web"],
        &second.state.services["web"]
    ));
    assert_eq!(second.state.services["web"].backends.len(), 1);
    // Told nothing changed, a builder keeps even what the tree no longer says (it trusts the
    // caller's list): what a full read corrects.
    let mut stale = trees[1].0.clone();
    stale.insert("api".into(), service(WEB, &[]));
    let kept = builder.build(&schema(), &stale, &second.state, Some(&BTreeSet::new()));
    assert_eq!(kept.state, second.state);
    let corrected = builder.build(&schema(), &stale, &second.state, None);
    assert_eq!(corrected, build(&stale, &second.state));
}
