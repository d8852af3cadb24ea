//! Next hops through netlink, in a thread's own namespace (`PrivateNetns`: gone with the thread):
//! route lookups through a gateway and directly connected, and the neighbour entries lb may own.
//!
//! ```text
//! this thread's namespace: nh0 198.18.3.2/24, 2001:db8:3::2/64 ──veth── nh1 (no address)
//!   198.18.0.0/16 via 198.18.3.1, 2001:db8:2::/64 via 2001:db8:3::1
//! ```

use std::net::IpAddr;

use anyhow::Context as _;
use lb_tests::lab::{PrivateNetns, with_private_netns};
use lb_userspace::netif;
use lb_userspace::nexthop::{LB_NEIGH_PROTOCOL, NextHop, NextHopKeeper, RouteError, resolve};

const GATEWAY_V4: &str = "198.18.3.1";
const GATEWAY_V6: &str = "2001:db8:3::1";
/// Behind the gateway.
const ROUTED_V4: &str = "198.18.2.11";
const ROUTED_V6: &str = "2001:db8:2::11";
/// On the link.
const DIRECT_V4: &str = "198.18.3.9";
const DIRECT_V6: &str = "2001:db8:3::9";
/// The operator's permanent entry for the gateway.
const OPERATOR_MAC: &str = "02:00:5e:00:53:01";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// The link and routes of the diagram; returns `nh0`'s index.
fn wire(ns: &PrivateNetns) -> anyhow::Result<u32> {
    ns.ip_script(&[
        "link add nh0 type veth peer name nh1",
        "link set nh0 up",
        "link set nh1 up",
        "addr add 198.18.3.2/24 dev nh0",
        "addr add 2001:db8:3::2/64 dev nh0 nodad",
        "route add 198.18.0.0/16 via 198.18.3.1",
        "-6 route add 2001:db8:2::/64 via 2001:db8:3::1",
    ])?;
    netif::ifindex("nh0").context("nh0")
}

/// `ip -j -d neigh show ADDR dev nh0` as JSON (`[]` when there is no entry).
fn neigh(ns: &PrivateNetns, addr: &str) -> serde_json::Value {
    let out = ns
        .ip(&["-j", "-d", "neigh", "show", addr, "dev", "nh0"])
        .expect("ip neigh show");
    serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
}

/// The operator's permanent entry for the gateway; returns it as `ip neigh` shows it.
fn operator_entry(ns: &PrivateNetns) -> serde_json::Value {
    ns.ip(&[
        "neigh",
        "add",
        GATEWAY_V4,
        "dev",
        "nh0",
        "lladdr",
        OPERATOR_MAC,
        "nud",
        "permanent",
    ])
    .expect("the operator's entry");
    neigh(ns, GATEWAY_V4)
}

fn exists(ns: &PrivateNetns, addr: &str) -> bool {
    neigh(ns, addr).as_array().is_some_and(|a| !a.is_empty())
}

#[test]
fn next_hops_resolve_through_the_gateway_and_directly_connected() {
    with_private_netns(|ns| {
        let nh0 = wire(ns).expect("wiring");
        let dsts = [
            ip(ROUTED_V4),
            ip(DIRECT_V4),
            ip(ROUTED_V6),
            ip(DIRECT_V6),
            ip("198.19.7.7"),
        ];
        let hops = resolve(&dsts).expect("netlink socket");
        let at = |addr: &str| NextHop {
            addr: ip(addr),
            ifindex: nh0,
        };
        assert_eq!(hops[0].as_ref().ok(), Some(&at(GATEWAY_V4)));
        assert_eq!(hops[1].as_ref().ok(), Some(&at(DIRECT_V4)));
        assert_eq!(hops[2].as_ref().ok(), Some(&at(GATEWAY_V6)));
        assert_eq!(hops[3].as_ref().ok(), Some(&at(DIRECT_V6)));
        // No default route: 198.19.0.0/16 is unreachable, and the error says so and what to do.
        match &hops[4] {
            Err(e @ RouteError::NoRoute { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("no route to backend 198.19.7.7: no route covers it"),
                    "{text}"
                );
                assert!(text.contains("add a route"), "{text}");
            }
            other => panic!("198.19.7.7: {other:?}"),
        }
    })
    .expect("private namespace");
}

