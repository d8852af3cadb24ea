//! Next hop toward a backend: `bpf_fib_lookup` gives the egress interface, both MAC addresses and
//! the MTU check of the encapsulated packet.

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

use crate::parse::{IPPROTO_IPIP, IPPROTO_IPV6};

/// The kernel's address family numbers (not `lb_common`'s tags).
const KERNEL_AF_INET: u8 = 2;
const KERNEL_AF_INET6: u8 = 10;

/// Where the encapsulated packet leaves.
#[derive(Clone, Copy)]
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

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
        return Err(Counter::DropMtu);
    }
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return Err(Counter::DropNoNeighbour);
    }
    Err(Counter::DropNoRoute)
}
