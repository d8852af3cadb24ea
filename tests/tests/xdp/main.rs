//! Whole-packet fixtures for the XDP programs, run in the kernel with `BPF_PROG_TEST_RUN`.
//!
//! Each test loads its own `Dataplane` (tiny capacity, nothing pinned) and runs inside a private
//! network namespace (a veth pair with permanent neighbours and routes toward the backends), because
//! `bpf_fib_lookup` resolves routes in the namespace of the thread that runs the program. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod flow_table;
mod frames;
mod icmp;
mod vip_filter;
mod vip_table;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use frames::*;
use lb_common::{
    BACKEND_F_DOWN, BACKEND_F_DRAINING, BACKEND_F_VALID, BackendEntry, Counter, DecapCounter,
    DecapKey, FLOW_F_CLOSED, FLOW_F_COUNTED, FLOW_F_ESTABLISHED, FlowKey, IPPROTO_TCP, LbConfig,
    Scheduler, ServiceEntry, VipKey, addr::to_words, hash::flow_hash, layout::LAYOUT_VERSION,
    limits::Capacity,
};
use lb_tests::eventually::Eventually;
use lb_tests::xdp::{
    CLIENT4, CLIENT6, SRC4, SRC6, VIP4, VIP6, XDP_DROP, XDP_PASS, XDP_TX, XdpLab as Lab, maps,
};
use lb_userspace::dataplane::{Dataplane, DataplaneError, ExistingPins, LoadOptions};
use lb_userspace::decap::{SrcPolicy, SrcPrefix};

const HASH_SEED: u32 = 0x5eed_1234;
/// Table length of the Maglev fixtures (a prime ≥ the 4096-entry minimum of `Capacity`).
const TABLE_SIZE: u32 = 4099;

fn backends4() -> [Ipv4Addr; 3] {
    [
        Ipv4Addr::new(198, 18, 2, 11),
        Ipv4Addr::new(198, 18, 2, 12),
        Ipv4Addr::new(198, 18, 2, 13),
    ]
}

fn backends6() -> [Ipv6Addr; 3] {
    [0x11, 0x12, 0x13].map(|l| Ipv6Addr::new(0x2001, 0xdb8, 0x2, 0, 0, 0, 0, l))
}

fn tiny_capacity() -> Capacity {
    Capacity {
        max_services: 16,
        max_backends: 256,
        table_size: TABLE_SIZE,
        flow_table_size: 4096,
        persist_table_size: 1024,
    }
}

/// Runs `f` in a fresh [`Lab`] on a thread of its own.
fn with_lab<R: Send>(f: impl FnOnce(&Lab) -> R + Send) -> R {
    lb_tests::xdp::with_xdp_lab(f).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A loaded data plane with services written the way `apply` will write them.
struct Fixture {
    dp: Dataplane,
    ifindex: u32,
    next_backend: u32,
}

/// Service ids of the fixtures and their table slots.
const SVC4: u32 = 0;
const SVC6: u32 = 1;

impl Fixture {
    fn new(ifindex: u32) -> Self {
        Fixture::pinned(ifindex, None)
    }

    /// A fixture whose maps are pinned in `pin_dir` (for tests that write a map as another
    /// process would).
    fn pinned(ifindex: u32, pin_dir: Option<std::path::PathBuf>) -> Self {
        Fixture::load(ifindex, pin_dir, tiny_capacity())
    }

    fn load(ifindex: u32, pin_dir: Option<std::path::PathBuf>, capacity: Capacity) -> Self {
        let opts = LoadOptions {
            capacity,
            pin_dir,
            kernel_log: false,
            ..Default::default()
        };
        let mut dp = Dataplane::load(&opts).expect("load the data plane");
        let cfg = LbConfig {
            src_v6: to_words(IpAddr::V6(SRC6)).0,
            src_v4: to_words(IpAddr::V4(SRC4)).0[0],
            hash_seed: HASH_SEED,
            ..Default::default()
        };
        dp.set_config(&cfg).unwrap();
        Fixture {
            dp,
            ifindex,
            next_backend: 1,
        }
    }

    /// Adds backends of a service; returns their ids.
    fn add_backends(&mut self, service_id: u32, addrs: &[IpAddr]) -> Vec<u32> {
        addrs
            .iter()
            .map(|a| {
                let id = self.next_backend;
                self.next_backend += 1;
                let entry = maps::backend_entry(service_id, *a);
                self.dp.put_backend(id, &entry).unwrap();
                id
            })
            .collect()
    }

    fn set_backend_flags(&mut self, id: u32, flags: u32, weight: u32) {
        let mut entry = self.dp.maps().backend(id).unwrap();
        entry.flags = flags;
        entry.weight = weight;
        self.dp.put_backend(id, &entry).unwrap();
    }

    /// Writes `table` into the service's own slot and points the VIP at it.
    fn put_service(&mut self, id: u32, vip: IpAddr, scheduler: Scheduler, table: &[u32]) -> VipKey {
        maps::put_service(&mut self.dp, id, vip, scheduler, id * TABLE_SIZE, table).unwrap()
    }

    /// The standard fixture: an IPv4 and an IPv6 service with three backends each, round robin.
    fn standard(ifindex: u32) -> (Self, Vec<u32>, Vec<u32>) {
        Fixture::standard_in(Fixture::new(ifindex))
    }

    fn standard_in(mut f: Fixture) -> (Self, Vec<u32>, Vec<u32>) {
        let ids4 = f.add_backends(SVC4, &backends4().map(IpAddr::V4));
        let ids6 = f.add_backends(SVC6, &backends6().map(IpAddr::V6));
        f.put_service(SVC4, IpAddr::V4(VIP4), Scheduler::RoundRobin, &ids4);
        f.put_service(SVC6, IpAddr::V6(VIP6), Scheduler::RoundRobin, &ids6);
        (f, ids4, ids6)
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        run_program(self.dp.balancer_program(), frame, self.ifindex)
    }

    /// Non-zero counters, for assertion messages.
    fn nonzero_counters(&self) -> String {
        let all = self.dp.maps().counters().unwrap();
        all.iter()
            .filter(|(_, v)| *v != 0)
            .map(|(c, v)| format!("{}={v}", c.name()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn counter(&self, c: Counter) -> u64 {
        self.dp
            .maps()
            .counters()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v)
            .unwrap()
    }

    fn decap_counter(&self, c: DecapCounter) -> u64 {
        self.dp
            .maps()
            .decap_counters()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v)
            .unwrap()
    }

    fn backend_id_of(&self, addr: IpAddr, ids: &[u32]) -> u32 {
        let (words, _) = to_words(addr);
        *ids.iter()
            .find(|id| self.dp.maps().backend(**id).unwrap().addr == words)
            .expect("a backend of the service")
    }
}

/// Runs an XDP program once on `frame` as if received on `ifindex`; returns verdict and output.
fn run_program(prog: &mut aya::programs::Xdp, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: if ifindex == 0 { None } else { Some(&ctx) },
        ..Default::default()
    };
    let result = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

// ---------------------------------------------------------------------------------------------
// Encapsulation

#[test]
fn ipv4_syn_is_encapsulated_toward_a_backend() {
    with_lab(|lab| {
        let (mut f, ids4, _) = Fixture::standard(lab.ifindex);
        let syn = Tcp::v4(CLIENT4, VIP4, 40000, 80, SYN)
            .tos(0x28)
            .ttl(57)
            .frame();
        let (verdict, out) = f.run(&syn);
        assert_eq!(
            verdict, XDP_TX,
            "a SYN to the VIP is sent back out of the same interface"
        );
        let outer = check_ipip(&out, &syn[ETH_HLEN..], lab);
        assert_eq!(outer.src, v4(SRC4));
        assert!(
            backends4().map(IpAddr::V4).contains(&outer.dst),
            "outer dst {} is a backend",
            outer.dst
        );
        assert_eq!(outer.ttl, 57, "TTL copied from the inner packet");
        assert_eq!(outer.tos, 0x28, "TOS copied from the inner packet");
        assert_eq!(f.counter(Counter::FlowNew), 1);
        assert_eq!(f.counter(Counter::TxPackets), 1);
        let be = f.backend_id_of(outer.dst, &ids4);
        assert_eq!(
            f.dp.maps().backend_conns(be).unwrap(),
            0,
            "a SYN leaves the flow half-open: not an active connection yet"
        );
        let flows = f.dp.maps().flows().unwrap();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].1.flags & (FLOW_F_COUNTED | FLOW_F_ESTABLISHED), 0);
        f.run(&Tcp::v4(CLIENT4, VIP4, 40000, 80, ACK).frame());
        assert_eq!(
            f.dp.maps().backend_conns(be).unwrap(),
            1,
            "the first ACK counts it"
        );
        assert_eq!(f.counter(Counter::FlowEstablished), 1);
    });
}

