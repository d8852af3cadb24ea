//! ICMP at the VIP addresses: echo replies, too-big answers and steering, and no unbalanced packet
//! to a VIP address ever passed to the (forwarding) kernel.

use super::*;

const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 77);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x77);

/// An IPv4 ICMP frame (the LB's MAC as destination) with a correct ICMP checksum.
fn icmp4(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut msg = vec![kind, code, 0, 0];
    msg.extend(rest);
    msg.extend(body);
    let c = checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    // A UDP-shaped frame of the right length, its L4 replaced by the ICMP message.
    let mut f = Tcp::v4(src, dst, 0, 0, 0)
        .protocol(1)
        .payload(msg.len() - 8)
        .frame();
    f.truncate(ETH_HLEN + 20);
    f.extend(msg);
    f
}

fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> Vec<u8> {
    let mut p = src.octets().to_vec();
    p.extend(dst.octets());
    p.extend((msg.len() as u32).to_be_bytes());
    p.extend([0, 0, 0, 58]);
    p.extend(msg);
    p
}

fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut msg = vec![kind, code, 0, 0];
    msg.extend(rest);
    msg.extend(body);
    let c = checksum(&pseudo6(src, dst, &msg));
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Tcp::v6(src, dst, 0, 0, 0)
        .protocol(58)
        .payload(msg.len() - 8)
        .frame();
    f.truncate(ETH_HLEN + 40);
    f.extend(msg);
    f
}

/// Sets DF on an IPv4 frame and fixes its header checksum.
fn with_df(mut f: Vec<u8>) -> Vec<u8> {
    f[ETH_HLEN + 6] |= 0x40;
    f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&f[ETH_HLEN..ETH_HLEN + 20]);
    f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
    f
}

fn assert_macs_swapped(out: &[u8], input: &[u8]) {
    assert_eq!(out[0..6], input[6..12], "back to the sender's MAC");
    assert_eq!(out[6..12], input[0..6], "from the MAC it was sent to");
}

#[test]
fn unbalanced_packets_to_a_vip_address_are_dropped() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("UDP", Tcp::v4(CLIENT4, VIP4, 1, 80, 0).protocol(17).frame()),
            (
                "TCP to an unconfigured port",
                Tcp::v4(CLIENT4, VIP4, 1, 443, SYN).frame(),
            ),
            (
                "IPv6 TCP to an unconfigured port",
                Tcp::v6(CLIENT6, VIP6, 1, 443, SYN).frame(),
            ),
            (
                "ICMP destination unreachable (port)",
                icmp4(CLIENT4, VIP4, 3, 3, [0; 4], &[0; 28]),
            ),
            (
                "ICMP echo reply",
                icmp4(CLIENT4, VIP4, 0, 0, [0; 4], &[0; 8]),
            ),
            (
                "ICMPv6 destination unreachable",
                icmp6(CLIENT6, VIP6, 1, 4, [0; 4], &[0; 48]),
            ),
            (
                "IPv6 UDP",
                Tcp::v6(CLIENT6, VIP6, 1, 80, 0).protocol(17).frame(),
            ),
            (
                "IPv4 fragment",
                Tcp::v4(CLIENT4, VIP4, 1, 80, SYN).fragment(true, 0).frame(),
            ),
            (
                "IPv6 hop-by-hop",
                Tcp::v6(CLIENT6, VIP6, 1, 80, SYN).hop_by_hop().frame(),
            ),
            (
                "truncated TCP header",
                Tcp::v4(CLIENT4, VIP4, 1, 80, SYN).frame()[..ETH_HLEN + 30].to_vec(),
            ),
            (
                "frag-needed quoting no VIP flow",
                icmp4(
                    ROUTER4,
                    VIP4,
                    3,
                    4,
                    [0, 0, 5, 0],
                    &Tcp::v4(VIP4, CLIENT4, 443, 1, ACK).frame()[ETH_HLEN..ETH_HLEN + 28],
                ),
            ),
        ];
        for (i, (name, frame)) in cases.iter().enumerate() {
            let (verdict, _) = f.run(frame);
            assert_eq!(
                verdict, XDP_DROP,
                "{name}: dropped, not passed to a forwarding kernel"
            );
            assert_eq!(
                f.counter(Counter::DropVipUnbalanced),
                i as u64 + 1,
                "{name}: counted ({})",
                f.nonzero_counters()
            );
        }
        for c in [
            Counter::PassNotTcp,
            Counter::PassNotVip,
            Counter::PassFragment,
            Counter::PassMalformed,
        ] {
            assert_eq!(f.counter(c), 0, "{} not counted", c.name());
        }
        // Another address of the VIP prefix is no VIP: passed as before.
        let other = Tcp::v4(CLIENT4, Ipv4Addr::new(198, 18, 100, 9), 1, 80, 0)
            .protocol(17)
            .frame();
        assert_eq!(f.run(&other).0, XDP_PASS);
    });
}

