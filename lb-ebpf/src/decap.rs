//! The backend-side program: strips the outer IPIP / ip6ip6 header of packets addressed to this
//! host, so the stack sees the client's packet (to the VIP, configured on the backend's loopback).

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_xdp_adjust_head,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use lb_common::{AF_INET, AF_INET6, DecapCounter, DecapKey, DecapSrcKey};

use crate::{
    maps::{LB_DECAP_ADDRS, LB_DECAP_ALLOW},
    parse::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, IPV6_HLEN, Ipv4Hdr,
        Ipv6Hdr, VlanHdr, parse_l2, ptr_at, read_at, words_v4, words_v6,
    },
    stack::Aligned8,
    stats::count_decap,
};

/// An encapsulated packet to strip.
#[derive(Clone, Copy)]
struct Tunnel {
    l3_off: usize,
    /// Bytes of the outer IP header.
    outer_len: usize,
    inner_ether_type: u16,
    counter: DecapCounter,
}

#[inline(always)]
pub fn decap(ctx: &XdpContext) -> u32 {
    count_decap(DecapCounter::RxPackets);
    let tunnel = match classify(ctx) {
        Ok(t) => t,
        Err(c) => {
            count_decap(c);
            return if c.is_drop() { XDP_DROP } else { XDP_PASS };
        }
    };
    match strip(ctx, &tunnel) {
        Ok(()) => {
            count_decap(tunnel.counter);
            XDP_PASS
        }
        Err(()) => {
            count_decap(DecapCounter::DropAdjustFailed);
            XDP_DROP
        }
    }
}

#[inline(always)]
fn is_local(addr: [u32; 4], family: u8) -> bool {
    let key = Aligned8(DecapKey {
        addr,
        family,
        _pad: [0; 3],
    });
    LB_DECAP_ADDRS.get_ptr(&key.0).is_some()
}

/// Whether tunnel packets from `src` (network order, IPv4 in the first 4 bytes) are accepted.
#[inline(always)]
fn src_allowed(src: [u8; 16], family: u8, addr_bits: u32) -> bool {
    let key = Key::new(
        DecapSrcKey::prefix_len(addr_bits),
        DecapSrcKey { family, addr: src },
    );
    LB_DECAP_ALLOW.get(&key).is_some()
}

/// Decides whether the frame is a tunnel packet for this host from an allowed source; `Err` is the
/// counter of what happens instead (a pass, or a drop: `DecapCounter::is_drop`).
#[inline(always)]
fn classify(ctx: &XdpContext) -> Result<Tunnel, DecapCounter> {
    let l2 = parse_l2(ctx).ok_or(DecapCounter::PassMalformed)?;
    match l2.ether_type {
        ETH_P_IP => classify_ipv4(ctx, l2.l3_off),
        ETH_P_IPV6 => classify_ipv6(ctx, l2.l3_off),
        _ => Err(DecapCounter::PassNotEncapsulated),
    }
}

#[inline(always)]
fn classify_ipv4(ctx: &XdpContext, l3_off: usize) -> Result<Tunnel, DecapCounter> {
    let ip: Ipv4Hdr = read_at(ctx, l3_off).ok_or(DecapCounter::PassMalformed)?;
    if ip.proto != IPPROTO_IPIP {
        return Err(DecapCounter::PassNotEncapsulated);
    }
    let ihl = (ip.ver_ihl & 0x0f) as usize;
    if ip.ver_ihl >> 4 != 4 || ihl < 5 {
        return Err(DecapCounter::PassMalformed);
    }
    // A fragment of a tunnel packet cannot be stripped on its own.
    if u16::from_be_bytes(ip.frag_off) & 0x3fff != 0 {
        return Err(DecapCounter::PassMalformed);
    }
    if !is_local(words_v4(ip.dst), AF_INET) {
        return Err(DecapCounter::PassNotLocal);
    }
    let [a, b, c, d] = ip.src;
    let src = [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    if !src_allowed(src, AF_INET, 32) {
        return Err(DecapCounter::DropSrcNotAllowed);
    }
    let outer_len = ihl * 4;
    let inner: Ipv4Hdr = read_at(ctx, l3_off + outer_len).ok_or(DecapCounter::PassMalformed)?;
    if inner.ver_ihl >> 4 != 4 {
        return Err(DecapCounter::PassMalformed);
    }
    Ok(Tunnel {
        l3_off,
        outer_len,
        inner_ether_type: ETH_P_IP,
        counter: DecapCounter::DecapIpip,
    })
}

#[inline(always)]
fn classify_ipv6(ctx: &XdpContext, l3_off: usize) -> Result<Tunnel, DecapCounter> {
    let ip: Ipv6Hdr = read_at(ctx, l3_off).ok_or(DecapCounter::PassMalformed)?;
    if ip.next_header != IPPROTO_IPV6 {
        return Err(DecapCounter::PassNotEncapsulated);
    }
    if ip.vtc_flow[0] >> 4 != 6 {
        return Err(DecapCounter::PassMalformed);
    }
    if !is_local(words_v6(ip.dst), AF_INET6) {
        return Err(DecapCounter::PassNotLocal);
    }
    if !src_allowed(ip.src, AF_INET6, 128) {
        return Err(DecapCounter::DropSrcNotAllowed);
    }
    let inner: Ipv6Hdr = read_at(ctx, l3_off + IPV6_HLEN).ok_or(DecapCounter::PassMalformed)?;
    if inner.vtc_flow[0] >> 4 != 6 {
        return Err(DecapCounter::PassMalformed);
    }
    Ok(Tunnel {
        l3_off,
        outer_len: IPV6_HLEN,
        inner_ether_type: ETH_P_IPV6,
        counter: DecapCounter::DecapIp6ip6,
    })
}

/// Moves the link-layer header (with its VLAN tag, if any) forward over the outer IP header and
/// shrinks the frame from the front.
#[inline(always)]
fn strip(ctx: &XdpContext, t: &Tunnel) -> Result<(), ()> {
    let eth: EthHdr = read_at(ctx, 0).ok_or(())?;
    if t.l3_off == ETH_HLEN {
        let new_eth = ptr_at::<EthHdr>(ctx, t.outer_len).ok_or(())?;
        // SAFETY: bounds checked; alignment 1.
        unsafe {
            *new_eth = EthHdr {
                ether_type: t.inner_ether_type.to_be_bytes(),
                ..eth
            }
        };
    } else {
        let vlan: VlanHdr = read_at(ctx, ETH_HLEN).ok_or(())?;
        let new_eth = ptr_at::<EthHdr>(ctx, t.outer_len).ok_or(())?;
        let new_vlan = ptr_at::<VlanHdr>(ctx, t.outer_len + ETH_HLEN).ok_or(())?;
        // SAFETY: bounds checked; alignment 1.
        unsafe {
            *new_eth = eth;
            *new_vlan = VlanHdr {
                ether_type: t.inner_ether_type.to_be_bytes(),
                ..vlan
            };
        }
    }
    // SAFETY: `ctx.ctx` is the program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, t.outer_len as i32) } != 0 {
        return Err(());
    }
    Ok(())
}