#[test]
fn ipv6_syn_is_encapsulated_toward_a_backend() {
    with_lab(|lab| {
        let (mut f, ids6, _) = {
            let (f, ids4, ids6) = Fixture::standard(lab.ifindex);
            (f, ids6, ids4)
        };
        let syn = Tcp::v6(CLIENT6, VIP6, 40000, 80, SYN)
            .tos(0xb8)
            .ttl(61)
            .flow_label(0x5_4321)
            .frame();
        let (verdict, out) = f.run(&syn);
        assert_eq!(verdict, XDP_TX);
        let outer = check_ip6ip6(&out, &syn[ETH_HLEN..], lab);
        assert_eq!(outer.src, v6(SRC6));
        assert!(
            backends6().map(IpAddr::V6).contains(&outer.dst),
            "outer dst {} is a backend",
            outer.dst
        );
        assert_eq!(outer.ttl, 61, "hop limit copied");
        assert_eq!(outer.tos, 0xb8, "traffic class copied");
        assert_eq!(outer.flow_label, 0x5_4321, "flow label copied");
        let be = f.backend_id_of(outer.dst, &ids6);
        assert_eq!(f.dp.maps().backend_conns(be).unwrap(), 0, "half-open");
        let ack = Tcp::v6(CLIENT6, VIP6, 40000, 80, ACK).frame();
        let (_, out) = f.run(&ack);
        assert_eq!(
            f.backend_id_of(check_ip6ip6(&out, &ack[ETH_HLEN..], lab).dst, &ids6),
            be
        );
        assert_eq!(f.dp.maps().backend_conns(be).unwrap(), 1, "established");
    });
}

#[test]
fn flow_sticks_to_its_backend_and_counts_connections() {
    with_lab(|lab| {
        let (mut f, ids4, _) = Fixture::standard(lab.ifindex);
        let syn = Tcp::v4(CLIENT4, VIP4, 40001, 80, SYN).frame();
        let ack = Tcp::v4(CLIENT4, VIP4, 40001, 80, ACK).frame();
        let fin = Tcp::v4(CLIENT4, VIP4, 40001, 80, FIN | ACK).frame();

        let (_, out) = f.run(&syn);
        let first = check_ipip(&out, &syn[ETH_HLEN..], lab).dst;
        let be = f.backend_id_of(first, &ids4);
        assert_eq!(
            f.dp.maps().backend_conns(be).unwrap(),
            0,
            "a SYN alone takes no connection unit"
        );
        // A retransmitted SYN finds its flow (the cursor moved on) and still takes none.
        let (_, out) = f.run(&syn);
        assert_eq!(check_ipip(&out, &syn[ETH_HLEN..], lab).dst, first);
        assert_eq!(f.dp.maps().backend_conns(be).unwrap(), 0);

        // The round-robin cursor moved on, so only the flow table can keep the next packets here.
        for frame in [&ack, &ack] {
            let (verdict, out) = f.run(frame);
            assert_eq!(verdict, XDP_TX);
            assert_eq!(
                check_ipip(&out, &frame[ETH_HLEN..], lab).dst,
                first,
                "same flow, same backend"
            );
        }
        assert_eq!(f.counter(Counter::FlowHit), 3);
        assert_eq!(
            f.dp.maps().backend_conns(be).unwrap(),
            1,
            "the first ACK counts the connection, later ones do not"
        );
        assert_eq!(f.counter(Counter::FlowEstablished), 1);

        let (verdict, out) = f.run(&fin);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(check_ipip(&out, &fin[ETH_HLEN..], lab).dst, first);
        assert_eq!(
            f.dp.maps().backend_conns(be).unwrap(),
            0,
            "client FIN returns the unit"
        );
        assert_eq!(f.counter(Counter::ConnClosed), 1);
        // A retransmitted FIN must not return it twice.
        f.run(&fin);
        assert_eq!(f.dp.maps().backend_conns(be).unwrap(), 0);
        assert_eq!(f.counter(Counter::ConnClosed), 1);

        assert_eq!(f.counter(Counter::FlowNew), 1);
        assert_eq!(f.counter(Counter::TxPackets), 6);
        let svc = f.dp.maps().service_stats(SVC4).unwrap();
        assert_eq!((svc.packets, svc.new_flows, svc.drops), (6, 1, 0));
        assert_eq!(
            svc.bytes,
            (2 * syn.len() + 2 * ack.len() + 2 * fin.len()) as u64
        );
        let bst = f.dp.maps().backend_stats(be).unwrap();
        assert_eq!((bst.packets, bst.new_flows), (6, 1));
        let flows = f.dp.maps().flows().unwrap();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].1.backend_id, be);
    });
}

/// Writes the program's clock as the daemon's clock thread would (through the pinned map).
fn set_program_clock(pin_dir: &std::path::Path, now_ns: u64) {
    let data = aya::maps::MapData::from_pin(pin_dir.join(lb_common::maps::CONFIG)).unwrap();
    let map = aya::maps::Map::from_map_data(data).unwrap();
    let mut config: aya::maps::Array<_, LbConfig> = aya::maps::Array::try_from(map).unwrap();
    let old = config.get(&0, 0).unwrap();
    config.set(0, LbConfig { now_ns, ..old }, 0).unwrap();
}

#[test]
fn established_flows_take_their_time_from_the_daemon_clock() {
    use lb_userspace::dataplane::now_coarse_ns;
    let bpffs = BpffsMount::new();
    let pin_dir = bpffs.dir.join("lb");
    with_lab(|lab| {
        let (mut f, _, _) =
            Fixture::standard_in(Fixture::pinned(lab.ifindex, Some(pin_dir.clone())));
        assert_eq!(f.dp.maps().config().unwrap().now_ns, 0, "no clock yet");

        // The clock thread keeps CLOCK_MONOTONIC_COARSE in the configuration, tick by tick.
        let before = now_coarse_ns();
        f.dp.start_clock().unwrap();
        let first = f.dp.maps().config().unwrap().now_ns;
        assert!(
            first >= before && first <= now_coarse_ns(),
            "{before} {first}"
        );
        assert_eq!(f.dp.clock_started_ns(), first);
        assert!(
            lb_tests::eventually::wait_until(Duration::from_secs(2), || {
                f.dp.maps().config().unwrap().now_ns > first
            }),
            "the program clock ticks"
        );
        // Writing the configuration keeps the clock.
        let cfg = f.dp.maps().config().unwrap();
        f.dp.set_config(&cfg).unwrap();
        assert_ne!(f.dp.maps().config().unwrap().now_ns, 0);
        f.dp.stop_clock();
        assert_eq!(
            f.dp.maps().config().unwrap().now_ns,
            0,
            "a stopped clock hands back"
        );

        // A SYN is stamped by the kernel's clock; the next packets of the flow take the daemon's.
        let syn = Tcp::v4(CLIENT4, VIP4, 40101, 80, SYN).frame();
        let ack = Tcp::v4(CLIENT4, VIP4, 40101, 80, ACK).frame();
        f.run(&syn);
        let stamped = f.dp.maps().flows().unwrap()[0].1.last_seen_ns;
        assert!(stamped <= now_coarse_ns());
        let later = stamped + 3_600_000_000_000;
        set_program_clock(&pin_dir, later);
        assert_eq!(f.run(&ack).0, XDP_TX);
        assert_eq!(
            f.dp.maps().flows().unwrap()[0].1.last_seen_ns,
            later,
            "touched with the daemon's time"
        );
        // A clock behind the entry (a new entry stamped a tick ahead of it) never moves it back.
        set_program_clock(&pin_dir, later - 10_000_000_000);
        assert_eq!(f.run(&ack).0, XDP_TX);
        assert_eq!(f.dp.maps().flows().unwrap()[0].1.last_seen_ns, later);
    });
    drop(bpffs);
}

