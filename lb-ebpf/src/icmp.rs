//! ICMP at the VIP addresses, and no packet to a VIP address ever passed to the kernel.
//!
//! The kernel of the balancer forwards (`bpf_fib_lookup` needs it), and the router sends it every
//! packet to a VIP prefix: whatever the program passes to that kernel goes straight back to the
//! router, which returns it, until its TTL runs out. So a packet to a VIP *address* that is not
//! balanced TCP is answered here (echo requests) or steered (ICMP too-big about a VIP flow: to the
//! flow's backend, which must learn the path MTU) or dropped (`drop_vip_unbalanced`).
//!
//! And a client packet too long for the tunnel is answered with an ICMP frag-needed /
//! packet-too-big from the VIP, so the client's path MTU discovery works through the balancer.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{bpf_csum_diff, bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    AF_INET, AF_INET6, Counter, FlowKey, IPPROTO_TCP, VipKey,
    limits::{ICMP_TOO_BIG_PER_SEC_PER_CPU, ICMP_TOO_BIG_QUOTE},
};
use lb_ebpf::{
    csum::ipv4_header_checksum,
    encap,
    parse::{
        self, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, IPV4_HLEN, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr,
        Packet, VlanHdr, parse_l2, ptr_at, read_at, words_v4, words_v6,
    },
    stack::Aligned8,
};

use crate::{
    flow, lookup,
    maps::{LB_ICMP_RATE, LB_STATS},
    route,
    stats::{self, count},
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_ECHO: u8 = 8;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const ICMP_HLEN: usize = 8;
const IP_DF: u16 = 0x4000;
/// TTL / hop limit of what the balancer itself sends.
const REPLY_TTL: u8 = 64;
/// IPv4 TOS of the ICMP errors we send (precedence "internetwork control", as Linux does).
const TOS_INTERNET_CONTROL: u8 = 0xc0;
/// The ICMP message of a too-big answer: its header and the quote.
const TOO_BIG_ICMP_LEN: usize = ICMP_HLEN + ICMP_TOO_BIG_QUOTE;

/// The ICMP header (the last 4 bytes depend on the type: echo id/sequence, MTU).
#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: [u8; 2],
    rest: [u8; 4],
}

/// The quoted TCP ports of an ICMP error.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ports {
    sport: [u8; 2],
    dport: [u8; 2],
}

/// This CPU's ICMP too-big budget (`LB_ICMP_RATE[0]`): messages sent in the current second.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpBudget {
    pub window_start_ns: u64,
    pub sent: u64,
    /// The MTU of the last FRAG_NEEDED route lookup on this CPU (`note_mtu`), 0 once used.
    pub mtu: u32,
    pub _pad: u32,
}

/// `unbalanced` chose the backend of an ICMP too-big (low 32 bits: its id): `lb_balancer` calls
/// `steer_to` next (its own call chain: the verifier sums the frames of one chain).
pub const STEER: u64 = 3;

/// What happens to a packet the balancer does not balance; `reason` is its pass counter. A
/// packet to a VIP address is answered or dropped (a verdict, high 32 bits 0) or steered
/// (`STEER << 32 | backend id`); any other is passed as before. Not inlined: see `lb_balancer`.
#[inline(never)]
pub fn unbalanced(ctx: &XdpContext, reason: u32) -> u64 {
    if reason != Counter::PassNotIp as u32
        && let Some(l2) = parse_l2(ctx)
    {
        let verdict = if l2.ether_type == ETH_P_IP {
            at_vip_v4(ctx, l2.l3_off)
        } else if l2.ether_type == ETH_P_IPV6 {
            at_vip_v6(ctx, l2.l3_off)
        } else {
            None
        };
        match verdict {
            Some(Ok(v)) => return v,
            Some(Err(c)) => {
                count(c);
                return u64::from(XDP_DROP);
            }
            None => {}
        }
    }
    count_index(reason);
    u64::from(XDP_PASS)
}

#[inline(always)]
fn count_index(index: u32) {
    if let Some(p) = LB_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, XDP does not migrate or nest on one CPU.
        unsafe { *p += 1 };
    }
}

