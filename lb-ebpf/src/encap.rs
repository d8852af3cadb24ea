//! IPIP / ip6ip6 encapsulation (Katran-style DSR): the client's IP packet travels unchanged inside
//! an outer header addressed to the backend.
//!
//! The outer frame is always untagged: a VLAN tag of the received frame is dropped, because the
//! next hop is reached through the routing table (one-arm forwarding), not on the client's VLAN.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{AF_INET, Counter};

use crate::{
    csum::ipv4_header_checksum,
    parse::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_HLEN, IPV6_HLEN,
        Ipv4Hdr, Ipv6Hdr, Packet, ptr_at,
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

#[inline(always)]
fn write_eth(ctx: &XdpContext, hop: &NextHop, ether_type: u16) -> Result<(), Counter> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Counter::DropEncapFailed)?;
    // SAFETY: bounds checked; alignment 1.
    unsafe {
        *eth = EthHdr {
            dst: hop.dmac,
            src: hop.smac,
            ether_type: ether_type.to_be_bytes(),
        }
    };
    Ok(())
}

#[inline(always)]
fn write_ipv4(
    ctx: &XdpContext,
    pkt: &Packet,
    src: u32,
    dst: u32,
    hop: &NextHop,
) -> Result<(), Counter> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(Counter::DropEncapFailed)?;
    write_eth(ctx, hop, ETH_P_IP)?;
    let tot_len = (pkt.ip_len + IPV4_HLEN) as u16;
    let mut hdr = Ipv4Hdr {
        ver_ihl: 0x45,
        tos: pkt.first_word[1],
        tot_len: tot_len.to_be_bytes(),
        id: [0; 2],
        frag_off: IP_DF.to_be_bytes(),
        ttl: pkt.ttl,
        proto: IPPROTO_IPIP,
        check: [0; 2],
        src: src.to_ne_bytes(),
        dst: dst.to_ne_bytes(),
    };
    // SAFETY: `Ipv4Hdr` is 20 bytes of `u8`s without padding.
    let bytes: &[u8; IPV4_HLEN] = unsafe { &*(&hdr as *const Ipv4Hdr as *const [u8; IPV4_HLEN]) };
    hdr.check = ipv4_header_checksum(bytes);
    // SAFETY: bounds checked; alignment 1.
    unsafe { *ip = hdr };
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
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN).ok_or(Counter::DropEncapFailed)?;
    write_eth(ctx, hop, ETH_P_IPV6)?;
    let hdr = Ipv6Hdr {
        // Version, traffic class and flow label of the inner packet (Katran-style): ECMP on the way
        // to the backend hashes the flow consistently.
        vtc_flow: pkt.first_word,
        payload_len: (pkt.ip_len as u16).to_be_bytes(),
        next_header: IPPROTO_IPV6,
        hop_limit: pkt.ttl,
        src: words_to_bytes(src),
        dst: words_to_bytes(dst),
    };
    // SAFETY: bounds checked; alignment 1.
    unsafe { *ip = hdr };
    Ok(())
}

#[inline(always)]
fn words_to_bytes(w: &[u32; 4]) -> [u8; 16] {
    let a = w[0].to_ne_bytes();
    let b = w[1].to_ne_bytes();
    let c = w[2].to_ne_bytes();
    let d = w[3].to_ne_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}
