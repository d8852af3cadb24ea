//! The VIP-address filter: TCP to an address that is no VIP passes before any lookup; every VIP
//! address keeps its bit, also when another address that shares it leaves.

use lb_common::service::vip_filter_bit;

use super::*;

fn bit_of(a: Ipv4Addr) -> u32 {
    vip_filter_bit(&to_words(v4(a)).0, lb_common::AF_INET)
}

/// Another address of 198.18.0.0/15 whose filter bit is `a`'s.
fn sharing_a_bit_with(a: Ipv4Addr) -> Ipv4Addr {
    let want = bit_of(a);
    (0..1u32 << 17)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i))
        .find(|b| *b != a && bit_of(*b) == want)
        .expect("2^17 addresses over 2^16 bits: one shares the bit")
}

#[test]
fn an_address_that_leaves_clears_only_the_bits_no_other_vip_needs() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        let other = sharing_a_bit_with(VIP4);
        let ids = f.add_backends(7, &backends4().map(IpAddr::V4));
        let other_key = f.put_service(7, v4(other), Scheduler::RoundRobin, &ids);
        let syn_vip = || Tcp::v4(CLIENT4, VIP4, 41000, 80, SYN).frame();
        let syn_other = || Tcp::v4(CLIENT4, other, 41001, 80, SYN).frame();
        assert_eq!(f.run(&syn_other()).0, XDP_TX);

        // The other address leaves: VIP4's bit (the same) must stay set.
        f.dp.delete_service(&other_key).unwrap();
        assert_eq!(f.run(&syn_vip()).0, XDP_TX, "VIP4 still balanced");
        let passed = f.counter(Counter::PassNotVip);
        assert_eq!(f.run(&syn_other()).0, XDP_PASS, "no longer a VIP: passed");
        assert_eq!(f.counter(Counter::PassNotVip), passed + 1);

        // VIP4 leaves too: its bit is cleared, and TCP to it passes like to any address.
        let vip4_key = VipKey {
            addr: to_words(v4(VIP4)).0,
            port_be: 80u16.to_be(),
            proto: IPPROTO_TCP,
            family: lb_common::AF_INET,
        };
        f.dp.delete_service(&vip4_key).unwrap();
        let word = f.dp.maps().vip_filter_word(bit_of(VIP4) >> 6).unwrap();
        assert_eq!(word & (1 << (bit_of(VIP4) & 63)), 0, "the bit is cleared");
        assert_eq!(f.run(&syn_vip()).0, XDP_PASS);
    });
}