/// `None`: not to a VIP address (or no readable IPv4 header).
#[inline(always)]
fn at_vip_v4(ctx: &XdpContext, l3_off: usize) -> Option<Result<u64, Counter>> {
    let ip: Ipv4Hdr = read_at(ctx, l3_off)?;
    if !lookup::is_vip_addr(words_v4(ip.dst), AF_INET) {
        return None;
    }
    // Fragments, options and anything but ICMP are dropped: a VIP address answers only echo.
    let frag = u16::from_be_bytes(ip.frag_off) & 0x3fff;
    if ip.ver_ihl != 0x45 || frag != 0 || ip.proto != IPPROTO_ICMP {
        return Some(Err(Counter::DropVipUnbalanced));
    }
    let off = l3_off + IPV4_HLEN;
    let Some(icmp) = read_at::<IcmpHdr>(ctx, off) else {
        return Some(Err(Counter::DropVipUnbalanced));
    };
    Some(if icmp.kind == ICMP_ECHO {
        echo_reply_v4(ctx, l3_off).map(u64::from)
    } else if icmp.kind == ICMP_DEST_UNREACH && icmp.code == ICMP_FRAG_NEEDED {
        steer_v4(ctx, l3_off)
    } else {
        Err(Counter::DropVipUnbalanced)
    })
}

#[inline(always)]
fn at_vip_v6(ctx: &XdpContext, l3_off: usize) -> Option<Result<u64, Counter>> {
    let ip: Ipv6Hdr = read_at(ctx, l3_off)?;
    if ip.vtc_flow[0] >> 4 != 6 || !lookup::is_vip_addr(words_v6(ip.dst), AF_INET6) {
        return None;
    }
    if ip.next_header != IPPROTO_ICMPV6 {
        return Some(Err(Counter::DropVipUnbalanced));
    }
    let off = l3_off + IPV6_HLEN;
    let Some(icmp) = read_at::<IcmpHdr>(ctx, off) else {
        return Some(Err(Counter::DropVipUnbalanced));
    };
    Some(if icmp.kind == ICMPV6_ECHO_REQUEST {
        echo_reply_v6(ctx, l3_off).map(u64::from)
    } else if icmp.kind == ICMPV6_PKT_TOOBIG {
        steer_v6(ctx, l3_off)
    } else {
        Err(Counter::DropVipUnbalanced)
    })
}

/// One's complement sum folded to 16 bits.
#[inline(always)]
fn fold(sum: u64) -> u16 {
    let mut s = (sum & 0xffff_ffff) + (sum >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 incremental update of a checksum for one 16-bit word changing from `old` to `new`.
#[inline(always)]
fn csum_replace(check: [u8; 2], old: u16, new: u16) -> [u8; 2] {
    let sum = u64::from(!u16::from_be_bytes(check)) + u64::from(!old) + u64::from(new);
    // One's complement has two zeros; a message whose other words sum to zero verifies only
    // with 0xffff, and 0xffff verifies whenever 0x0000 would.
    match !fold(sum) {
        0 => [0xff, 0xff],
        c => c.to_be_bytes(),
    }
}

/// Swaps the MAC addresses: the answer goes back to the router it came from.
#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Result<(), Counter> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Counter::DropVipUnbalanced)?;
    // SAFETY: bounds checked; alignment 1.
    unsafe {
        let e = *eth;
        (*eth).dst = e.src;
        (*eth).src = e.dst;
    }
    Ok(())
}

/// The echo request becomes its reply in place.
#[inline(always)]
fn echo_reply_v4(ctx: &XdpContext, l3_off: usize) -> Result<u32, Counter> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, l3_off).ok_or(Counter::DropVipUnbalanced)?;
    let icmp = ptr_at::<IcmpHdr>(ctx, l3_off + IPV4_HLEN).ok_or(Counter::DropVipUnbalanced)?;
    // A request whose length claims more than the frame holds is malformed: no reply that lies too.
    let l3_len = (ctx.data_end() - ctx.data()).saturating_sub(l3_off);
    // SAFETY: bounds checked above.
    let tot = usize::from(u16::from_be_bytes(unsafe { (*ip).tot_len }));
    if tot > l3_len || tot < IPV4_HLEN + ICMP_HLEN {
        return Err(Counter::DropVipUnbalanced);
    }
    swap_macs(ctx)?;
    // SAFETY: bounds checked above; alignment 1.
    unsafe {
        let mut hdr = *ip;
        hdr.src = (*ip).dst;
        hdr.dst = (*ip).src;
        hdr.ttl = REPLY_TTL;
        hdr.check = [0; 2];
        hdr.check = ipv4_header_checksum(&ipv4_bytes(&hdr));
        *ip = hdr;
        let code = u16::from((*icmp).code);
        let old = (u16::from(ICMP_ECHO) << 8) | code;
        let new = (u16::from(ICMP_ECHO_REPLY) << 8) | code;
        (*icmp).check = csum_replace((*icmp).check, old, new);
        (*icmp).kind = ICMP_ECHO_REPLY;
    }
    count(Counter::IcmpEchoReplied);
    Ok(crate::egress(ctx, ctx.ingress_ifindex() as u32))
}