#[test]
fn flow_of_a_down_backend_is_rescheduled_and_moves_its_unit() {
    with_lab(|lab| {
        let (mut f, ids4, _) = Fixture::standard(lab.ifindex);
        let syn = Tcp::v4(CLIENT4, VIP4, 40002, 80, SYN).frame();
        let ack = Tcp::v4(CLIENT4, VIP4, 40002, 80, ACK).frame();
        let (_, out) = f.run(&syn);
        let old = f.backend_id_of(check_ipip(&out, &syn[ETH_HLEN..], lab).dst, &ids4);
        f.run(&ack);
        assert_eq!(f.dp.maps().backend_conns(old).unwrap(), 1);
        f.set_backend_flags(old, BACKEND_F_VALID | BACKEND_F_DOWN, 1);
        let (verdict, out) = f.run(&ack);
        assert_eq!(verdict, XDP_TX);
        let new = f.backend_id_of(check_ipip(&out, &ack[ETH_HLEN..], lab).dst, &ids4);
        assert_ne!(new, old);
        assert_eq!(f.counter(Counter::FlowRescheduled), 1);
        assert_eq!(f.dp.maps().backend_conns(old).unwrap(), 0);
        assert_eq!(f.dp.maps().backend_conns(new).unwrap(), 1);
    });
}

#[test]
fn vlan_tagged_syn_is_balanced_untagged() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        let syn = Tcp::v4(CLIENT4, VIP4, 40003, 80, SYN)
            .vlan(0x8100, 42)
            .frame();
        let (verdict, out) = f.run(&syn);
        assert_eq!(verdict, XDP_TX);
        check_ipip(&out, &syn[ETH_HLEN + 4..], lab);
        let syn = Tcp::v6(CLIENT6, VIP6, 40003, 80, SYN)
            .vlan(0x88a8, 7)
            .frame();
        let (verdict, out) = f.run(&syn);
        assert_eq!(verdict, XDP_TX);
        check_ip6ip6(&out, &syn[ETH_HLEN + 4..], lab);
    });
}

#[test]
fn ipv4_with_options_is_balanced() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        // Record-route-sized option space: NOP padding is enough to exercise the variable IHL.
        let syn = Tcp::v4(CLIENT4, VIP4, 40004, 80, SYN)
            .options(&[1; 12])
            .frame();
        let (verdict, out) = f.run(&syn);
        assert_eq!(verdict, XDP_TX);
        check_ipip(&out, &syn[ETH_HLEN..], lab);
        assert_eq!(f.counter(Counter::Ipv4WithOptions), 1);
    });
}

#[test]
fn backend_behind_another_interface_is_redirected() {
    with_lab(|lab| {
        let mut f = Fixture::new(lab.ifindex);
        let ids = f.add_backends(SVC4, &[v4(Ipv4Addr::new(198, 18, 5, 11))]);
        f.put_service(SVC4, v4(VIP4), Scheduler::RoundRobin, &ids);
        let syn = Tcp::v4(CLIENT4, VIP4, 40009, 80, SYN).frame();
        let (verdict, out) = f.run(&syn);
        const XDP_REDIRECT: u32 = 4;
        assert_eq!(verdict, XDP_REDIRECT, "counters: {}", f.nonzero_counters());
        assert_eq!(
            out.len(),
            syn.len() + 20,
            "encapsulated before the redirect"
        );
        assert_eq!(f.counter(Counter::RedirectPackets), 1);
        assert_eq!(f.counter(Counter::TxPackets), 0);
    });
}

#[test]
fn client_rst_returns_the_connection_unit() {
    with_lab(|lab| {
        let (mut f, ids4, _) = Fixture::standard(lab.ifindex);
        let syn = Tcp::v4(CLIENT4, VIP4, 40010, 80, SYN).frame();
        let ack = Tcp::v4(CLIENT4, VIP4, 40010, 80, ACK).frame();
        let rst = Tcp::v4(CLIENT4, VIP4, 40010, 80, 0x04).frame();
        let (_, out) = f.run(&syn);
        let be = f.backend_id_of(check_ipip(&out, &syn[ETH_HLEN..], lab).dst, &ids4);
        f.run(&ack);
        assert_eq!(f.dp.maps().backend_conns(be).unwrap(), 1);
        assert_eq!(f.run(&rst).0, XDP_TX, "the RST still reaches the backend");
        assert_eq!(f.dp.maps().backend_conns(be).unwrap(), 0);
        assert_eq!(f.counter(Counter::ConnClosed), 1);
        // A (possibly spoofed) RST does not move the flow: later packets keep its backend, and
        // the entry stays until the closed timeout.
        for sport_round in 0..3 {
            let (verdict, out) = f.run(&ack);
            assert_eq!(verdict, XDP_TX, "round {sport_round}");
            assert_eq!(
                f.backend_id_of(check_ipip(&out, &ack[ETH_HLEN..], lab).dst, &ids4),
                be
            );
        }
        assert_eq!(
            f.dp.maps().backend_conns(be).unwrap(),
            0,
            "closed flows hold no unit"
        );
        let flows = f.dp.maps().flows().unwrap();
        assert_eq!(flows.len(), 1);
        assert_ne!(flows[0].1.flags & FLOW_F_CLOSED, 0);
        // A packet other than a SYN without a flow creates no state and takes no unit.
        let stray = Tcp::v4(CLIENT4, VIP4, 40011, 80, 0x04).frame();
        let (_, out) = f.run(&stray);
        let be = f.backend_id_of(check_ipip(&out, &stray[ETH_HLEN..], lab).dst, &ids4);
        assert_eq!(f.dp.maps().backend_conns(be).unwrap(), 0);
        assert_eq!(f.counter(Counter::ConnClosed), 1);
        assert_eq!(f.counter(Counter::FlowMissNonSyn), 1);
        assert_eq!(
            f.dp.maps().flows().unwrap().len(),
            1,
            "no entry for the stray RST"
        );
    });
}

#[test]
fn next_hop_changes_reach_the_data_plane() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        let ack = Tcp::v4(CLIENT4, VIP4, 40008, 80, ACK).frame();
        let (_, out) = f.run(&ack);
        assert_eq!(out[0..6], lb_tests::xdp::NEXT_HOP_MAC);
        // The router behind 198.18.3.1 is replaced; the cached next hop expires within 50 ms.
        let new_mac = [0x02, 0, 0, 0, 0x03, 0x99];
        lab.ip(&[
            "neigh",
            "replace",
            "198.18.3.1",
            "lladdr",
            "02:00:00:00:03:99",
            "dev",
            "lbt0",
            "nud",
            "permanent",
        ]);
        Eventually::new("frames to the new next hop", Duration::from_secs(2))
            .every(Duration::from_millis(1))
            .poll(|| {
                let (verdict, out) = f.run(&ack);
                assert_eq!(verdict, XDP_TX);
                if out[0..6] == new_mac {
                    Ok(())
                } else {
                    Err(format!("destination MAC {:02x?}", &out[0..6]))
                }
            })
            .unwrap();
        // A route that disappears is a counted drop, not a stale forward, once the cache expires.
        lab.ip(&["route", "del", "198.18.2.0/24"]);
        Eventually::new("a drop once the route went away", Duration::from_secs(2))
            .every(Duration::from_millis(1))
            .poll(|| match f.run(&ack).0 {
                XDP_DROP => Ok(()),
                verdict => Err(format!("verdict {verdict}")),
            })
            .unwrap();
        assert!(f.counter(Counter::DropNoRoute) >= 1);
    });
}

// ---------------------------------------------------------------------------------------------
// Frames the balancer must leave alone

