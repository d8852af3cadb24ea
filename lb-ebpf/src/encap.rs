//! IPIP / ip6ip6 encapsulation (Katran-style DSR): the client's IP packet travels unchanged inside
//! an outer header addressed to the backend.
//!
//! The outer frame is always untagged: a VLAN tag of the received frame is dropped, because the
//! next hop is reached through the routing table (one-arm forwarding), not on the client's VLAN.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{AF_INET, Counter};

use crate::{
    csum::ipv4_checksum_of_words,
    parse::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_HLEN, IPV6_HLEN, Packet,
        ptr_at,
    },
};

/// Where the encapsulated packet leaves (a route lookup's result, or fixed for the bench floor).
#[derive(Clone, Copy)]
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// IPv4 "don't fragment": the inner packet must not be fragmented on the way to the backend.
const IP_DF: u16 = 0x4000;

/// Bytes the outer header adds for a family.
#[inline(always)]
pub fn encap_len(family: u8) -> usize {
    if family == AF_INET {
        IPV4_HLEN
    } else {
        IPV6_HLEN
    }
}

/// Grows the frame by the outer header and writes Ethernet + outer IP in front of the inner packet.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    pkt: &Packet,
    src: &[u32; 4],
    dst: &[u32; 4],
    hop: &NextHop,
) -> Result<(), Counter> {
    let outer = encap_len(pkt.family);
    // The inner IP packet stays where it is; everything before it is replaced.
    let delta = pkt.l3_off as i32 - (ETH_HLEN + outer) as i32;
    // SAFETY: `ctx.ctx` is the program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(Counter::DropEncapFailed);
    }
    if pkt.family == AF_INET {
        write_ipv4(ctx, pkt, src[0], dst[0], hop)
    } else {
        write_ipv6(ctx, pkt, src, dst, hop)
    }
}

/// Stores `v` at byte `off` of the frame's first bytes (`base` is a bounds-checked packet pointer).
/// One store instruction: the objects are generated with unaligned accesses allowed (`build.rs`).
#[inline(always)]
fn put<T>(base: *mut u8, off: usize, v: T) {
    // SAFETY: the caller checked that `off + size_of::<T>()` bytes lie in the frame.
    unsafe { core::ptr::write_unaligned(base.add(off).cast::<T>(), v) }
}

/// The Ethernet header toward the next hop: 14 bytes in four stores.
#[inline(always)]
fn write_eth(eth: *mut u8, hop: &NextHop, ether_type: u16) {
    let d = hop.dmac;
    let s = hop.smac;
    put(eth, 0, u32::from_ne_bytes([d[0], d[1], d[2], d[3]]));
    put(eth, 4, u32::from_ne_bytes([d[4], d[5], s[0], s[1]]));
    put(eth, 8, u32::from_ne_bytes([s[2], s[3], s[4], s[5]]));
    put(eth, 12, ether_type.to_be());
}

#[inline(always)]
fn write_ipv4(
    ctx: &XdpContext,
    pkt: &Packet,
    src: u32,
    dst: u32,
    hop: &NextHop,
) -> Result<(), Counter> {
    let frame = ptr_at::<[u8; ETH_HLEN + IPV4_HLEN]>(ctx, 0).ok_or(Counter::DropEncapFailed)?;
    let base = frame.cast::<u8>();
    write_eth(base, hop, ETH_P_IP);
    let tot_len = (pkt.ip_len + IPV4_HLEN) as u16;
    // The header as five words in memory order: version/IHL, TOS, total length; id, flags (DF);
    // TTL, protocol, checksum (0 until computed); source; destination.
    let w0 = 0x45 | (u32::from(pkt.first_word[1]) << 8) | (u32::from(tot_len.to_be()) << 16);
    let w1 = u32::from(IP_DF.to_be()) << 16;
    let w2 = u32::from(pkt.ttl) | (u32::from(IPPROTO_IPIP) << 8);
    let check = ipv4_checksum_of_words([w0, w1, w2, src, dst]);
    let ip = ETH_HLEN;
    put(base, ip, w0);
    put(base, ip + 4, w1);
    put(base, ip + 8, w2 | (u32::from(check) << 16));
    put(base, ip + 12, src);
    put(base, ip + 16, dst);
    Ok(())
}

#[inline(always)]
fn write_ipv6(
    ctx: &XdpContext,
    pkt: &Packet,
    src: &[u32; 4],
    dst: &[u32; 4],
    hop: &NextHop,
) -> Result<(), Counter> {
    let frame = ptr_at::<[u8; ETH_HLEN + IPV6_HLEN]>(ctx, 0).ok_or(Counter::DropEncapFailed)?;
    let base = frame.cast::<u8>();
    write_eth(base, hop, ETH_P_IPV6);
    let ip = ETH_HLEN;
    // Version, traffic class and flow label of the inner packet (Katran-style): ECMP on the way to
    // the backend hashes the flow consistently.
    put(base, ip, u32::from_ne_bytes(pkt.first_word));
    put(
        base,
        ip + 4,
        u32::from((pkt.ip_len as u16).to_be())
            | (u32::from(IPPROTO_IPV6) << 16)
            | (u32::from(pkt.ttl) << 24),
    );
    for i in 0..4 {
        put(base, ip + 8 + 4 * i, src[i]);
        put(base, ip + 24 + 4 * i, dst[i]);
    }
    Ok(())
}