#[test]
fn a_blackhole_route_is_no_next_hop() {
    with_private_netns(|ns| {
        wire(ns).expect("wiring");
        ns.ip(&["route", "add", "blackhole", "198.18.200.0/24"])
            .expect("blackhole");
        let hops = resolve(&[ip("198.18.200.1")]).expect("netlink socket");
        let text = match &hops[0] {
            Err(e @ RouteError::NoRoute { .. }) => e.to_string(),
            other => panic!("198.18.200.1: {other:?}"),
        };
        assert!(text.contains("a blackhole route covers it"), "{text}");
    })
    .expect("private namespace");
}

#[test]
fn lb_removes_only_the_entries_it_created_and_never_touches_a_permanent_one() {
    with_private_netns(|ns| {
        let nh0 = wire(ns).expect("wiring");
        let before = operator_entry(ns);

        let mut keeper = NextHopKeeper::open(false).expect("keeper");
        let backends = [ip(ROUTED_V4), ip(DIRECT_V4), ip(DIRECT_V6)];
        let report = keeper.refresh(&backends);
        let at = |addr: &str| NextHop {
            addr: ip(addr),
            ifindex: nh0,
        };
        assert_eq!(report.wanted, 3);
        assert_eq!(report.left, vec![at(GATEWAY_V4)], "{report:?}");
        let mut created = report.created.clone();
        created.sort();
        assert_eq!(created, vec![at(DIRECT_V4), at(DIRECT_V6)], "{report:?}");
        for addr in [DIRECT_V4, DIRECT_V6] {
            let e = &neigh(ns, addr)[0];
            assert!(e.get("managed").is_some(), "{addr}: {e}");
            assert_eq!(
                e["protocol"].as_str().map(str::to_owned),
                Some(LB_NEIGH_PROTOCOL.to_string()),
                "{addr}: {e}"
            );
        }
        assert_eq!(
            neigh(ns, GATEWAY_V4),
            before,
            "lb changed the operator's entry"
        );

        // The same set again: nothing new, nothing removed.
        let again = keeper.refresh(&backends);
        assert!(
            again.created.is_empty() && again.removed.is_empty(),
            "{again:?}"
        );

        // A backend removed: its entry goes, the others stay.
        let fewer = keeper.refresh(&[ip(ROUTED_V4), ip(DIRECT_V4)]);
        assert_eq!(fewer.removed, vec![at(DIRECT_V6)], "{fewer:?}");
        assert!(!exists(ns, DIRECT_V6));
        assert!(exists(ns, DIRECT_V4));

        // Exit (--detach-on-exit): lb's entries go, the operator's stays exactly as it was.
        let released = keeper.release();
        assert_eq!(released, vec![at(DIRECT_V4)]);
        assert!(!exists(ns, DIRECT_V4), "{}", neigh(ns, DIRECT_V4));
        assert_eq!(
            neigh(ns, GATEWAY_V4),
            before,
            "lb changed the operator's entry"
        );
        drop(keeper);
        assert_eq!(
            neigh(ns, GATEWAY_V4),
            before,
            "dropping the keeper changed it"
        );
    })
    .expect("private namespace");
}

#[test]
fn an_entry_made_after_lbs_is_not_deleted_in_its_place() {
    with_private_netns(|ns| {
        wire(ns).expect("wiring");
        let mut keeper = NextHopKeeper::open(false).expect("keeper");
        let report = keeper.refresh(&[ip(DIRECT_V4)]);
        assert_eq!(report.created.len(), 1, "{report:?}");
        // The operator replaces lb's entry by a permanent one of theirs.
        ns.ip(&[
            "neigh",
            "replace",
            DIRECT_V4,
            "dev",
            "nh0",
            "lladdr",
            OPERATOR_MAC,
            "nud",
            "permanent",
            "proto",
            "static",
        ])
        .expect("replace");
        let theirs = neigh(ns, DIRECT_V4);
        let after = keeper.refresh(&[ip(DIRECT_V4)]);
        assert!(after.created.is_empty(), "{after:?}");
        assert!(keeper.release().is_empty());
        assert_eq!(neigh(ns, DIRECT_V4), theirs);
    })
    .expect("private namespace");
}

