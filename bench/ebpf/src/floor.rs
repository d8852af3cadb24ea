//! `lb_floor`: the least an IPIP load balancer can do (parse Ethernet + IP, encapsulate toward a
//! fixed MAC and address, transmit), with the production parse and encapsulation code.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS, XDP_TX},
    programs::XdpContext,
};
use lb_common::{AF_INET, AF_INET6};
use lb_ebpf::{
    encap::{self, NextHop},
    parse::{self, ETH_P_IP, ETH_P_IPV6, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, Packet, read_at},
};

/// Next hop of the floor program: fixed, no lookup.
const FLOOR_HOP: NextHop = NextHop {
    ifindex: 0,
    smac: [2, 0, 0, 0, 0, 1],
    dmac: [2, 0, 0, 0, 0, 2],
};
/// Outer addresses of the floor program (198.18.3.2 → 198.18.2.11, 2001:db8:3::2 → 2001:db8:2::11).
const FLOOR_SRC_V4: [u32; 4] = [u32::from_ne_bytes([198, 18, 3, 2]), 0, 0, 0];
const FLOOR_DST_V4: [u32; 4] = [u32::from_ne_bytes([198, 18, 2, 11]), 0, 0, 0];
const FLOOR_SRC_V6: [u32; 4] = [
    u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]),
    u32::from_ne_bytes([0, 3, 0, 0]),
    0,
    u32::from_ne_bytes([0, 0, 0, 2]),
];
const FLOOR_DST_V6: [u32; 4] = [
    u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]),
    u32::from_ne_bytes([0, 2, 0, 0]),
    0,
    u32::from_ne_bytes([0, 0, 0, 0x11]),
];

/// Parse Ethernet + IPv4/IPv6, encapsulate toward a fixed MAC and address, transmit.
#[inline(always)]
pub fn floor(ctx: &XdpContext) -> u32 {
    let Some(l2) = parse::parse_l2(ctx) else {
        return XDP_PASS;
    };
    let (pkt, src, dst) = match l2.ether_type {
        ETH_P_IP => {
            let Some(ip) = read_at::<Ipv4Hdr>(ctx, l2.l3_off) else {
                return XDP_PASS;
            };
            let pkt = minimal_packet(
                AF_INET,
                l2.l3_off,
                u16::from_be_bytes(ip.tot_len) as usize,
                [ip.ver_ihl, ip.tos, 0, 0],
                ip.ttl,
            );
            (pkt, FLOOR_SRC_V4, FLOOR_DST_V4)
        }
        ETH_P_IPV6 => {
            let Some(ip) = read_at::<Ipv6Hdr>(ctx, l2.l3_off) else {
                return XDP_PASS;
            };
            let len = IPV6_HLEN + u16::from_be_bytes(ip.payload_len) as usize;
            (
                minimal_packet(AF_INET6, l2.l3_off, len, ip.vtc_flow, ip.hop_limit),
                FLOOR_SRC_V6,
                FLOOR_DST_V6,
            )
        }
        _ => return XDP_PASS,
    };
    match encap::encapsulate(ctx, &pkt, &src, &dst, &FLOOR_HOP) {
        Ok(()) => XDP_TX,
        Err(_) => XDP_ABORTED,
    }
}

#[inline(always)]
fn minimal_packet(
    family: u8,
    l3_off: usize,
    ip_len: usize,
    first_word: [u8; 4],
    ttl: u8,
) -> Packet {
    Packet {
        family,
        l3_off,
        ip_len,
        src: [0; 4],
        dst: [0; 4],
        sport_be: 0,
        dport_be: 0,
        tcp_flags: 0,
        first_word,
        ttl,
        with_options: 0,
    }
}
