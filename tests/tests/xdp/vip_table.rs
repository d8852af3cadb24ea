//! The direct-mapped VIP table (`LB_VIP_TABLE`): a service is read from its slot; a slot being
//! rewritten (odd sequence number) is never used; a VIP whose slot another holds is served from
//! `LB_SERVICES`; a deleted VIP leaves its slot at once, and a VIP sharing the slot moves in.

use aya::maps::{Array, MapData};
use lb_common::{
    VipSlot,
    service::{VIP_TABLE_SLOTS, vip_slot},
};

use super::*;

fn key_of(a: Ipv4Addr) -> VipKey {
    VipKey {
        addr: to_words(v4(a)).0,
        port_be: 80u16.to_be(),
        proto: IPPROTO_TCP,
        family: lb_common::AF_INET,
    }
}

/// Another address of 198.18.0.0/15 whose port-80 VIP has `a`'s slot.
fn sharing_a_slot_with(a: Ipv4Addr) -> Ipv4Addr {
    let want = vip_slot(&key_of(a));
    (0..1u32 << 17)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i))
        .find(|b| *b != a && vip_slot(&key_of(*b)) == want)
        .expect("2^17 addresses over 2^12 slots: one shares the slot")
}

#[test]
fn a_service_is_read_from_its_slot_unless_the_slot_is_being_written() {
    let bpffs = BpffsMount::new();
    let pin_dir = bpffs.dir.join("lb");
    with_lab(|lab| {
        let (mut f, _, _) =
            Fixture::standard_in(Fixture::pinned(lab.ifindex, Some(pin_dir.clone())));
        let key = key_of(VIP4);
        let slot = vip_slot(&key);
        assert!(slot < VIP_TABLE_SLOTS);
        let held = f.dp.maps().vip_slot(slot).unwrap();
        let (_, entry) =
            f.dp.maps()
                .services()
                .unwrap()
                .into_iter()
                .find(|(k, _)| *k == key)
                .expect("VIP4's service");
        assert_eq!((held.key, held.entry), (key, entry), "the slot holds VIP4");
        assert_eq!(held.seq & 1, 0, "a finished write leaves the sequence even");

        // Another process (as a second daemon would) rewrites the slot: the same key with an
        // entry of no usable backend. The program uses the slot, not LB_SERVICES: it drops.
        let data = MapData::from_pin(pin_dir.join(lb_common::maps::VIP_TABLE)).unwrap();
        let mut table: Array<MapData, VipSlot> =
            Array::try_from(aya::maps::Map::Array(data)).unwrap();
        let empty = ServiceEntry {
            table_len: 0,
            hash_len: 0,
            ..entry
        };
        let syn = || Tcp::v4(CLIENT4, VIP4, 42000, 80, SYN).frame();
        table
            .set(
                slot,
                VipSlot {
                    seq: held.seq + 2,
                    key,
                    entry: empty,
                },
                0,
            )
            .unwrap();
        let drops = f.counter(Counter::DropNoBackend);
        assert_eq!(f.run(&syn()).0, XDP_DROP, "{}", f.nonzero_counters());
        assert_eq!(f.counter(Counter::DropNoBackend), drops + 1);

        // The same content with an odd sequence (a write in progress): LB_SERVICES serves.
        table
            .set(
                slot,
                VipSlot {
                    seq: held.seq + 3,
                    key,
                    entry: empty,
                },
                0,
            )
            .unwrap();
        assert_eq!(f.run(&syn()).0, XDP_TX, "{}", f.nonzero_counters());

        // The daemon's next write of the service makes the slot right and even again.
        f.put_service(SVC4, IpAddr::V4(VIP4), Scheduler::RoundRobin, &f_ids(&f));
        let after = f.dp.maps().vip_slot(slot).unwrap();
        assert_eq!(after.seq & 1, 0);
        assert!(
            after.seq > held.seq + 3,
            "{} after {}",
            after.seq,
            held.seq + 3
        );
        assert_eq!((after.key, after.entry.table_len), (key, entry.table_len));
        assert_eq!(f.run(&syn()).0, XDP_TX);
    });
}

/// The backend ids VIP4's service uses (from its table).
fn f_ids(f: &Fixture) -> Vec<u32> {
    let key = key_of(VIP4);
    let (_, entry) =
        f.dp.maps()
            .services()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == key)
            .expect("VIP4's service");
    let mut ids = f.dp.maps().table(&entry).unwrap();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[test]
fn vips_sharing_a_slot_are_both_served_and_a_deleted_vip_leaves_its_slot() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        let other = sharing_a_slot_with(VIP4);
        let slot = vip_slot(&key_of(VIP4));
        let ids = f.add_backends(7, &backends4().map(IpAddr::V4));
        let other_key = f.put_service(7, v4(other), Scheduler::RoundRobin, &ids);
        assert_eq!(
            f.dp.maps().vip_slot(slot).unwrap().key,
            key_of(VIP4),
            "first come"
        );
        let syn_vip = || Tcp::v4(CLIENT4, VIP4, 43000, 80, SYN).frame();
        let syn_other = || Tcp::v4(CLIENT4, other, 43001, 80, SYN).frame();
        assert_eq!(f.run(&syn_other()).0, XDP_TX, "served from LB_SERVICES");
        assert_eq!(f.run(&syn_vip()).0, XDP_TX);

        // VIP4 leaves: its packets are no longer balanced, and the other VIP moves into the slot.
        f.dp.delete_service(&key_of(VIP4)).unwrap();
        let held = f.dp.maps().vip_slot(slot).unwrap();
        assert_eq!(held.key, other_key, "the VIP sharing the slot moved in");
        assert_eq!(held.seq & 1, 0);
        assert_eq!(f.run(&syn_vip()).0, XDP_PASS, "{}", f.nonzero_counters());
        assert_eq!(f.run(&syn_other()).0, XDP_TX);

        // The other leaves too: the slot is empty.
        f.dp.delete_service(&other_key).unwrap();
        assert_eq!(f.dp.maps().vip_slot(slot).unwrap().key.family, 0);
        assert_eq!(f.run(&syn_other()).0, XDP_PASS);
    });
}