#[test]
fn frames_that_are_not_for_the_balancer_pass_untouched() {
    // Unbalanced packets to a VIP address are dropped instead (`icmp.rs`).
    const OTHER4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 9);
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        let syn = Tcp::v4(CLIENT4, VIP4, 40005, 80, SYN).frame();
        let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
            (
                "TCP to another address",
                Tcp::v4(CLIENT4, Ipv4Addr::new(198, 18, 100, 9), 1, 80, SYN).frame(),
                Counter::PassNotVip,
            ),
            (
                "IPv6 TCP to another address",
                Tcp::v6(CLIENT6, CLIENT6, 1, 80, SYN).frame(),
                Counter::PassNotVip,
            ),
            (
                "UDP to another address",
                Tcp::v4(CLIENT4, OTHER4, 1, 80, 0).protocol(17).frame(),
                Counter::PassNotTcp,
            ),
            (
                "ICMP to another address",
                Tcp::v4(CLIENT4, OTHER4, 0, 0, 0).protocol(1).frame(),
                Counter::PassNotTcp,
            ),
            (
                "ICMPv6 to another address",
                Tcp::v6(CLIENT6, CLIENT6, 0, 0, 0).protocol(58).frame(),
                Counter::PassNotTcp,
            ),
            (
                "IPv4 fragment to another address",
                Tcp::v4(CLIENT4, OTHER4, 1, 80, SYN)
                    .fragment(true, 0)
                    .frame(),
                Counter::PassFragment,
            ),
            (
                "IPv6 with a hop-by-hop header to another address",
                Tcp::v6(CLIENT6, CLIENT6, 1, 80, SYN).hop_by_hop().frame(),
                Counter::PassIpv6ExtHeaders,
            ),
            (
                "truncated TCP header to another address",
                Tcp::v4(CLIENT4, OTHER4, 1, 80, SYN).frame()[..ETH_HLEN + 20 + 10].to_vec(),
                Counter::PassMalformed,
            ),
            ("ARP", arp_frame(), Counter::PassNotIp),
            (
                "truncated VLAN tag",
                syn[..ETH_HLEN + 2].to_vec().with_ether_type(0x8100),
                Counter::PassMalformed,
            ),
            (
                "truncated IPv4 header",
                syn[..ETH_HLEN + 12].to_vec(),
                Counter::PassMalformed,
            ),
            (
                "IPv4 with IHL 4",
                Tcp::v4(CLIENT4, OTHER4, 1, 80, SYN)
                    .frame()
                    .with_byte(ETH_HLEN, 0x44),
                Counter::PassMalformed,
            ),
        ];
        let mut expected = std::collections::HashMap::<Counter, u64>::new();
        for (name, frame, counter) in &cases {
            let (verdict, out) = f.run(frame);
            assert_eq!(verdict, XDP_PASS, "{name}: passed to the stack");
            assert_eq!(&out, frame, "{name}: not modified");
            *expected.entry(*counter).or_default() += 1;
            assert_eq!(
                f.counter(*counter),
                expected[counter],
                "{name}: counted as {}",
                counter.name()
            );
        }
        assert_eq!(f.counter(Counter::RxPackets), cases.len() as u64);
        assert_eq!(f.counter(Counter::TxPackets), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Drops

#[test]
fn service_without_backends_drops() {
    with_lab(|lab| {
        let mut f = Fixture::new(lab.ifindex);
        f.put_service(SVC4, v4(VIP4), Scheduler::Maglev, &[]);
        let (verdict, _) = f.run(&Tcp::v4(CLIENT4, VIP4, 1, 80, SYN).frame());
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(f.counter(Counter::DropNoBackend), 1);
        assert_eq!(f.dp.maps().service_stats(SVC4).unwrap().drops, 1);
    });
}

#[test]
fn oversize_packet_drops_for_mtu() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        // A 1500-byte inner packet cannot get a 20-byte outer header on a 1500-byte MTU route.
        let big = Tcp::v4(CLIENT4, VIP4, 40006, 80, ACK)
            .payload(1500 - 40)
            .frame();
        assert_eq!(big.len(), ETH_HLEN + 1500);
        let (verdict, _) = f.run(&big);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(f.counter(Counter::DropMtu), 1);
        // 20 bytes less fits exactly.
        let fits = Tcp::v4(CLIENT4, VIP4, 40007, 80, ACK)
            .payload(1480 - 40)
            .frame();
        assert_eq!(f.run(&fits).0, XDP_TX);
    });
}

#[test]
fn table_entry_of_another_service_drops() {
    with_lab(|lab| {
        let (mut f, _, ids6) = Fixture::standard(lab.ifindex);
        // A raced or corrupt table: the IPv4 service points at an IPv6 service's backend.
        f.put_service(SVC4, v4(VIP4), Scheduler::RoundRobin, &ids6[..1]);
        let (verdict, _) = f.run(&Tcp::v4(CLIENT4, VIP4, 1, 80, SYN).frame());
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(f.counter(Counter::DropBadTableEntry), 1);
    });
}

// ---------------------------------------------------------------------------------------------
// Schedulers

/// The backend a new flow from `sport` goes to.
fn new_flow_backend(f: &mut Fixture, sport: u16, ids: &[u32], lab: &Lab) -> u32 {
    let syn = Tcp::v4(CLIENT4, VIP4, sport, 80, SYN).frame();
    let (verdict, out) = f.run(&syn);
    assert_eq!(verdict, XDP_TX, "counters: {}", f.nonzero_counters());
    f.backend_id_of(check_ipip(&out, &syn[ETH_HLEN..], lab).dst, ids)
}

#[test]
fn round_robin_cycles_through_the_list_in_order() {
    with_lab(|lab| {
        let (mut f, ids4, _) = Fixture::standard(lab.ifindex);
        let picked: Vec<u32> = (0..6)
            .map(|i| new_flow_backend(&mut f, 41000 + i, &ids4, lab))
            .collect();
        let expected: Vec<u32> = ids4.iter().chain(ids4.iter()).copied().collect();
        assert_eq!(picked, expected);
    });
}

#[test]
fn draining_and_down_backends_get_no_new_flows() {
    with_lab(|lab| {
        let (mut f, ids4, _) = Fixture::standard(lab.ifindex);
        f.set_backend_flags(ids4[0], BACKEND_F_VALID | BACKEND_F_DRAINING, 1);
        f.set_backend_flags(ids4[2], BACKEND_F_VALID | BACKEND_F_DOWN, 1);
        for i in 0..6 {
            assert_eq!(new_flow_backend(&mut f, 42000 + i, &ids4, lab), ids4[1]);
        }
        // Weight 0 means no new flows too.
        f.set_backend_flags(ids4[0], BACKEND_F_VALID, 0);
        f.set_backend_flags(ids4[2], BACKEND_F_VALID, 1);
        for i in 0..4 {
            assert_ne!(new_flow_backend(&mut f, 42100 + i, &ids4, lab), ids4[0]);
        }
    });
}

#[test]
fn least_conn_picks_the_least_loaded_backend() {
    with_lab(|lab| {
        let (mut f, ids4, _) = Fixture::standard(lab.ifindex);
        f.put_service(SVC4, v4(VIP4), Scheduler::LeastConn, &ids4);
        f.dp.set_backend_conns(ids4[0], 5).unwrap();
        f.dp.set_backend_conns(ids4[1], 1).unwrap();
        f.dp.set_backend_conns(ids4[2], 3).unwrap();
        assert_eq!(new_flow_backend(&mut f, 43000, &ids4, lab), ids4[1]);
        assert_eq!(
            f.dp.maps().backend_conns(ids4[1]).unwrap(),
            1,
            "a half-open flow does not count"
        );
        f.run(&Tcp::v4(CLIENT4, VIP4, 43000, 80, ACK).frame());
        assert_eq!(
            f.dp.maps().backend_conns(ids4[1]).unwrap(),
            2,
            "the established flow counts"
        );
        // Weighted: 5 connections at weight 10 are lighter than 2 at weight 1.
        f.set_backend_flags(ids4[0], BACKEND_F_VALID, 10);
        assert_eq!(new_flow_backend(&mut f, 43001, &ids4, lab), ids4[0]);
        // A draining backend is skipped even when idle.
        f.dp.set_backend_conns(ids4[2], 0).unwrap();
        f.set_backend_flags(ids4[2], BACKEND_F_VALID | BACKEND_F_DRAINING, 1);
        assert_ne!(new_flow_backend(&mut f, 43002, &ids4, lab), ids4[2]);
    });
}