#[inline(always)]
fn echo_reply_v6(ctx: &XdpContext, l3_off: usize) -> Result<u32, Counter> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, l3_off).ok_or(Counter::DropVipUnbalanced)?;
    let icmp = ptr_at::<IcmpHdr>(ctx, l3_off + IPV6_HLEN).ok_or(Counter::DropVipUnbalanced)?;
    let l3_len = (ctx.data_end() - ctx.data()).saturating_sub(l3_off);
    // SAFETY: bounds checked above.
    let payload = usize::from(u16::from_be_bytes(unsafe { (*ip).payload_len }));
    if IPV6_HLEN + payload > l3_len || payload < ICMP_HLEN {
        return Err(Counter::DropVipUnbalanced);
    }
    swap_macs(ctx)?;
    // SAFETY: bounds checked above; alignment 1. Swapping the addresses leaves the pseudo-header
    // sum as it was, so only the type's change enters the checksum.
    unsafe {
        let src = (*ip).src;
        (*ip).src = (*ip).dst;
        (*ip).dst = src;
        (*ip).hop_limit = REPLY_TTL;
        let code = u16::from((*icmp).code);
        let old = (u16::from(ICMPV6_ECHO_REQUEST) << 8) | code;
        let new = (u16::from(ICMPV6_ECHO_REPLY) << 8) | code;
        (*icmp).check = csum_replace((*icmp).check, old, new);
        (*icmp).kind = ICMPV6_ECHO_REPLY;
    }
    count(Counter::IcmpEchoReplied);
    Ok(crate::egress(ctx, ctx.ingress_ifindex() as u32))
}

#[inline(always)]
fn ipv4_bytes(hdr: &Ipv4Hdr) -> [u8; IPV4_HLEN] {
    // SAFETY: `Ipv4Hdr` is 20 bytes of `u8`s without padding.
    unsafe { *(hdr as *const Ipv4Hdr as *const [u8; IPV4_HLEN]) }
}

/// An ICMP frag-needed to a VIP address quoting a reply of a VIP flow (VIP:port → client:port):
/// `STEER` to that flow's backend.
#[inline(always)]
fn steer_v4(ctx: &XdpContext, l3_off: usize) -> Result<u64, Counter> {
    let quote = l3_off + IPV4_HLEN + ICMP_HLEN;
    let inner: Ipv4Hdr = read_at(ctx, quote).ok_or(Counter::DropVipUnbalanced)?;
    if inner.ver_ihl != 0x45 || inner.proto != IPPROTO_TCP {
        return Err(Counter::DropVipUnbalanced);
    }
    let ports: Ports = read_at(ctx, quote + IPV4_HLEN).ok_or(Counter::DropVipUnbalanced)?;
    steer(AF_INET, words_v4(inner.src), words_v4(inner.dst), &ports)
}

#[inline(always)]
fn steer_v6(ctx: &XdpContext, l3_off: usize) -> Result<u64, Counter> {
    let quote = l3_off + IPV6_HLEN + ICMP_HLEN;
    let inner: Ipv6Hdr = read_at(ctx, quote).ok_or(Counter::DropVipUnbalanced)?;
    if inner.next_header != IPPROTO_TCP {
        return Err(Counter::DropVipUnbalanced);
    }
    let ports: Ports = read_at(ctx, quote + IPV6_HLEN).ok_or(Counter::DropVipUnbalanced)?;
    steer(AF_INET6, words_v6(inner.src), words_v6(inner.dst), &ports)
}

