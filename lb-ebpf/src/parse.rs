//! Header layouts and the parse of a frame into what the balancer needs. Headers are byte arrays
//! (alignment 1), so reading them from any packet offset is sound.

use aya_ebpf::programs::XdpContext;
use lb_common::{AF_INET, AF_INET6, Counter, IPPROTO_TCP};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN: usize = 20;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version, traffic class and flow label.
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub data_off: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

/// A pointer to a `T` at `off` bytes into the frame, if the whole `T` lies inside it.
///
/// The verifier only trusts a bounds check made on the very register (or a copy of it) that is
/// then dereferenced. Left alone, LLVM reassociates `start + off + size` and recomputes
/// `start + off` after the check, which the verifier rejects for variable offsets (VLAN tag, IPv4
/// options); `opaque` pins the pointer so check and access use the same value.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    let p = opaque(start + off);
    if p + size_of::<T>() > end {
        return None;
    }
    Some(p as *mut T)
}

/// Returns `x` unchanged, but hides its computation from the optimizer. Costs one register move
/// (an empty template would leave BTF line info pointing at no instruction, which the kernel rejects).
#[inline(always)]
pub fn opaque(x: usize) -> usize {
    let mut x = x;
    // SAFETY: a move of a register onto itself.
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    x
}

/// Reads a `T` at `off`, if it lies inside the frame.
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: bounds checked by `ptr_at`; every header type has alignment 1.
    ptr_at::<T>(ctx, off).map(|p| unsafe { *p })
}

#[inline(always)]
pub fn words_v4(a: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(a), 0, 0, 0]
}

#[inline(always)]
pub fn words_v6(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Where the L3 header starts and which protocol it is, after at most one VLAN tag.
#[derive(Clone, Copy)]
pub struct L2 {
    pub l3_off: usize,
    pub ether_type: u16,
}

/// Ethernet with one optional 802.1Q / 802.1ad tag.
#[inline(always)]
pub fn parse_l2(ctx: &XdpContext) -> Option<L2> {
    let eth: EthHdr = read_at(ctx, 0)?;
    let ether_type = u16::from_be_bytes(eth.ether_type);
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: VlanHdr = read_at(ctx, ETH_HLEN)?;
        return Some(L2 {
            l3_off: ETH_HLEN + VLAN_HLEN,
            ether_type: u16::from_be_bytes(vlan.ether_type),
        });
    }
    Some(L2 {
        l3_off: ETH_HLEN,
        ether_type,
    })
}

/// A TCP packet the balancer may handle, reduced to what it needs.
#[derive(Clone, Copy)]
pub struct Packet {
    pub family: u8,
    /// Offset of the IP header (14, or 18 with a VLAN tag).
    pub l3_off: usize,
    /// Length of the IP packet (header + payload) as its header says.
    pub ip_len: usize,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub tcp_flags: u8,
    /// The first 4 bytes of the IP header: copied into the outer IPv6 header (traffic class, flow
    /// label); for IPv4, byte 1 is the TOS.
    pub first_word: [u8; 4],
    pub ttl: u8,
    /// 1 for an IPv4 header with options, else 0. A number, not a bool: BPF has no conditional
    /// move, so a bool would become a branch, and each branch doubles what the verifier explores.
    pub with_options: u64,
}

/// Parses a frame; `Err` is the pass counter that explains why the balancer leaves it alone.
#[inline(always)]
pub fn parse_packet(ctx: &XdpContext) -> Result<Packet, Counter> {
    let l2 = parse_l2(ctx).ok_or(Counter::PassMalformed)?;
    match l2.ether_type {
        ETH_P_IP => parse_ipv4(ctx, l2.l3_off),
        ETH_P_IPV6 => parse_ipv6(ctx, l2.l3_off),
        _ => Err(Counter::PassNotIp),
    }
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_off: usize) -> Result<Packet, Counter> {
    let ip: Ipv4Hdr = read_at(ctx, l3_off).ok_or(Counter::PassMalformed)?;
    if ip.ver_ihl >> 4 != 4 {
        return Err(Counter::PassMalformed);
    }
    // Masked to 4 bits, so the header length is bounded (20..=60) for the verifier.
    let ihl = (ip.ver_ihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(Counter::PassMalformed);
    }
    let hdr_len = ihl * 4;
    let ip_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip_len < hdr_len || l3_off + ip_len > frame_len(ctx) {
        return Err(Counter::PassMalformed);
    }
    let frag = u16::from_be_bytes(ip.frag_off);
    // More-fragments bit or a non-zero offset.
    if frag & 0x3fff != 0 {
        return Err(Counter::PassFragment);
    }
    if ip.proto != IPPROTO_TCP {
        return Err(Counter::PassNotTcp);
    }
    if ip_len < hdr_len + TCP_HLEN {
        return Err(Counter::PassMalformed);
    }
    let tcp: TcpHdr = read_at(ctx, l3_off + hdr_len).ok_or(Counter::PassMalformed)?;
    Ok(Packet {
        family: AF_INET,
        l3_off,
        ip_len,
        src: words_v4(ip.src),
        dst: words_v4(ip.dst),
        sport_be: u16::from_ne_bytes(tcp.sport),
        dport_be: u16::from_ne_bytes(tcp.dport),
        tcp_flags: tcp.flags,
        first_word: [ip.ver_ihl, ip.tos, ip.tot_len[0], ip.tot_len[1]],
        ttl: ip.ttl,
        // ihl is 5..=15, so this is 0 for 5 and 1 above, without a comparison.
        with_options: ((ihl - 5 + 15) >> 4) as u64,
    })
}

/// Extension headers that may precede TCP; a packet carrying one is passed, not balanced.
#[inline(always)]
fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3_off: usize) -> Result<Packet, Counter> {
    let ip: Ipv6Hdr = read_at(ctx, l3_off).ok_or(Counter::PassMalformed)?;
    if ip.vtc_flow[0] >> 4 != 6 {
        return Err(Counter::PassMalformed);
    }
    let ip_len = IPV6_HLEN + u16::from_be_bytes(ip.payload_len) as usize;
    if l3_off + ip_len > frame_len(ctx) {
        return Err(Counter::PassMalformed);
    }
    if ip.next_header != IPPROTO_TCP {
        if is_ipv6_extension(ip.next_header) {
            return Err(Counter::PassIpv6ExtHeaders);
        }
        return Err(Counter::PassNotTcp);
    }
    if ip_len < IPV6_HLEN + TCP_HLEN {
        return Err(Counter::PassMalformed);
    }
    let tcp: TcpHdr = read_at(ctx, l3_off + IPV6_HLEN).ok_or(Counter::PassMalformed)?;
    Ok(Packet {
        family: AF_INET6,
        l3_off,
        ip_len,
        src: words_v6(ip.src),
        dst: words_v6(ip.dst),
        sport_be: u16::from_ne_bytes(tcp.sport),
        dport_be: u16::from_ne_bytes(tcp.dport),
        tcp_flags: tcp.flags,
        first_word: ip.vtc_flow,
        ttl: ip.hop_limit,
        with_options: 0,
    })
}
