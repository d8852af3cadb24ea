//! Next hop toward a backend: `bpf_fib_lookup` gives the egress interface, both MAC addresses and
//! the MTU check of the encapsulated packet. Its results are cached per backend, shared by every
//! CPU, for a short time (`NEXTHOP_CACHE_NS`), because the lookup is the most expensive step of an
//! established-flow packet (IPv6 especially).

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

/// A `bpf_fib_lookup` result for one backend, shared by every CPU (one array of `--max-backends`
/// entries: a per-CPU one took its size times the possible CPUs, and as many allocations at load).
/// Written under a sequence lock: `seq` is odd while a CPU writes the entry (it took it by a
/// compare-and-swap from even), and a reader that finds it odd or changed across its reads looks
/// the route up itself.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedHop {
    pub seq: u64,
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

/// `next_hop`, answered from the shared cache when a fresh entry for this backend, address and
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
    let ingress = ctx.ingress_ifindex() as u32;
    if let Some(hop) = fresh(c, dst, ingress, crate::lookup::now_ns(cfg), outer_len) {
        return Ok(hop);
    }
    let mut hop = NextHop {
        ifindex: 0,
        smac: [0; 6],
        dmac: [0; 6],
    };
    // Backend id, family and length in one argument (a BPF call takes five).
    let packed = (u64::from(backend_id) << 32) | (u64::from(family) << 24) | u64::from(outer_len);
    match refresh(ctx, cfg, dst, packed, &mut hop) {
        REFRESHED => Ok(hop),
        FAILED_MTU => Err(Counter::DropMtu),
        FAILED_NO_NEIGHBOUR => Err(Counter::DropNoNeighbour),
        _ => Err(Counter::DropNoRoute),
    }
}

/// A volatile load (kept in program order by LLVM; x86 does not reorder loads).
#[inline(always)]
fn load<T: Copy>(p: *const T) -> T {
    // SAFETY: callers pass pointers into a map value.
    unsafe { core::ptr::read_volatile(p) }
}

/// The cached next hop of entry `c` if it is for `dst` via `ingress`, unexpired at `now` and good
/// for `outer_len` bytes, read consistently (the sequence even and unchanged across the reads).
#[inline(always)]
fn fresh(
    c: *const CachedHop,
    dst: &[u32; 4],
    ingress: u32,
    now: u64,
    outer_len: u32,
) -> Option<NextHop> {
    // SAFETY (all field pointers): `c` is a map value pointer.
    let seq = load(unsafe { core::ptr::addr_of!((*c).seq) });
    // Each field checked as it is read, so few values stay live (the balancer's registers are few).
    let addr = load(unsafe { core::ptr::addr_of!((*c).addr) });
    let other_route = (addr[0] ^ dst[0])
        | (addr[1] ^ dst[1])
        | (addr[2] ^ dst[2])
        | (addr[3] ^ dst[3])
        | (load(unsafe { core::ptr::addr_of!((*c).ingress) }) ^ ingress);
    let stale = load(unsafe { core::ptr::addr_of!((*c).expires_ns) }) <= now
        || outer_len > load(unsafe { core::ptr::addr_of!((*c).max_len) });
    let ifindex = load(unsafe { core::ptr::addr_of!((*c).ifindex) });
    // Both MACs as three words (a volatile [u8; 6] is read byte by byte).
    let macs: [u32; 3] = load(unsafe { core::ptr::addr_of!((*c).smac) }.cast::<[u32; 3]>());
    let again = load(unsafe { core::ptr::addr_of!((*c).seq) });
    if other_route != 0 || stale || seq & 1 != 0 || again != seq {
        return None;
    }
    let [w0, w1, w2] = macs.map(u32::to_ne_bytes);
    Some(NextHop {
        ifindex,
        smac: [w0[0], w0[1], w0[2], w0[3], w1[0], w1[1]],
        dmac: [w1[2], w1[3], w2[0], w2[1], w2[2], w2[3]],
    })
}

/// Takes entry `c` for writing: its sequence from the even `seq` to odd, atomically; false when
/// another CPU changed it first (that CPU writes the entry; this one only uses its own lookup).
#[inline(always)]
fn take_for_writing(c: *mut CachedHop, seq: u64) -> bool {
    let mut seen = seq;
    // SAFETY: `seq` is the 8-byte aligned first field of a map value; BPF_ATOMIC | BPF_CMPXCHG
    // compares it with r0, stores the new value if equal and returns what it held in r0.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {n})",
            p = in(reg) core::ptr::addr_of_mut!((*c).seq),
            n = in(reg) seq + 1,
            inout("r0") seen,
            options(nostack),
        );
    }
    seen == seq
}

/// What `refresh` returns (one register: a BPF-to-BPF call returns no `Result` of a `NextHop`).
const REFRESHED: u32 = 0;
const FAILED_MTU: u32 = 1;
const FAILED_NO_NEIGHBOUR: u32 = 2;
const FAILED_NO_ROUTE: u32 = 3;

/// Looks the route up into `out` and, on success, stores it in the backend's cache entry unless
/// another CPU is writing that entry. A function of its own: the lookup's 64-byte parameter struct
/// then lives in this frame, not in the balancer's (the verifier caps a call chain's stack at 512
/// bytes). `packed` is `backend_id << 32 | family << 24 | outer_len` (below 2^24: an IP packet's
/// length is 16 bits).
#[inline(never)]
fn refresh(
    ctx: &XdpContext,
    cfg: &LbConfig,
    dst: &[u32; 4],
    packed: u64,
    out: &mut NextHop,
) -> u32 {
    let family = (packed >> 24) as u8;
    let outer_len = (packed as u32) & 0x00ff_ffff;
    let hop = match next_hop(ctx, cfg, family, dst, outer_len) {
        Ok(hop) => hop,
        Err(Counter::DropMtu) => return FAILED_MTU,
        Err(Counter::DropNoNeighbour) => return FAILED_NO_NEIGHBOUR,
        Err(_) => return FAILED_NO_ROUTE,
    };
    *out = hop;
    let Some(c) = LB_NH_CACHE.get_ptr_mut((packed >> 32) as u32) else {
        return REFRESHED;
    };
    // SAFETY (all field pointers): map value pointer.
    let seq = load(unsafe { core::ptr::addr_of!((*c).seq) });
    if seq & 1 != 0 || !take_for_writing(c, seq) {
        return REFRESHED;
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let now = crate::lookup::now_ns(cfg);
    // This CPU owns the entry until it stores the even sequence; the stores stay in order.
    unsafe {
        let same_route = (*c).addr == *dst && (*c).ingress == ingress && (*c).expires_ns > now;
        if same_route {
            // A longer packet passed the MTU check of the same route.
            if outer_len > (*c).max_len {
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*c).max_len), outer_len);
            }
        } else {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*c).addr), *dst);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*c).ingress), ingress);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*c).ifindex), hop.ifindex);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*c).max_len), outer_len);
            core::ptr::write_volatile(
                core::ptr::addr_of_mut!((*c).expires_ns),
                now + NEXTHOP_CACHE_NS,
            );
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*c).smac), hop.smac);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*c).dmac), hop.dmac);
        }
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*c).seq), seq + 2);
    }
    REFRESHED
}