/// A stand-in for a Maglev table: any assignment of table positions to backends exercises the
/// lookup (the real builder lives in `tables`).
fn spread_table(ids: &[u32], len: u32) -> Vec<u32> {
    (0..len)
        .map(|i| ids[(i as usize * 7 + i as usize / 3) % ids.len()])
        .collect()
}

#[test]
fn maglev_picks_the_table_entry_of_the_flow_hash() {
    with_lab(|lab| {
        let (mut f, ids4, _) = Fixture::standard(lab.ifindex);
        let table = spread_table(&ids4, TABLE_SIZE);
        f.put_service(SVC4, v4(VIP4), Scheduler::Maglev, &table);
        for sport in 44000..44020u16 {
            let key = flow_key(CLIENT4, VIP4, sport);
            let expected = table[(flow_hash(&key, HASH_SEED) % TABLE_SIZE) as usize];
            assert_eq!(
                new_flow_backend(&mut f, sport, &ids4, lab),
                expected,
                "sport {sport}"
            );
        }
        // An entry whose backend is down is skipped by probing the next positions.
        let key = flow_key(CLIENT4, VIP4, 44100);
        let pos = (flow_hash(&key, HASH_SEED) % TABLE_SIZE) as usize;
        let down = table[pos];
        f.set_backend_flags(down, BACKEND_F_VALID | BACKEND_F_DOWN, 1);
        let next_up = (1..TABLE_SIZE as usize)
            .map(|d| table[(pos + d) % table.len()])
            .find(|id| *id != down)
            .unwrap();
        assert_eq!(new_flow_backend(&mut f, 44100, &ids4, lab), next_up);
    });
}

/// A spoofed-ACK flood cannot fill the flow table: packets other than a SYN without a flow entry go
/// where the service's consistent hash says and leave no state, and that is stable (the same tuple
/// always reaches the same backend, whatever the round-robin cursor does).
#[test]
fn packets_without_state_follow_the_consistent_hash_and_create_none() {
    with_lab(|lab| {
        let (mut f, ids4, _) = Fixture::standard(lab.ifindex);
        for round in 0..2 {
            for sport in 45000..45050u16 {
                let ack = Tcp::v4(CLIENT4, VIP4, sport, 80, ACK).frame();
                let (verdict, out) = f.run(&ack);
                assert_eq!(verdict, XDP_TX, "counters: {}", f.nonzero_counters());
                let key = flow_key(CLIENT4, VIP4, sport);
                // The fixture's hash table is the service's list of three.
                let expected = ids4[(flow_hash(&key, HASH_SEED) % 3) as usize];
                assert_eq!(
                    f.backend_id_of(check_ipip(&out, &ack[ETH_HLEN..], lab).dst, &ids4),
                    expected,
                    "round {round}, sport {sport}"
                );
            }
        }
        assert_eq!(f.counter(Counter::FlowMissNonSyn), 100);
        assert_eq!(f.counter(Counter::FlowNew), 0);
        assert!(
            f.dp.maps().flows().unwrap().is_empty(),
            "no state from non-SYNs"
        );
        for id in &ids4 {
            assert_eq!(f.dp.maps().backend_conns(*id).unwrap(), 0);
        }
        let svc = f.dp.maps().service_stats(SVC4).unwrap();
        assert_eq!((svc.packets, svc.new_flows), (100, 0));
    });
}

/// Above `max_new_flows_per_cpu` in one second, SYNs are forwarded by consistent hash without a flow
/// entry (and their later packets follow them there, having no entry either).
#[test]
fn the_new_flow_guard_forwards_syns_above_the_rate_without_state() {
    with_lab(|lab| {
        let (mut f, ids4, _) = Fixture::standard(lab.ifindex);
        let cfg = LbConfig {
            src_v6: to_words(IpAddr::V6(SRC6)).0,
            src_v4: to_words(IpAddr::V4(SRC4)).0[0],
            hash_seed: HASH_SEED,
            max_new_flows_per_cpu: 5,
            ..Default::default()
        };
        f.dp.set_config(&cfg).unwrap();
        let mut bypassed = Vec::new();
        for sport in 46000..46030u16 {
            let before = f.counter(Counter::FlowGuardBypass);
            let syn = Tcp::v4(CLIENT4, VIP4, sport, 80, SYN).frame();
            let (verdict, out) = f.run(&syn);
            assert_eq!(verdict, XDP_TX);
            if f.counter(Counter::FlowGuardBypass) > before {
                let key = flow_key(CLIENT4, VIP4, sport);
                let expected = ids4[(flow_hash(&key, HASH_SEED) % 3) as usize];
                let got = f.backend_id_of(check_ipip(&out, &syn[ETH_HLEN..], lab).dst, &ids4);
                assert_eq!(got, expected, "a guarded SYN goes by consistent hash");
                bypassed.push((sport, got));
            }
        }
        // The test thread may run on either CPU, each with its own budget of 5.
        let flows = f.dp.maps().flows().unwrap().len();
        assert!((5..=10).contains(&flows), "{flows} flows recorded");
        assert_eq!(bypassed.len() + flows, 30);
        assert_eq!(f.counter(Counter::FlowNew) as usize, flows);
        let svc = f.dp.maps().service_stats(SVC4).unwrap();
        assert_eq!(svc.new_flows, 30, "guarded SYNs are still new flows");
        // The guarded connections' next packets find no entry and reach the same backend.
        for (sport, be) in bypassed {
            let ack = Tcp::v4(CLIENT4, VIP4, sport, 80, ACK).frame();
            let (_, out) = f.run(&ack);
            assert_eq!(
                f.backend_id_of(check_ipip(&out, &ack[ETH_HLEN..], lab).dst, &ids4),
                be
            );
        }
        // Guard off: every SYN is recorded again.
        f.dp.set_config(&LbConfig {
            max_new_flows_per_cpu: 0,
            ..cfg
        })
        .unwrap();
        for sport in 46100..46120u16 {
            f.run(&Tcp::v4(CLIENT4, VIP4, sport, 80, SYN).frame());
        }
        assert_eq!(f.dp.maps().flows().unwrap().len(), flows + 20);
    });
}

fn flow_key(src: Ipv4Addr, dst: Ipv4Addr, sport: u16) -> FlowKey {
    FlowKey {
        src: to_words(v4(src)).0,
        dst: to_words(v4(dst)).0,
        sport_be: sport.to_be(),
        dport_be: 80u16.to_be(),
        proto: IPPROTO_TCP,
        family: lb_common::AF_INET,
        _pad: [0; 2],
    }
}

// ---------------------------------------------------------------------------------------------
// Decapsulation (backend side)

/// Tunnel packets from the balancer's outer sources (`SRC4`, `SRC6`: in these prefixes) are accepted.
const ALLOWED_SRC: [&str; 2] = ["198.18.3.0/24", "2001:db8:3::/64"];

fn allow_decap_src(f: &mut Fixture, prefixes: &[&str]) {
    for p in prefixes {
        let prefix: SrcPrefix = p.parse().unwrap();
        f.dp.allow_decap_src(&prefix.trie_key()).unwrap();
    }
}

fn decap_fixture() -> Fixture {
    let mut f = Fixture::new(0);
    for a in [v4(backends4()[0]), v6(backends6()[0])] {
        let (addr, family) = to_words(a);
        f.dp.add_decap_addr(&DecapKey {
            addr,
            family,
            _pad: [0; 3],
        })
        .unwrap();
    }
    allow_decap_src(&mut f, &ALLOWED_SRC);
    f
}