#[test]
fn echo_request_to_a_vip_is_answered_v4() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        let req = icmp4(
            CLIENT4,
            VIP4,
            8,
            0,
            [0x12, 0x34, 0, 1],
            b"ping payload 12345678",
        );
        let (verdict, out) = f.run(&req);
        assert_eq!(verdict, XDP_TX, "{}", f.nonzero_counters());
        assert_eq!(out.len(), req.len());
        assert_macs_swapped(&out, &req);
        let ip = &out[ETH_HLEN..ETH_HLEN + 20];
        assert_eq!(ip[12..16], VIP4.octets(), "from the VIP");
        assert_eq!(ip[16..20], CLIENT4.octets(), "to the client");
        assert_eq!(checksum(ip), 0, "IPv4 header checksum");
        let icmp = &out[ETH_HLEN + 20..];
        assert_eq!(icmp[0], 0, "echo reply");
        assert_eq!(
            icmp[4..],
            req[ETH_HLEN + 24..],
            "id, sequence and data echoed"
        );
        assert_eq!(checksum(icmp), 0, "ICMP checksum");
        assert_eq!(f.counter(Counter::IcmpEchoReplied), 1);
    });
}

#[test]
fn echo_request_to_a_vip_is_answered_v6() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        let req = icmp6(CLIENT6, VIP6, 128, 0, [0x12, 0x34, 0, 1], b"ping6 payload");
        let (verdict, out) = f.run(&req);
        assert_eq!(verdict, XDP_TX, "{}", f.nonzero_counters());
        assert_macs_swapped(&out, &req);
        let ip = &out[ETH_HLEN..ETH_HLEN + 40];
        assert_eq!(ip[8..24], VIP6.octets(), "from the VIP");
        assert_eq!(ip[24..40], CLIENT6.octets(), "to the client");
        let icmp = &out[ETH_HLEN + 40..];
        assert_eq!(icmp[0], 129, "echo reply");
        assert_eq!(
            checksum(&pseudo6(VIP6, CLIENT6, icmp)),
            0,
            "ICMPv6 checksum"
        );
        assert_eq!(f.counter(Counter::IcmpEchoReplied), 1);
    });
}

#[test]
fn too_long_packet_with_df_gets_frag_needed_from_the_vip() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        // 1500 bytes of IP: 20 more do not fit the 1500-byte route toward the backend.
        let big = with_df(Tcp::v4(CLIENT4, VIP4, 40020, 80, ACK).payload(1460).frame());
        let (verdict, out) = f.run(&big);
        assert_eq!(verdict, XDP_TX, "{}", f.nonzero_counters());
        assert_eq!(
            out.len(),
            ETH_HLEN + 20 + 8 + 128,
            "IP + ICMP + 128 quoted bytes"
        );
        assert_macs_swapped(&out, &big);
        let ip = &out[ETH_HLEN..ETH_HLEN + 20];
        assert_eq!(ip[9], 1, "ICMP");
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 156, "total length");
        assert_eq!(ip[12..16], VIP4.octets(), "from the VIP");
        assert_eq!(ip[16..20], CLIENT4.octets(), "to the client");
        assert_eq!(checksum(ip), 0, "IPv4 header checksum");
        let icmp = &out[ETH_HLEN + 20..];
        assert_eq!(
            icmp[0..2],
            [3, 4],
            "destination unreachable, fragmentation needed"
        );
        assert_eq!(
            u16::from_be_bytes([icmp[6], icmp[7]]),
            1480,
            "MTU = 1500 - 20"
        );
        assert_eq!(
            icmp[8..],
            big[ETH_HLEN..ETH_HLEN + 128],
            "quotes the packet's start"
        );
        assert_eq!(checksum(icmp), 0, "ICMP checksum");
        assert_eq!(f.counter(Counter::IcmpTooBigSent), 1);
        assert_eq!(f.counter(Counter::DropMtu), 0);
        // Without DF: dropped, no ICMP (the LB cannot fragment).
        let no_df = Tcp::v4(CLIENT4, VIP4, 40021, 80, ACK).payload(1460).frame();
        assert_eq!(f.run(&no_df).0, XDP_DROP);
        assert_eq!(f.counter(Counter::DropMtu), 1);
        assert_eq!(f.counter(Counter::IcmpTooBigSent), 1);
    });
}