/// The quoted packet went VIP (`vip`, `ports.sport`) → client (`client`, `ports.dport`).
#[inline(always)]
fn steer(family: u8, vip: [u32; 4], client: [u32; 4], ports: &Ports) -> Result<u64, Counter> {
    let vip_key = Aligned8(VipKey {
        addr: vip,
        port_be: u16::from_ne_bytes(ports.sport),
        proto: IPPROTO_TCP,
        family,
    });
    let svc = lookup::service(&vip_key).ok_or(Counter::DropVipUnbalanced)?;
    let key = FlowKey {
        src: client,
        dst: vip,
        sport_be: u16::from_ne_bytes(ports.dport),
        dport_be: u16::from_ne_bytes(ports.sport),
        proto: IPPROTO_TCP,
        family,
        _pad: [0; 2],
    };
    // Read only: an ICMP error creates no flow.
    let choice = flow::backend_without_state(&svc, &key, &lookup::config())?;
    if choice.entry.family != family {
        return Err(Counter::DropNoRoute);
    }
    Ok((STEER << 32) | u64::from(choice.id))
}

/// Encapsulates the ICMP packet toward backend `backend_id`, like its flow's packets.
#[inline(never)]
pub fn steer_to(ctx: &XdpContext, backend_id: u32) -> u32 {
    match encap_to(ctx, backend_id) {
        Ok(v) => v,
        Err(c) => {
            count(c);
            XDP_DROP
        }
    }
}

#[inline(always)]
fn outer_packet(ctx: &XdpContext) -> Option<Packet> {
    let l2 = parse_l2(ctx)?;
    let l3_off = l2.l3_off;
    let mut pkt = Packet {
        family: AF_INET,
        l3_off,
        ip_len: 0,
        src: [0; 4],
        dst: [0; 4],
        sport_be: 0,
        dport_be: 0,
        tcp_flags: 0,
        first_word: [0; 4],
        ttl: 0,
        with_options: 0,
    };
    if l2.ether_type == ETH_P_IP {
        let ip: Ipv4Hdr = read_at(ctx, l3_off)?;
        pkt.ip_len = u16::from_be_bytes(ip.tot_len) as usize;
        pkt.first_word = [ip.ver_ihl, ip.tos, ip.tot_len[0], ip.tot_len[1]];
        pkt.ttl = ip.ttl;
    } else {
        let ip: Ipv6Hdr = read_at(ctx, l3_off)?;
        pkt.family = AF_INET6;
        pkt.ip_len = IPV6_HLEN + u16::from_be_bytes(ip.payload_len) as usize;
        pkt.first_word = ip.vtc_flow;
        pkt.ttl = ip.hop_limit;
    }
    if pkt.ip_len < IPV4_HLEN || l3_off + pkt.ip_len > ctx.data_end() - ctx.data() {
        return None;
    }
    Some(pkt)
}

#[inline(always)]
fn encap_to(ctx: &XdpContext, backend_id: u32) -> Result<u32, Counter> {
    let pkt = outer_packet(ctx).ok_or(Counter::DropVipUnbalanced)?;
    let be = lookup::backend(backend_id).ok_or(Counter::DropBadTableEntry)?;
    let cfg = lookup::config();
    let src = if pkt.family == AF_INET {
        [cfg.src_v4, 0, 0, 0]
    } else {
        cfg.src_v6
    };
    let outer_len = (pkt.ip_len + encap::encap_len(pkt.family)) as u32;
    let hop = route::next_hop_cached(ctx, &cfg, backend_id, pkt.family, &be.addr, outer_len)?;
    encap::encapsulate(ctx, &pkt, &src, &be.addr, &hop)?;
    count(Counter::IcmpTooBigSteered);
    Ok(crate::egress(ctx, hop.ifindex))
}

/// Takes one message from this CPU's budget of the current second and returns the MTU
/// `note_mtu` noted; `None` when the budget is spent (or no MTU was noted).
#[inline(always)]
fn take_budget() -> Option<u32> {
    let p = LB_ICMP_RATE.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value; XDP does not nest on one CPU.
    let b = unsafe { &mut *p };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(b.window_start_ns) >= 1_000_000_000 {
        b.window_start_ns = now;
        b.sent = 0;
    }
    let mtu = b.mtu;
    b.mtu = 0;
    if b.sent >= ICMP_TOO_BIG_PER_SEC_PER_CPU || mtu == 0 {
        return None;
    }
    b.sent += 1;
    Some(mtu)
}

/// Remembers the MTU `bpf_fib_lookup` reported for the packet being processed (`route::next_hop`
/// on FRAG_NEEDED), for `too_big`.
#[inline(always)]
pub fn note_mtu(mtu: u32) {
    if let Some(p) = LB_ICMP_RATE.get_ptr_mut(0) {
        // SAFETY: per-CPU map value; XDP does not nest on one CPU.
        unsafe { (*p).mtu = mtu };
    }
}