#[test]
fn an_earlier_lbs_entries_are_adopted_only_with_its_pins() {
    with_private_netns(|ns| {
        wire(ns).expect("wiring");
        let mut first = NextHopKeeper::open(false).expect("keeper");
        assert_eq!(first.refresh(&[ip(DIRECT_V4)]).created.len(), 1);
        // A plain exit: the entry stays for the program that goes on forwarding.
        first.keep();
        drop(first);
        assert!(exists(ns, DIRECT_V4));

        // A daemon that did not adopt the pins leaves it.
        let mut stranger = NextHopKeeper::open(false).expect("keeper");
        let report = stranger.refresh(&[ip(DIRECT_V4)]);
        assert_eq!(report.left.len(), 1, "{report:?}");
        assert!(stranger.release().is_empty());
        assert!(exists(ns, DIRECT_V4));

        // The next daemon on the same pins adopts it, and removes it on its --detach-on-exit.
        let mut next = NextHopKeeper::open(true).expect("keeper");
        let report = next.refresh(&[ip(DIRECT_V4)]);
        assert_eq!(report.adopted.len(), 1, "{report:?}");
        assert_eq!(next.release().len(), 1);
        assert!(!exists(ns, DIRECT_V4));
    })
    .expect("private namespace");
}

#[test]
fn a_kernel_learned_entry_is_revalidated_not_taken() {
    with_private_netns(|ns| {
        wire(ns).expect("wiring");
        ns.ip(&[
            "neigh",
            "add",
            DIRECT_V4,
            "dev",
            "nh0",
            "lladdr",
            OPERATOR_MAC,
            "nud",
            "stale",
        ])
        .expect("a stale entry");
        let mut keeper = NextHopKeeper::open(true).expect("keeper");
        let report = keeper.refresh(&[ip(DIRECT_V4)]);
        assert_eq!(report.touched.len(), 1, "{report:?}");
        assert!(report.created.is_empty(), "{report:?}");
        assert_eq!(keeper.owned().count(), 0);
        assert!(keeper.release().is_empty());
        let e = &neigh(ns, DIRECT_V4)[0];
        assert!(e.get("managed").is_none(), "{e}");
        assert_eq!(e["lladdr"].as_str(), Some(OPERATOR_MAC), "{e}");
    })
    .expect("private namespace");
}

#[test]
fn a_detach_removes_the_entries_a_stopped_run_left_and_only_those() {
    with_private_netns(|ns| {
        wire(ns).expect("wiring");
        let before = operator_entry(ns);
        let mut run = NextHopKeeper::open(false).expect("keeper");
        let report = run.refresh(&[ip(ROUTED_V4), ip(DIRECT_V4), ip(DIRECT_V6)]);
        assert_eq!(report.created.len(), 2, "{report:?}");
        // A plain exit (or a crash): the entries stay for the program that forwards on.
        run.keep();
        drop(run);
        assert!(exists(ns, DIRECT_V4) && exists(ns, DIRECT_V6));
        let mut removed = lb_userspace::nexthop::release_left_over().expect("netlink");
        removed.sort();
        assert_eq!(
            removed.iter().map(|h| h.addr).collect::<Vec<_>>(),
            vec![ip(DIRECT_V4), ip(DIRECT_V6)]
        );
        assert!(!exists(ns, DIRECT_V4) && !exists(ns, DIRECT_V6));
        assert_eq!(
            neigh(ns, GATEWAY_V4),
            before,
            "the operator's entry changed"
        );
        assert!(
            lb_userspace::nexthop::release_left_over()
                .expect("netlink")
                .is_empty()
        );
    })
    .expect("private namespace");
}