#[test]
fn too_long_ipv6_packet_gets_packet_too_big_from_the_vip() {
    with_lab(|lab| {
        let (mut f, _, _) = Fixture::standard(lab.ifindex);
        let big = Tcp::v6(CLIENT6, VIP6, 40022, 80, ACK).payload(1440).frame();
        let (verdict, out) = f.run(&big);
        assert_eq!(verdict, XDP_TX, "{}", f.nonzero_counters());
        assert_eq!(out.len(), ETH_HLEN + 40 + 8 + 128);
        assert_macs_swapped(&out, &big);
        let ip = &out[ETH_HLEN..ETH_HLEN + 40];
        assert_eq!(ip[6], 58, "ICMPv6");
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 136, "payload length");
        assert_eq!(ip[8..24], VIP6.octets(), "from the VIP");
        assert_eq!(ip[24..40], CLIENT6.octets(), "to the client");
        let icmp = &out[ETH_HLEN + 40..];
        assert_eq!(icmp[0..2], [2, 0], "packet too big");
        assert_eq!(
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
            1460,
            "MTU = 1500 - 40"
        );
        assert_eq!(
            icmp[8..],
            big[ETH_HLEN..ETH_HLEN + 128],
            "quotes the packet's start"
        );
        assert_eq!(
            checksum(&pseudo6(VIP6, CLIENT6, icmp)),
            0,
            "ICMPv6 checksum"
        );
        assert_eq!(f.counter(Counter::IcmpTooBigSent), 1);
    });
}

#[test]
fn frag_needed_about_a_vip_flow_is_steered_to_its_backend() {
    with_lab(|lab| {
        let (mut f, ids4, ids6) = Fixture::standard(lab.ifindex);
        // The flows: SYNs from the client.
        let syn = Tcp::v4(CLIENT4, VIP4, 40030, 80, SYN).frame();
        let (_, out) = f.run(&syn);
        let be4 = check_ipip(&out, &syn[ETH_HLEN..], lab).dst;
        let syn6 = Tcp::v6(CLIENT6, VIP6, 40031, 80, SYN).frame();
        let (_, out) = f.run(&syn6);
        let be6 = check_ip6ip6(&out, &syn6[ETH_HLEN..], lab).dst;
        // Another flow goes to another backend (round robin), so a fallback would differ.
        f.run(&Tcp::v4(CLIENT4, VIP4, 40032, 80, SYN).frame());
        let reply = Tcp::v4(VIP4, CLIENT4, 80, 40030, ACK).payload(1400).frame();
        let icmp = icmp4(
            ROUTER4,
            VIP4,
            3,
            4,
            [0, 0, 0x05, 0x00],
            &reply[ETH_HLEN..ETH_HLEN + 28],
        );
        let (verdict, out) = f.run(&icmp);
        assert_eq!(verdict, XDP_TX, "{}", f.nonzero_counters());
        assert_eq!(
            check_ipip(&out, &icmp[ETH_HLEN..], lab).dst,
            be4,
            "the flow's backend"
        );
        let reply6 = Tcp::v6(VIP6, CLIENT6, 80, 40031, ACK).payload(1400).frame();
        let icmp = icmp6(
            ROUTER6,
            VIP6,
            2,
            0,
            1280u32.to_be_bytes(),
            &reply6[ETH_HLEN..ETH_HLEN + 48],
        );
        let (verdict, out) = f.run(&icmp);
        assert_eq!(verdict, XDP_TX, "{}", f.nonzero_counters());
        assert_eq!(
            check_ip6ip6(&out, &icmp[ETH_HLEN..], lab).dst,
            be6,
            "the flow's backend"
        );
        assert_eq!(f.counter(Counter::IcmpTooBigSteered), 2);
        // No flow: the scheduler's pick, and no flow is created for it.
        let flows = f.dp.maps().flows().unwrap().len();
        let other = Tcp::v4(VIP4, CLIENT4, 80, 40099, ACK).frame();
        let icmp = icmp4(
            ROUTER4,
            VIP4,
            3,
            4,
            [0, 0, 0x05, 0x00],
            &other[ETH_HLEN..ETH_HLEN + 28],
        );
        let (verdict, out) = f.run(&icmp);
        assert_eq!(verdict, XDP_TX);
        let be = check_ipip(&out, &icmp[ETH_HLEN..], lab).dst;
        assert!(
            ids4.iter()
                .any(|id| f.dp.maps().backend(*id).unwrap().addr == to_words(be).0)
        );
        assert_eq!(
            f.dp.maps().flows().unwrap().len(),
            flows,
            "an ICMP error creates no flow"
        );
        let _ = ids6;
    });
}