#[test]
fn decap_drops_tunnel_packets_from_sources_outside_the_allow_list() {
    let mut f = decap_fixture();
    let inner4 = Tcp::v4(CLIENT4, VIP4, 45010, 80, SYN).frame();
    let inner6 = Tcp::v6(CLIENT6, VIP6, 45010, 80, SYN).frame();
    let outside4 = Ipv4Addr::new(198, 18, 4, 2);
    let outside6 = Ipv6Addr::new(0x2001, 0xdb8, 0x4, 0, 0, 0, 0, 2);
    for (name, frame) in [
        ("IPIP", encapsulate_v4(&inner4, outside4, backends4()[0])),
        ("ip6ip6", encapsulate_v6(&inner6, outside6, backends6()[0])),
        // The client itself may not inject packets "from" a client.
        (
            "IPIP from a client",
            encapsulate_v4(&inner4, CLIENT4, backends4()[0]),
        ),
    ] {
        let before = f.decap_counter(DecapCounter::DropSrcNotAllowed);
        let (verdict, _) = run_decap(&mut f, &frame);
        assert_eq!(verdict, XDP_DROP, "{name}");
        assert_eq!(
            f.decap_counter(DecapCounter::DropSrcNotAllowed),
            before + 1,
            "{name}: counted"
        );
    }
    assert_eq!(f.decap_counter(DecapCounter::DecapIpip), 0);
    assert_eq!(f.decap_counter(DecapCounter::DecapIp6ip6), 0);

    // The edges of the prefix: its first address is in, the one just before it is out.
    let (verdict, _) = run_decap(
        &mut f,
        &encapsulate_v4(&inner4, Ipv4Addr::new(198, 18, 3, 0), backends4()[0]),
    );
    assert_eq!(verdict, XDP_PASS, "198.18.3.0 is in 198.18.3.0/24");
    let (verdict, _) = run_decap(
        &mut f,
        &encapsulate_v4(&inner4, Ipv4Addr::new(198, 18, 2, 255), backends4()[0]),
    );
    assert_eq!(verdict, XDP_DROP, "198.18.2.255 is not");
    // An IPv4 prefix does not admit IPv6 sources whose first bytes look alike.
    let lookalike = Ipv6Addr::new(0xc612, 0x0302, 0, 0, 0, 0, 0, 0);
    let (verdict, _) = run_decap(&mut f, &encapsulate_v6(&inner6, lookalike, backends6()[0]));
    assert_eq!(verdict, XDP_DROP, "an IPv6 source starting 198.18.3.2");
}

#[test]
fn decap_with_every_source_allowed_accepts_any_source() {
    let mut f = decap_fixture();
    let any = SrcPolicy::from_flags(vec![], true).unwrap();
    for p in any.prefixes() {
        f.dp.allow_decap_src(&p.trie_key()).unwrap();
    }
    let inner4 = Tcp::v4(CLIENT4, VIP4, 45011, 80, SYN).frame();
    let inner6 = Tcp::v6(CLIENT6, VIP6, 45011, 80, SYN).frame();
    let outside6 = Ipv6Addr::new(0x2001, 0xdb8, 0x4, 0, 0, 0, 0, 2);
    let (v, out) = run_decap(&mut f, &encapsulate_v4(&inner4, CLIENT4, backends4()[0]));
    assert_eq!((v, out), (XDP_PASS, inner4));
    let (v, out) = run_decap(&mut f, &encapsulate_v6(&inner6, outside6, backends6()[0]));
    assert_eq!((v, out), (XDP_PASS, inner6));
}

fn run_decap(f: &mut Fixture, frame: &[u8]) -> (u32, Vec<u8>) {
    run_program(f.dp.decap_program(), frame, 0)
}

#[test]
fn decap_strips_ipip_and_ip6ip6_to_local_addresses() {
    let mut f = decap_fixture();
    let inner4 = Tcp::v4(CLIENT4, VIP4, 45000, 80, SYN).frame();
    let tunneled = encapsulate_v4(&inner4, SRC4, backends4()[0]);
    let (verdict, out) = run_decap(&mut f, &tunneled);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, inner4, "Ethernet + the inner packet");
    assert_eq!(f.decap_counter(DecapCounter::DecapIpip), 1);

    let inner6 = Tcp::v6(CLIENT6, VIP6, 45000, 80, SYN).frame();
    let tunneled = encapsulate_v6(&inner6, SRC6, backends6()[0]);
    let (verdict, out) = run_decap(&mut f, &tunneled);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, inner6);
    assert_eq!(f.decap_counter(DecapCounter::DecapIp6ip6), 1);

    let tagged = Tcp::v4(CLIENT4, VIP4, 45001, 80, SYN)
        .vlan(0x8100, 9)
        .frame();
    let tunneled = encapsulate_v4(&tagged, SRC4, backends4()[0]);
    let (verdict, out) = run_decap(&mut f, &tunneled);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        out, tagged,
        "the VLAN tag stays in front of the inner packet"
    );
    assert_eq!(f.decap_counter(DecapCounter::RxPackets), 3);
}

#[test]
fn decap_leaves_other_packets_alone() {
    let mut f = decap_fixture();
    let inner4 = Tcp::v4(CLIENT4, VIP4, 45002, 80, SYN).frame();
    let inner6 = Tcp::v6(CLIENT6, VIP6, 45002, 80, SYN).frame();
    let cases: Vec<(&str, Vec<u8>, DecapCounter)> = vec![
        (
            "IPIP to another host",
            encapsulate_v4(&inner4, SRC4, backends4()[1]),
            DecapCounter::PassNotLocal,
        ),
        (
            "ip6ip6 to another host",
            encapsulate_v6(&inner6, SRC6, backends6()[1]),
            DecapCounter::PassNotLocal,
        ),
        (
            "plain TCP",
            inner4.clone(),
            DecapCounter::PassNotEncapsulated,
        ),
        (
            "plain IPv6 TCP",
            inner6.clone(),
            DecapCounter::PassNotEncapsulated,
        ),
        ("ARP", arp_frame(), DecapCounter::PassNotEncapsulated),
        (
            "IPIP cut inside the inner header",
            encapsulate_v4(&inner4, SRC4, backends4()[0])[..ETH_HLEN + 20 + 10].to_vec(),
            DecapCounter::PassMalformed,
        ),
        (
            "IPIP carrying IPv6",
            encapsulate_v4(&inner6, SRC4, backends4()[0]),
            DecapCounter::PassMalformed,
        ),
    ];
    for (name, frame, counter) in &cases {
        let before = f.decap_counter(*counter);
        let (verdict, out) = run_decap(&mut f, frame);
        assert_eq!(verdict, XDP_PASS, "{name}");
        assert_eq!(&out, frame, "{name}: not modified");
        assert_eq!(
            f.decap_counter(*counter),
            before + 1,
            "{name}: counted as {}",
            counter.name()
        );
    }
}

#[test]
fn balancer_output_decapsulates_to_the_original_frame() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        for b in backends4() {
            let (addr, family) = to_words(v4(b));
            f.dp.add_decap_addr(&DecapKey {
                addr,
                family,
                _pad: [0; 3],
            })
            .unwrap();
        }
        allow_decap_src(&mut f, &ALLOWED_SRC);
        let syn = Tcp::v4(CLIENT4, VIP4, 46000, 80, SYN).frame();
        let (_, encapsulated) = f.run(&syn);
        let (verdict, out) = run_program(f.dp.decap_program(), &encapsulated, lab.ifindex);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            out[ETH_HLEN..],
            syn[ETH_HLEN..],
            "the backend sees the client's packet"
        );
    });
}

