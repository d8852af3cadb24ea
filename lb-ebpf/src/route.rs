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
    // Backend ids are below the array's size: never taken.
    let c = LB_NH_CACHE
        .get_ptr_mut(backend_id)
        .ok_or(Counter::DropNoRoute)?;
    // SAFETY: per-CPU map value; nothing else writes it while this program runs on this CPU.
    let cached = unsafe { &mut *c };
    let fresh = cached.addr == *dst
        && cached.ingress == ctx.ingress_ifindex() as u32
        && cached.expires_ns > crate::lookup::now_ns(cfg)
        && outer_len <= cached.max_len;
    if !fresh {
        match refresh(
            ctx,
            cfg,
            dst,
            (u64::from(family) << 32) | u64::from(outer_len),
            c,
        ) {
            REFRESHED => {}
            FAILED_MTU => return Err(Counter::DropMtu),
            FAILED_NO_NEIGHBOUR => return Err(Counter::DropNoNeighbour),
            _ => return Err(Counter::DropNoRoute),
        }
    }
    Ok(NextHop {
        ifindex: cached.ifindex,
        smac: cached.smac,
        dmac: cached.dmac,
    })
}

/// What `refresh` returns (one register: a BPF-to-BPF call returns no `Result` of a `NextHop`).
const REFRESHED: u32 = 0;
const FAILED_MTU: u32 = 1;
const FAILED_NO_NEIGHBOUR: u32 = 2;
const FAILED_NO_ROUTE: u32 = 3;

/// Looks the route up and, on success, stores it in the cache entry `c`. A function of its own:
/// the lookup's 64-byte parameter struct then lives in this frame, not in the balancer's (the
/// verifier caps a call chain's stack at 512 bytes). `family_len` is `family << 32 | outer_len`.
#[inline(never)]
fn refresh(
    ctx: &XdpContext,
    cfg: &LbConfig,
    dst: &[u32; 4],
    family_len: u64,
    c: *mut CachedHop,
) -> u32 {
    let family = (family_len >> 32) as u8;
    let outer_len = family_len as u32;
    let hop = match next_hop(ctx, cfg, family, dst, outer_len) {
        Ok(hop) => hop,
        Err(Counter::DropMtu) => return FAILED_MTU,
        Err(Counter::DropNoNeighbour) => return FAILED_NO_NEIGHBOUR,
        Err(_) => return FAILED_NO_ROUTE,
    };
    // SAFETY: per-CPU map value of the caller; nothing else writes it on this CPU.
    let cached = unsafe { &mut *c };
    let ingress = ctx.ingress_ifindex() as u32;
    let now = crate::lookup::now_ns(cfg);
    if cached.addr == *dst && cached.ingress == ingress && cached.expires_ns > now {
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
    REFRESHED
}
