//! Next hop toward a backend: `bpf_fib_lookup` gives the egress interface, both MAC addresses and
//! the MTU check of the encapsulated packet. Its results are cached per CPU and backend for a short
//! time (`NEXTHOP_CACHE_NS`), because the lookup is the most expensive step of an established-flow
//! packet (IPv6 especially).

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup,
    },
    helpers::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_common::{AF_INET, Counter, LbConfig};

use crate::{
    encap::NextHop,
    maps::LB_NH_CACHE,
    parse::{IPPROTO_IPIP, IPPROTO_IPV6},
};

/// How long a cached next hop is used before the route is looked up again. Route and neighbour
/// changes (userspace keeps next hops resolved) reach the data plane within this time.
pub const NEXTHOP_CACHE_NS: u64 = 50_000_000;

/// A `bpf_fib_lookup` result for one backend, on one CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedHop {
    /// The backend address the route was looked up for (a backend id may be reused).
    pub addr: [u32; 4],
    /// The interface the packets came in on (the lookup depends on it).
    pub ingress: u32,
    pub ifindex: u32,
    /// The longest outer packet the lookup let through: longer ones are looked up again, so the
    /// MTU check still happens.
    pub max_len: u32,
    pub _pad: u32,
    pub expires_ns: u64,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad2: [u8; 4],
}

/// The kernel's address family numbers (not `lb_common`'s tags).
const KERNEL_AF_INET: u8 = 2;
const KERNEL_AF_INET6: u8 = 10;

/// Routes the outer packet (`outer_len` bytes of IP) from our source address to the backend.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    cfg: &LbConfig,
    family: u8,
    dst: &[u32; 4],
    outer_len: u32,
) -> Result<NextHop, Counter> {
    // SAFETY: plain-old-data kernel struct; all-zero is its documented initial state.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_1.tot_len = outer_len as u16;
    if family == AF_INET {
        params.family = KERNEL_AF_INET;
        params.l4_protocol = IPPROTO_IPIP;
        params.__bindgen_anon_3.ipv4_src = cfg.src_v4;
        params.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        params.family = KERNEL_AF_INET6;
        params.l4_protocol = IPPROTO_IPV6;
        params.__bindgen_anon_3.ipv6_src = cfg.src_v6;
        params.__bindgen_anon_4.ipv6_dst = *dst;
    }
    // SAFETY: `params` is a valid, fully initialised lookup struct of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Ok(NextHop {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
        });
    }
    if rc == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        // SAFETY: on FRAG_NEEDED the kernel writes the route's MTU into this union member.
        crate::icmp::note_mtu(u32::from(unsafe { params.__bindgen_anon_1.mtu_result }));
        return Err(Counter::DropMtu);
    }
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return Err(Counter::DropNoNeighbour);
    }
    Err(Counter::DropNoRoute)
}

/// `next_hop`, answered from the per-CPU cache when a fresh entry for this backend, address and
/// ingress interface covers a packet this long. Failures are never cached.
#[inline(always)]
pub fn next_hop_cached(
    ctx: &XdpContext,
    cfg: &LbConfig,
    backend_id: u32,
    family: u8,
    dst: &[u32; 4],
    outer_len: u32,
) -> Result<NextHop, Counter> {
    let Some(c) = LB_NH_CACHE.get_ptr_mut(backend_id) else {
        return next_hop(ctx, cfg, family, dst, outer_len);
    };
    // SAFETY: per-CPU map value; nothing else writes it while this program runs on this CPU.
    let cached = unsafe { &mut *c };
    let now = crate::lookup::now_ns(cfg);
    let ingress = ctx.ingress_ifindex() as u32;
    let same = cached.addr == *dst && cached.ingress == ingress && cached.expires_ns > now;
    if same && outer_len <= cached.max_len {
        return Ok(NextHop {
            ifindex: cached.ifindex,
            smac: cached.smac,
            dmac: cached.dmac,
        });
    }
    let hop = next_hop(ctx, cfg, family, dst, outer_len)?;
    if same {
        // A longer packet passed the MTU check of the same route.
        cached.max_len = outer_len;
    } else {
        *cached = CachedHop {
            addr: *dst,
            ingress,
            ifindex: hop.ifindex,
            max_len: outer_len,
            _pad: 0,
            expires_ns: now + NEXTHOP_CACHE_NS,
            smac: hop.smac,
            dmac: hop.dmac,
            _pad2: [0; 4],
        };
    }
    Ok(hop)
}
