//! The set-associative flow table: what it holds at its rated capacity, what it evicts beyond,
//! and how the sweeper frees a way.

use lb_common::{
    FlowEntry,
    flow::{FLOW_WAYS, flow_buckets},
};

use super::*;

/// The standard fixture on a flow table rated for `flows` flows, pinned in `pin_dir` if given.
fn fixture_in(
    ifindex: u32,
    flows: u32,
    pin_dir: Option<std::path::PathBuf>,
) -> (Fixture, Vec<u32>) {
    let capacity = Capacity {
        flow_table_size: flows,
        ..tiny_capacity()
    };
    let (f, ids4, _) = Fixture::standard_in(Fixture::load(ifindex, pin_dir, capacity));
    (f, ids4)
}

fn fixture(ifindex: u32, flows: u32) -> (Fixture, Vec<u32>) {
    fixture_in(ifindex, flows, None)
}

fn syn(sport: u16) -> Vec<u8> {
    Tcp::v4(CLIENT4, VIP4, sport, 80, SYN).frame()
}

fn ack(sport: u16) -> Vec<u8> {
    Tcp::v4(CLIENT4, VIP4, sport, 80, ACK).frame()
}

fn key(sport: u16) -> FlowKey {
    FlowKey {
        src: to_words(v4(CLIENT4)).0,
        dst: to_words(v4(VIP4)).0,
        sport_be: sport.to_be(),
        dport_be: 80u16.to_be(),
        proto: IPPROTO_TCP,
        family: lb_common::AF_INET,
        _pad: [0; 2],
    }
}

/// The outer destination of an encapsulated frame.
fn backend_of(out: &[u8]) -> [u8; 4] {
    out[ETH_HLEN + 16..ETH_HLEN + 20].try_into().unwrap()
}

#[test]
fn a_table_at_its_rated_capacity_keeps_every_flow_on_its_backend() {
    with_lab(|lab| {
        const FLOWS: u16 = 1000;
        let (mut f, _) = fixture(lab.ifindex, u32::from(FLOWS));
        let mut first = Vec::new();
        for sport in 20_000..20_000 + FLOWS {
            let (verdict, out) = f.run(&syn(sport));
            assert_eq!(verdict, XDP_TX);
            first.push(backend_of(&out));
        }
        assert_eq!(f.counter(Counter::FlowNew), u64::from(FLOWS));
        assert_eq!(
            f.counter(Counter::FlowEvicted),
            0,
            "no flow evicted below capacity"
        );
        assert_eq!(f.dp.maps().flows().unwrap().len(), usize::from(FLOWS));
        assert_eq!(f.dp.maps().flow_count().unwrap(), usize::from(FLOWS));
        // Round robin would send a new flow elsewhere: every ACK finds its flow.
        for (i, sport) in (20_000..20_000 + FLOWS).enumerate() {
            let (verdict, out) = f.run(&ack(sport));
            assert_eq!(verdict, XDP_TX);
            assert_eq!(
                backend_of(&out),
                first[i],
                "flow {sport} stayed on its backend"
            );
        }
        assert_eq!(f.counter(Counter::FlowHit), u64::from(FLOWS));
        assert_eq!(f.counter(Counter::FlowMissNonSyn), 0);
    });
}

#[test]
fn a_full_bucket_pair_gives_up_its_oldest_flow_and_that_flows_unit() {
    with_lab(|lab| {
        // Rated for 5 flows: one bucket, so every flow's two buckets are the same 8 ways.
        let (mut f, ids4) = fixture(lab.ifindex, 5);
        assert_eq!(flow_buckets(5), 1);
        let ways = FLOW_WAYS as u16;
        for sport in 30_000..30_000 + ways {
            f.run(&syn(sport));
            f.run(&ack(sport));
        }
        let held = |f: &Fixture| -> u64 {
            ids4.iter()
                .map(|id| f.dp.maps().backend_conns(*id).unwrap())
                .sum()
        };
        assert_eq!(
            held(&f),
            u64::from(ways),
            "every established flow holds a unit"
        );
        assert_eq!(f.counter(Counter::FlowEvicted), 0);

        // All ways were touched in the same second: the first way (the first flow) goes.
        let (verdict, _) = f.run(&syn(30_000 + ways));
        assert_eq!(verdict, XDP_TX);
        assert_eq!(f.counter(Counter::FlowEvicted), 1);
        let flows = f.dp.maps().flows().unwrap();
        assert_eq!(flows.len(), FLOW_WAYS);
        assert!(
            flows.iter().all(|(k, _)| *k != key(30_000)),
            "the oldest flow is gone"
        );
        assert!(
            flows.iter().any(|(k, _)| *k == key(30_000 + ways)),
            "the new one is in"
        );
        assert_eq!(
            held(&f),
            u64::from(ways) - 1,
            "the evicted flow's unit was returned"
        );

        // Its next packet has no state: forwarded by the consistent hash, creating none.
        let (verdict, _) = f.run(&ack(30_000));
        assert_eq!(verdict, XDP_TX);
        assert_eq!(f.counter(Counter::FlowMissNonSyn), 1);
    });
}

#[test]
fn a_sweep_frees_a_way_only_if_the_flow_was_not_touched_since_it_was_read() {
    let bpffs = BpffsMount::new();
    let pin_dir = bpffs.dir.join("lb");
    with_lab(|lab| {
        let (mut f, _) = fixture_in(lab.ifindex, 100, Some(pin_dir.clone()));
        // The sweeper's own view of the pins, as `lb run` opens it for a sweep.
        let mut sweep =
            lb_userspace::dataplane::MapsView::open_pinned_for_sweeps(&pin_dir).unwrap();
        f.run(&syn(40_000));
        f.run(&syn(40_001));
        let flows = f.dp.maps().flows().unwrap();
        let (k, seen) = *flows.iter().find(|(k, _)| *k == key(40_000)).unwrap();

        let stale = FlowEntry {
            last_seen_ns: seen.last_seen_ns.wrapping_sub(1),
            ..seen
        };
        assert!(
            !sweep.delete_flow(&k, &stale).unwrap(),
            "touched since: kept"
        );
        assert_eq!(f.dp.maps().flow_count().unwrap(), 2);
        assert!(sweep.delete_flow(&k, &seen).unwrap());
        assert!(!sweep.delete_flow(&k, &seen).unwrap(), "already gone");
        assert_eq!(f.dp.maps().flow_count().unwrap(), 1);

        // The freed way takes the next new flow; the other flow is untouched.
        f.run(&syn(40_000));
        assert_eq!(f.dp.maps().flow_count().unwrap(), 2);
        assert_eq!(f.counter(Counter::FlowEvicted), 0);
        assert_eq!(f.counter(Counter::FlowNew), 3);
    });
}