/// A client packet too long for the tunnel (`forward` said `DropMtu`): answered with an ICMP
/// frag-needed / packet-too-big from the VIP giving the MTU the tunnel leaves, when the inner
/// IPv4 packet has DF (without DF a router would fragment; XDP cannot, and code 4 would claim a DF
/// the packet does not carry: it is dropped) and this CPU's budget allows. `XDP_DROP` when nothing
/// was sent (counted `drop_mtu` and a drop of service `service_id`). Not inlined, like `unbalanced`.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, service_id: u32) -> u32 {
    let sent = match parse::parse_packet(ctx) {
        Ok(pkt) => send_too_big(ctx, &pkt),
        Err(_) => Err(Counter::DropMtu),
    };
    match sent {
        Ok(v) => v,
        Err(_) => {
            count(Counter::DropMtu);
            stats::service_traffic(service_id, stats::Traffic::Dropped);
            XDP_DROP
        }
    }
}

#[inline(always)]
fn send_too_big(ctx: &XdpContext, pkt: &Packet) -> Result<u32, Counter> {
    if pkt.ip_len < ICMP_TOO_BIG_QUOTE {
        return Err(Counter::DropMtu);
    }
    if pkt.family == AF_INET {
        let ip: Ipv4Hdr = read_at(ctx, pkt.l3_off).ok_or(Counter::DropMtu)?;
        if u16::from_be_bytes(ip.frag_off) & IP_DF == 0 {
            return Err(Counter::DropMtu);
        }
    }
    let mtu = take_budget().ok_or(Counter::DropMtu)?;
    let inner_mtu = mtu.saturating_sub(encap::encap_len(pkt.family) as u32);
    let eth: EthHdr = read_at(ctx, 0).ok_or(Counter::DropMtu)?;
    let vlan: Option<VlanHdr> = if pkt.l3_off > ETH_HLEN {
        read_at(ctx, ETH_HLEN)
    } else {
        None
    };
    let headroom = if pkt.family == AF_INET {
        IPV4_HLEN + ICMP_HLEN
    } else {
        IPV6_HLEN + ICMP_HLEN
    };
    let keep = pkt.l3_off + ICMP_TOO_BIG_QUOTE;
    let frame = ctx.data_end() - ctx.data();
    // SAFETY: `ctx.ctx` is the program's context; the frame holds more than `keep` bytes.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep as i32 - frame as i32) } != 0
        || unsafe { bpf_xdp_adjust_head(ctx.ctx, -(headroom as i32)) } != 0
    {
        return Err(Counter::DropEncapFailed);
    }
    write_l2(ctx, &eth, vlan.as_ref(), pkt.family)?;
    if pkt.family == AF_INET {
        write_too_big_v4(ctx, pkt, inner_mtu)?;
    } else {
        write_too_big_v6(ctx, pkt, inner_mtu)?;
    }
    count(Counter::IcmpTooBigSent);
    Ok(crate::egress(ctx, ctx.ingress_ifindex() as u32))
}

/// The answer's Ethernet header (and VLAN tag): back to the sender.
#[inline(always)]
fn write_l2(
    ctx: &XdpContext,
    eth: &EthHdr,
    vlan: Option<&VlanHdr>,
    family: u8,
) -> Result<(), Counter> {
    let ether_type = if family == AF_INET {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    let out = ptr_at::<EthHdr>(ctx, 0).ok_or(Counter::DropEncapFailed)?;
    let mut hdr = EthHdr {
        dst: eth.src,
        src: eth.dst,
        ether_type: ether_type.to_be_bytes(),
    };
    if let Some(tag) = vlan {
        hdr.ether_type = eth.ether_type;
        let t = ptr_at::<VlanHdr>(ctx, ETH_HLEN).ok_or(Counter::DropEncapFailed)?;
        // SAFETY: bounds checked; alignment 1.
        unsafe {
            *t = VlanHdr {
                tci: tag.tci,
                ether_type: ether_type.to_be_bytes(),
            }
        };
    }
    // SAFETY: bounds checked; alignment 1.
    unsafe { *out = hdr };
    Ok(())
}

/// The ICMP message's checksum over its `TOO_BIG_ICMP_LEN` bytes at `off`, `seed` being the
/// pseudo-header's sum (IPv6) or 0 (IPv4).
#[inline(always)]
fn icmp_checksum(ctx: &XdpContext, off: usize, seed: u64) -> Result<[u8; 2], Counter> {
    let msg = ptr_at::<[u8; TOO_BIG_ICMP_LEN]>(ctx, off).ok_or(Counter::DropEncapFailed)?;
    let seed = u32::from(fold(seed));
    // SAFETY: `msg` is bounds checked for `TOO_BIG_ICMP_LEN` bytes, a multiple of 4.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            msg as *mut u32,
            TOO_BIG_ICMP_LEN as u32,
            seed,
        )
    };
    if sum < 0 {
        return Err(Counter::DropEncapFailed);
    }
    // Native-order sums: the result is stored in native order too.
    Ok((!fold(sum as u64)).to_ne_bytes())
}