/// The verifier explores every path; a change that multiplies them (a branch on a value carried
/// across the scheduler, an inlined loop) shows up here long before the 1M-instruction limit.
#[test]
fn programs_verify_within_budget() {
    let opts = LoadOptions {
        capacity: tiny_capacity(),
        pin_dir: None,
        kernel_log: false,
        ..Default::default()
    };
    let mut dp = Dataplane::load(&opts).expect("load the data plane");
    for (name, prog) in [
        ("lb_balancer", dp.balancer_program().info()),
        ("lb_decap", dp.decap_program().info()),
    ] {
        let verified = prog
            .unwrap()
            .verified_instruction_count()
            .expect("kernel reports verified instructions");
        assert!(
            verified < 200_000,
            "{name}: {verified} instructions verified"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Persistence

#[test]
fn persistence_keeps_a_client_network_on_one_backend() {
    with_lab(|lab| {
        let (mut f, ids4, _) = Fixture::standard(lab.ifindex);
        let key = f.put_service(SVC4, v4(VIP4), Scheduler::RoundRobin, &ids4);
        let mut entry =
            f.dp.maps()
                .services()
                .unwrap()
                .into_iter()
                .find(|(k, _)| *k == key)
                .unwrap()
                .1;
        entry.persist_timeout_s = 60;
        entry.persist_prefix_len = 24;
        f.dp.put_service(&key, &entry).unwrap();

        let first = Tcp::v4(CLIENT4, VIP4, 47000, 80, SYN).frame();
        let (_, out) = f.run(&first);
        let sticky = f.backend_id_of(check_ipip(&out, &first[ETH_HLEN..], lab).dst, &ids4);
        // A SYN alone (spoofable) writes no persistence entry; the handshake's ACK does.
        let early = Tcp::v4(Ipv4Addr::new(198, 18, 0, 9), VIP4, 46999, 80, SYN).frame();
        let (_, out) = f.run(&early);
        assert_ne!(
            f.backend_id_of(check_ipip(&out, &early[ETH_HLEN..], lab).dst, &ids4),
            sticky,
            "before the handshake completes the client has no persistence entry"
        );
        assert_eq!(f.counter(Counter::PersistHit), 0);
        f.run(&Tcp::v4(CLIENT4, VIP4, 47000, 80, ACK).frame());
        // Same /24, new connections: round robin would move on, persistence does not.
        for (i, host) in [10u8, 77, 200].into_iter().enumerate() {
            let syn = Tcp::v4(
                Ipv4Addr::new(198, 18, 0, host),
                VIP4,
                47001 + i as u16,
                80,
                SYN,
            )
            .frame();
            let (_, out) = f.run(&syn);
            assert_eq!(
                f.backend_id_of(check_ipip(&out, &syn[ETH_HLEN..], lab).dst, &ids4),
                sticky
            );
        }
        assert_eq!(f.counter(Counter::PersistHit), 3);
        // Another /24 is scheduled normally (the cursor has moved on once).
        let other = Tcp::v4(Ipv4Addr::new(198, 18, 1, 10), VIP4, 47100, 80, SYN).frame();
        let (_, out) = f.run(&other);
        assert_ne!(
            f.backend_id_of(check_ipip(&out, &other[ETH_HLEN..], lab).dst, &ids4),
            sticky
        );
        // A draining backend keeps no persistent clients.
        f.set_backend_flags(sticky, BACKEND_F_VALID | BACKEND_F_DRAINING, 1);
        let again = Tcp::v4(CLIENT4, VIP4, 47200, 80, SYN).frame();
        let (_, out) = f.run(&again);
        assert_ne!(
            f.backend_id_of(check_ipip(&out, &again[ETH_HLEN..], lab).dst, &ids4),
            sticky
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Pinning and the read-only view of `lb status`

/// A private bpffs mounted on a temporary directory; unmounted and removed on drop.
struct BpffsMount {
    dir: std::path::PathBuf,
}

impl BpffsMount {
    fn new() -> BpffsMount {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-fixture-bpffs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mount = BpffsMount { dir };
        let target = std::ffi::CString::new(mount.dir.to_str().unwrap()).unwrap();
        let fstype = std::ffi::CString::new("bpf").unwrap();
        // SAFETY: valid C strings; no mount data.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount bpffs: {}", std::io::Error::last_os_error());
        mount
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.dir.to_str().unwrap_or_default()) {
            // SAFETY: valid C string.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn pinned_maps_are_readable_without_the_daemon() {
    let bpffs = BpffsMount::new();
    let pin_dir = bpffs.dir.join("lb");
    let opts = LoadOptions {
        capacity: tiny_capacity(),
        pin_dir: Some(pin_dir.clone()),
        kernel_log: false,
        ..Default::default()
    };
    let mut dp = Dataplane::load(&opts).expect("load with pins");
    let backend = BackendEntry {
        weight: 7,
        ..maps::backend_entry(3, v4(backends4()[0]))
    };
    dp.put_backend(5, &backend).unwrap();
    dp.write_table(TABLE_SIZE * 3 + 1, &[5, 5, 5]).unwrap();
    let vip = VipKey {
        addr: to_words(v4(VIP4)).0,
        port_be: 80u16.to_be(),
        proto: IPPROTO_TCP,
        family: backend.family,
    };
    let svc = ServiceEntry {
        id: 3,
        scheduler: Scheduler::Maglev as u32,
        table_offset: TABLE_SIZE * 3 + 1,
        table_len: 3,
        ..Default::default()
    };
    dp.put_service(&vip, &svc).unwrap();
    dp.set_backend_conns(5, 42).unwrap();

    let view = lb_userspace::dataplane::MapsView::open_pinned(&pin_dir).expect("open the pins");
    // The flow table is rated for whole buckets: 4,096 flows become 820 buckets of 5.
    assert_eq!(view.capacity(), tiny_capacity().as_built());
    assert_eq!(view.capacity().flow_table_size, 4100);
    assert_eq!(view.backend(5).unwrap(), backend);
    assert_eq!(view.backend_conns(5).unwrap(), 42);
    // Whole-array reads go through the arrays' mappings: the same values, up to the last valid
    // slot, and the pinned state adoption reads.
    let slots = view.backend_slots().unwrap();
    assert_eq!(slots.len(), 6, "slots 0..=5, 5 the last valid one");
    assert_eq!(
        (slots[5].id, slots[5].entry, slots[5].conns),
        (5, backend, 42)
    );
    assert!(
        slots[..5]
            .iter()
            .all(|s| s.entry.flags & BACKEND_F_VALID == 0 && s.conns == 0)
    );
    assert_eq!(view.all_backend_conns().unwrap()[5], 42);
    assert_eq!(
        view.pinned_state()
            .unwrap()
            .backends
            .into_iter()
            .collect::<Vec<_>>(),
        vec![(5, backend)]
    );
    assert_eq!(view.services().unwrap(), vec![(vip, svc)]);
    assert_eq!(view.table(&svc).unwrap(), vec![5, 5, 5]);
    assert_eq!(view.counters().unwrap().len(), Counter::COUNT as usize);

    // A second load (a restarted daemon) adopts what it finds: the same maps, contents kept,
    // whatever capacity it is given.
    drop(view);
    drop(dp);
    let bigger = LoadOptions {
        capacity: Capacity {
            max_services: tiny_capacity().max_services * 2,
            // LB_BE_STATS's per-CPU stride stays the pinned maps' max backends.
            max_backends: tiny_capacity().max_backends * 2,
            ..tiny_capacity()
        },
        ..opts.clone()
    };
    let dp = Dataplane::load(&bigger).expect("adopt the pins of an earlier run");
    assert!(dp.adopted());
    assert_eq!(
        dp.maps().capacity(),
        tiny_capacity().as_built(),
        "the pinned maps' sizes"
    );
    assert_eq!(dp.maps().backend_conns(5).unwrap(), 42, "counters kept");
    assert_eq!(dp.maps().services().unwrap(), vec![(vip, svc)]);
    let pinned = dp.maps().pinned_state().expect("read what the pins hold");
    assert_eq!(pinned.services.len(), 1);
    assert_eq!(pinned.services[0].table, vec![5, 5, 5]);
    assert_eq!(pinned.backends.keys().copied().collect::<Vec<_>>(), vec![5]);
    drop(dp);
    // Only some of the maps pinned: refused, naming the missing ones and the fix; nothing changed.
    let flows_pin = pin_dir.join(lb_common::maps::FLOWS);
    let kept = pin_dir.join("kept-flows");
    std::fs::rename(&flows_pin, &kept).expect("move a pin aside");
    let err = Dataplane::load(&opts)
        .err()
        .expect("an incomplete set of pins");
    assert!(
        matches!(err, DataplaneError::PinsIncomplete { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(lb_common::maps::FLOWS) && err.to_string().contains("lb detach"),
        "{err}"
    );
    std::fs::rename(&kept, &flows_pin).expect("put the pin back");
    let view = lb_userspace::dataplane::MapsView::open_pinned(&pin_dir).expect("pins kept");
    assert_eq!(
        view.backend_conns(5).unwrap(),
        42,
        "the old maps are untouched"
    );
    drop(view);
    // Maps of another layout are refused, with what to do.
    assert_eq!(
        lb_userspace::dataplane::pinned_layout_version(&pin_dir),
        Some(LAYOUT_VERSION)
    );
    let set_pinned_layout = |version: u32| {
        let data = aya::maps::MapData::from_pin(pin_dir.join(lb_common::maps::CONFIG)).unwrap();
        let map = aya::maps::Map::from_map_data(data).unwrap();
        let mut config: aya::maps::Array<_, LbConfig> = aya::maps::Array::try_from(map).unwrap();
        let old = config.get(&0, 0).unwrap();
        config
            .set(
                0,
                LbConfig {
                    layout_version: version,
                    ..old
                },
                0,
            )
            .unwrap();
    };
    set_pinned_layout(LAYOUT_VERSION + 1);
    let err = Dataplane::load(&opts)
        .err()
        .expect("pins of another layout");
    assert!(
        matches!(err, DataplaneError::LayoutMismatch { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("layout version {}", LAYOUT_VERSION + 1))
            && msg.contains("Drain")
            && msg.contains("lb detach"),
        "{msg}"
    );
    // Readers (`lb status`, scrapes) refuse them too, naming both versions, instead of misreading.
    let err = lb_userspace::dataplane::MapsView::open_pinned(&pin_dir)
        .err()
        .expect("a view of pins of another layout");
    assert!(
        matches!(err, DataplaneError::OtherLayout { found, expected, .. }
            if found == LAYOUT_VERSION + 1 && expected == LAYOUT_VERSION),
        "{err}"
    );
    set_pinned_layout(LAYOUT_VERSION);
    // `lb decap` (nothing of it outlives its process) replaces stale pins.
    let replace = LoadOptions {
        existing_pins: ExistingPins::Remove,
        ..opts
    };
    let dp = Dataplane::load(&replace).expect("load over stale pins");
    assert_eq!(
        dp.maps().backend_conns(5).unwrap(),
        0,
        "fresh maps, not the old ones"
    );
    dp.remove_pins();
    assert!(!pin_dir.exists(), "pins and the empty directory are gone");
}

#[test]
fn helpful_errors_for_missing_pins_and_bpffs() {
    let missing = std::env::temp_dir().join("lb-fixture-no-such-pins");
    let err = lb_userspace::dataplane::MapsView::open_pinned(&missing)
        .err()
        .expect("nothing is pinned there");
    assert!(
        err.to_string().contains("no balancer is pinned at")
            && err.to_string().contains("is `lb run` running"),
        "{err}"
    );

    let not_bpffs =
        std::env::temp_dir().join(format!("lb-fixture-not-bpffs-{}", std::process::id()));
    let opts = LoadOptions {
        capacity: tiny_capacity(),
        pin_dir: Some(not_bpffs.clone()),
        kernel_log: false,
        ..Default::default()
    };
    let err = Dataplane::load(&opts).err().expect("tmp is no bpffs");
    assert!(
        err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
        "{err}"
    );
    assert!(
        !not_bpffs.exists(),
        "nothing created on the wrong filesystem"
    );

    let bad = LoadOptions {
        capacity: Capacity {
            table_size: 10,
            ..tiny_capacity()
        },
        pin_dir: None,
        kernel_log: false,
        ..Default::default()
    };
    assert!(matches!(
        Dataplane::load(&bad),
        Err(lb_userspace::dataplane::DataplaneError::Capacity(_))
    ));
}

#[test]
fn kernel_log_forwarding_starts_and_stops() {
    let opts = LoadOptions {
        capacity: tiny_capacity(),
        pin_dir: None,
        kernel_log: true,
        ..Default::default()
    };
    let dp = Dataplane::load(&opts).expect("load with kernel logs");
    drop(dp);
}

#[test]
fn attach_and_detach_on_a_real_interface() {
    use lb_userspace::dataplane::{AttachMode, AttachedMode};
    with_lab(|lab| {
        lab.ip(&["link", "set", "lbt0", "down"]);
        for path in [
            "/proc/sys/net/ipv4/conf/lbt0/forwarding",
            "/proc/sys/net/ipv6/conf/lbt0/forwarding",
        ] {
            std::fs::write(path, "0").unwrap();
        }
        let opts = LoadOptions {
            capacity: tiny_capacity(),
            pin_dir: None,
            kernel_log: false,
            ..Default::default()
        };
        let mut dp = Dataplane::load(&opts).unwrap();
        assert_eq!(
            dp.attach_balancer("lbt0", AttachMode::Generic).unwrap(),
            AttachedMode::Generic
        );
        assert!(
            lab.ip(&["link", "show", "lbt0"]).contains("xdpgeneric"),
            "attached in generic mode"
        );
        for path in [
            "/proc/sys/net/ipv4/conf/lbt0/forwarding",
            "/proc/sys/net/ipv6/conf/lbt0/forwarding",
        ] {
            assert_eq!(
                std::fs::read_to_string(path).unwrap().trim(),
                "1",
                "{path}: attach turns forwarding on"
            );
        }
        // veth supports native XDP, so Auto takes it.
        assert_eq!(
            dp.attach_decap("lbt1", AttachMode::Auto).unwrap(),
            AttachedMode::Native
        );
        assert!(
            lab.ip(&["link", "show", "lbt1"]).contains("xdp"),
            "decap attached"
        );
        drop(dp);
        assert!(
            !lab.ip(&["link", "show", "lbt0"]).contains("xdp"),
            "detached when the data plane drops"
        );
        assert!(
            !lab.ip(&["link", "show", "lbt1"]).contains("xdp"),
            "detached when the data plane drops"
        );
    });
}

#[test]
fn attach_reports_unknown_interfaces() {
    let opts = LoadOptions {
        capacity: tiny_capacity(),
        pin_dir: None,
        kernel_log: false,
        ..Default::default()
    };
    let mut dp = Dataplane::load(&opts).unwrap();
    let err = dp
        .attach_balancer("lb-no-such-if0", lb_userspace::dataplane::AttachMode::Auto)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            lb_userspace::dataplane::DataplaneError::NoSuchInterface { .. }
        ),
        "{err}"
    );
}

#[test]
fn writes_past_the_schedule_pool_are_refused() {
    let opts = LoadOptions {
        capacity: tiny_capacity(),
        pin_dir: None,
        kernel_log: false,
        ..Default::default()
    };
    let mut dp = Dataplane::load(&opts).unwrap();
    let entries = tiny_capacity().schedule_entries();
    assert!(dp.write_table(entries - 2, &[1, 2]).is_ok());
    assert!(dp.write_table(entries - 1, &[1, 2]).is_err());
    let vip = VipKey {
        addr: to_words(v4(VIP4)).0,
        port_be: 80u16.to_be(),
        proto: IPPROTO_TCP,
        family: lb_common::AF_INET,
    };
    let svc = ServiceEntry {
        id: 0,
        table_offset: entries - 1,
        table_len: 2,
        ..Default::default()
    };
    assert!(
        dp.put_service(&vip, &svc).is_err(),
        "a service may not point past the pool"
    );
}

/// A short fuzz run (the 1M-frame one is `cargo xtask test`'s last step, `cargo xtask fuzz`): no
/// bad verdict, output or count among 20,000 mutated and random frames.
#[test]
fn fuzzing_finds_no_misforward_and_every_frame_is_counted() {
    let report = with_lab(|lab| lb_tests::xdp::fuzz::run(lab, 0xf022, 0, 20_000)).unwrap();
    assert!(report.ok(), "{}", report.render());
    let forwarded: u64 = report
        .outcomes
        .iter()
        .filter(|(k, _)| k.contains("encapsulated"))
        .map(|(_, v)| v)
        .sum();
    assert!(
        forwarded > 1000 && report.outcomes.len() >= 4,
        "the frames reach every verdict:\n{}",
        report.render()
    );
}
