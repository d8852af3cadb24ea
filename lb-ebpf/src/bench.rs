//! Benchmark-only programs, never attached: `BPF_PROG_TEST_RUN` repeats a program on one buffer
//! without restoring it, so `lb_reset` puts the template frame back before each repetition and
//! tail-calls the program under test; `lb_reset_only` measures that harness; `lb_floor` is the least
//! an IPIP load balancer can do (parse, encapsulate toward a fixed MAC, transmit).

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS, XDP_TX},
    helpers::{bpf_xdp_adjust_head, bpf_xdp_store_bytes},
    macros::map,
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    AF_INET, AF_INET6,
    bench::{BENCH_F_VARY_FLOW, BENCH_FRAME_MAX, BenchTemplate},
};

use crate::{
    encap,
    parse::{ETH_P_IP, ETH_P_IPV6, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, Packet, opaque, read_at},
    route::NextHop,
};

#[map]
static LB_BENCH_TMPL: Array<BenchTemplate> = Array::with_max_entries(1, 0);

#[map]
static LB_BENCH_JMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Repetitions so far on this CPU: the varying part of each new flow.
#[map]
static LB_BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Puts the template frame back (length and bytes), with a fresh flow if the template asks.
#[inline(always)]
fn restore(ctx: &XdpContext) -> Result<(), ()> {
    let t = LB_BENCH_TMPL.get_ptr_mut(0).ok_or(())?;
    // SAFETY: map value pointer from the kernel.
    let (len, flags, sport_off, src_low_off) = unsafe {
        (
            (*t).len as usize,
            (*t).flags,
            (*t).sport_off,
            (*t).src_low_off,
        )
    };
    if len == 0 || len > BENCH_FRAME_MAX {
        return Err(());
    }
    // Opaque, so LLVM cannot fold `data + len` into pointer arithmetic the verifier refuses.
    let cur = opaque(ctx.data_end() - ctx.data());
    // The programs under test only grow or shrink the frame at its head.
    let delta = cur as i32 - len as i32;
    // SAFETY: `ctx.ctx` is the program's context.
    if delta != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(());
    }
    // SAFETY: the frame buffer of the map value holds at least `len` bytes.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, (*t).frame.as_mut_ptr().cast(), len as u32) } != 0 {
        return Err(());
    }
    if flags & BENCH_F_VARY_FLOW != 0 {
        let seq = next_seq();
        store(ctx, sport_off, (seq as u16).to_be_bytes())?;
        store(ctx, src_low_off, ((seq >> 16) as u16).to_be_bytes())?;
    }
    Ok(())
}

#[inline(always)]
fn next_seq() -> u32 {
    match LB_BENCH_SEQ.get_ptr_mut(0) {
        Some(p) => {
            // SAFETY: per-CPU slot.
            let seq = unsafe { *p }.wrapping_add(1);
            unsafe { *p = seq };
            seq
        }
        None => 0,
    }
}

#[inline(always)]
fn store(ctx: &XdpContext, off: u32, mut bytes: [u8; 2]) -> Result<(), ()> {
    // SAFETY: a 2-byte stack buffer; the helper checks the offset against the frame.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, off, bytes.as_mut_ptr().cast(), 2) } != 0 {
        return Err(());
    }
    Ok(())
}

#[inline(always)]
pub fn reset_then_jump(ctx: &XdpContext) -> u32 {
    if restore(ctx).is_err() {
        return XDP_ABORTED;
    }
    // SAFETY: slot 0 holds an XDP program (or nothing, and the call falls through).
    unsafe { LB_BENCH_JMP.tail_call(ctx, 0) };
    XDP_ABORTED
}

#[inline(always)]
pub fn reset_only(ctx: &XdpContext) -> u32 {
    if restore(ctx).is_err() {
        return XDP_ABORTED;
    }
    XDP_TX
}

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
    let Some(l2) = crate::parse::parse_l2(ctx) else {
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