#[inline(always)]
fn write_too_big_v4(ctx: &XdpContext, pkt: &Packet, mtu: u32) -> Result<(), Counter> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, pkt.l3_off).ok_or(Counter::DropEncapFailed)?;
    let icmp_off = pkt.l3_off + IPV4_HLEN;
    let icmp = ptr_at::<IcmpHdr>(ctx, icmp_off).ok_or(Counter::DropEncapFailed)?;
    let mut hdr = Ipv4Hdr {
        ver_ihl: 0x45,
        tos: TOS_INTERNET_CONTROL,
        tot_len: ((IPV4_HLEN + TOO_BIG_ICMP_LEN) as u16).to_be_bytes(),
        id: [0; 2],
        frag_off: [0; 2],
        ttl: REPLY_TTL,
        proto: IPPROTO_ICMP,
        check: [0; 2],
        src: pkt.dst[0].to_ne_bytes(),
        dst: pkt.src[0].to_ne_bytes(),
    };
    hdr.check = ipv4_header_checksum(&ipv4_bytes(&hdr));
    let mtu = (mtu as u16).to_be_bytes();
    // SAFETY: bounds checked; alignment 1.
    unsafe {
        *ip = hdr;
        *icmp = IcmpHdr {
            kind: ICMP_DEST_UNREACH,
            code: ICMP_FRAG_NEEDED,
            check: [0; 2],
            rest: [0, 0, mtu[0], mtu[1]],
        };
    }
    let check = icmp_checksum(ctx, icmp_off, 0)?;
    // SAFETY: as above.
    unsafe { (*icmp).check = check };
    Ok(())
}

#[inline(always)]
fn write_too_big_v6(ctx: &XdpContext, pkt: &Packet, mtu: u32) -> Result<(), Counter> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, pkt.l3_off).ok_or(Counter::DropEncapFailed)?;
    let icmp_off = pkt.l3_off + IPV6_HLEN;
    let icmp = ptr_at::<IcmpHdr>(ctx, icmp_off).ok_or(Counter::DropEncapFailed)?;
    let len = TOO_BIG_ICMP_LEN as u32;
    // SAFETY: bounds checked; alignment 1.
    unsafe {
        *ip = Ipv6Hdr {
            vtc_flow: [0x60, 0, 0, 0],
            payload_len: (len as u16).to_be_bytes(),
            next_header: IPPROTO_ICMPV6,
            hop_limit: REPLY_TTL,
            src: words_to_bytes(&pkt.dst),
            dst: words_to_bytes(&pkt.src),
        };
        *icmp = IcmpHdr {
            kind: ICMPV6_PKT_TOOBIG,
            code: 0,
            check: [0; 2],
            rest: mtu.to_be_bytes(),
        };
    }
    // The pseudo-header (RFC 8200 8.1), summed in native order like the message.
    let mut seed: u64 = 0;
    let mut i = 0;
    while i < 4 {
        seed += u64::from(pkt.src[i]) + u64::from(pkt.dst[i]);
        i += 1;
    }
    seed += u64::from(u32::from_ne_bytes(len.to_be_bytes()));
    seed += u64::from(u32::from_ne_bytes([0, 0, 0, IPPROTO_ICMPV6]));
    let check = icmp_checksum(ctx, icmp_off, seed)?;
    // SAFETY: as above.
    unsafe { (*icmp).check = check };
    Ok(())
}

#[inline(always)]
fn words_to_bytes(w: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[4 * i] = b[0];
        out[4 * i + 1] = b[1];
        out[4 * i + 2] = b[2];
        out[4 * i + 3] = b[3];
        i += 1;
    }
    out
}
