//! The bench harness in the kernel: `BPF_PROG_TEST_RUN` repeats a program on one buffer without
//! restoring it, so `lb_reset` puts the template frame back before each repetition and tail-calls
//! the program under test (`LB_BENCH_JMP[0]`, filled by the userspace harness with the production
//! `lb_balancer` or with `lb_floor`); `lb_reset_only` measures that harness.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_TX},
    helpers::{bpf_xdp_adjust_head, bpf_xdp_store_bytes},
    macros::map,
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::bench::{BENCH_F_VARY_FLOW, BENCH_FRAME_MAX, BenchTemplate};
use lb_ebpf::parse::opaque;

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
