//! Counters. Per-CPU maps (or a CPU's own part of `LB_BE_STATS`), so plain increments are race
//! free.

use aya_ebpf::{Global, helpers::bpf_get_smp_processor_id};
use lb_common::{Counter, DecapCounter, TrafficStats, limits::DEFAULT_MAX_BACKENDS};

use crate::maps::{LB_BE_STATS, LB_DECAP_STATS, LB_STATS, LB_SVC_STATS};

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(p) = LB_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, XDP does not migrate or nest on one CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_decap(counter: DecapCounter) {
    if let Some(p) = LB_DECAP_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: as in `count`.
        unsafe { *p += 1 };
    }
}

/// What happened to one packet of a service or backend.
#[derive(Clone, Copy)]
pub enum Traffic {
    Forwarded { bytes: u64, new_flows: u64 },
    Dropped,
}

#[inline(always)]
fn apply(stats: *mut TrafficStats, traffic: Traffic) {
    // SAFETY: `stats` is a per-CPU map value returned by the kernel.
    let s = unsafe { &mut *stats };
    match traffic {
        Traffic::Forwarded { bytes, new_flows } => {
            s.packets += 1;
            s.bytes += bytes;
            s.new_flows += new_flows;
        }
        Traffic::Dropped => s.drops += 1,
    }
}

#[inline(always)]
pub fn service_traffic(service_id: u32, traffic: Traffic) {
    if let Some(p) = LB_SVC_STATS.get_ptr_mut(service_id) {
        apply(p, traffic);
    }
}

/// Backend slots per CPU in `LB_BE_STATS` (the map's max backends; set by the loader,
/// `lb_common::maps::BACKEND_STATS_STRIDE`).
#[unsafe(no_mangle)]
static LB_BE_STATS_STRIDE: Global<u32> = Global::new(DEFAULT_MAX_BACKENDS);

#[inline(always)]
pub fn backend_traffic(backend_id: u32, traffic: Traffic) {
    let stride = LB_BE_STATS_STRIDE.load();
    if backend_id >= stride {
        return;
    }
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // The map holds stride × possible CPUs, so this stays in u32 and in the map (the lookup
    // checks the bound anyway).
    let index = cpu.wrapping_mul(stride).wrapping_add(backend_id);
    if let Some(p) = LB_BE_STATS.get_ptr_mut(index) {
        apply(p, traffic);
    }
}
