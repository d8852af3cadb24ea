//! The schedulers: pick the backend of a new flow from the service's table.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{
    hash::flow_hash, limits::LEAST_CONN_EXACT_MAX, BackendEntry, Counter, FlowKey, Scheduler, ServiceEntry,
};

use crate::{
    lookup::{backend, takes_new_flows},
    maps::{LB_BE_CONNS, LB_CURSORS, LB_SCHEDULE},
};

/// Table entries tried after the picked one when it cannot take new flows (down or draining).
const MAX_PROBES: u32 = 8;

/// A chosen backend.
#[derive(Clone, Copy)]
pub struct Choice {
    pub id: u32,
    pub entry: BackendEntry,
}

/// Picks the backend of a new flow; `Err` is the drop counter.
#[inline(always)]
pub fn schedule(svc: &ServiceEntry, key: &FlowKey, hash_seed: u32) -> Result<Choice, Counter> {
    let len = svc.table_len;
    if len == 0 {
        return Err(Counter::DropNoBackend);
    }
    match Scheduler::from_u32(svc.scheduler) {
        Some(Scheduler::LeastConn) => least_conn(svc, len),
        Some(Scheduler::RoundRobin) | Some(Scheduler::WeightedRoundRobin) => {
            probe(svc, next_cursor(svc.id) % len, len)
        }
        Some(Scheduler::Random) | Some(Scheduler::WeightedRandom) => probe(svc, random() % len, len),
        Some(Scheduler::Maglev) => probe(svc, flow_hash(key, hash_seed) % len, len),
        None => Err(Counter::DropBadTableEntry),
    }
}

#[inline(always)]
fn random() -> u32 {
    // SAFETY: helper without arguments.
    unsafe { bpf_get_prandom_u32() }
}

/// The per-CPU round-robin cursor of a service, advanced by one.
#[inline(always)]
fn next_cursor(service_id: u32) -> u32 {
    match LB_CURSORS.get_ptr_mut(service_id) {
        Some(p) => {
            // SAFETY: per-CPU slot.
            let cur = unsafe { *p };
            unsafe { *p = cur.wrapping_add(1) };
            cur
        }
        None => 0,
    }
}

/// The backend id at `pos` of the service's table.
#[inline(always)]
fn table_entry(svc: &ServiceEntry, pos: u32) -> Option<u32> {
    LB_SCHEDULE.get(svc.table_offset.wrapping_add(pos)).copied()
}

/// The backend at `pos`, or the next ones when it cannot take new flows. A table entry that is not
/// a backend of this service means a raced table swap or a bug: counted, never followed.
#[inline(always)]
fn probe(svc: &ServiceEntry, pos: u32, len: u32) -> Result<Choice, Counter> {
    let mut pos = pos;
    let mut i = 0;
    while i <= MAX_PROBES {
        let id = table_entry(svc, pos).ok_or(Counter::DropBadTableEntry)?;
        let entry = backend(id).ok_or(Counter::DropBadTableEntry)?;
        if entry.flags & lb_common::BACKEND_F_VALID == 0 || entry.service_id != svc.id {
            return Err(Counter::DropBadTableEntry);
        }
        if takes_new_flows(&entry) {
            return Ok(Choice { id, entry });
        }
        pos += 1;
        if pos >= len {
            pos = 0;
        }
        i += 1;
    }
    Err(Counter::DropNoBackend)
}

#[inline(always)]
fn conns(id: u32) -> u64 {
    match LB_BE_CONNS.get_ptr(id) {
        // SAFETY: map value; a torn read cannot happen on a 64-bit aligned load.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => u64::MAX,
    }
}

/// Is (conns_a, w_a) less loaded than (conns_b, w_b)? conns/weight compared without division.
/// Plain multiplication: checked or saturating u64 multiplies need 128-bit arithmetic, which BPF
/// lacks; connection counts (< 2^32) times weights (< 2^32) cannot overflow u64.
#[inline(always)]
fn less_loaded(conns_a: u64, w_a: u32, conns_b: u64, w_b: u32) -> bool {
    let a = (conns_a & u64::from(u32::MAX)).wrapping_mul(u64::from(w_b));
    let b = (conns_b & u64::from(u32::MAX)).wrapping_mul(u64::from(w_a));
    a < b
}

/// The table entry at `pos` if it is a usable backend of this service.
#[inline(always)]
fn candidate(svc: &ServiceEntry, pos: u32) -> Option<Choice> {
    let id = table_entry(svc, pos)?;
    let entry = backend(id)?;
    if entry.service_id != svc.id || !takes_new_flows(&entry) {
        return None;
    }
    Some(Choice { id, entry })
}

/// Weighted least connections: exact over small lists, power of two choices over large ones.
#[inline(always)]
fn least_conn(svc: &ServiceEntry, len: u32) -> Result<Choice, Counter> {
    let mut best: Option<(Choice, u64)> = None;
    if len <= LEAST_CONN_EXACT_MAX {
        let mut i = 0;
        while i < LEAST_CONN_EXACT_MAX {
            if i >= len {
                break;
            }
            if let Some(c) = candidate(svc, i) {
                best = better(best, c);
            }
            i += 1;
        }
    } else {
        let a = random() % len;
        let b = random() % len;
        if let Some(c) = candidate(svc, a) {
            best = better(best, c);
        }
        if let Some(c) = candidate(svc, b) {
            best = better(best, c);
        }
        if best.is_none() {
            // Both choices unusable: walk on from the first like the other schedulers do.
            return probe(svc, a, len);
        }
    }
    best.map(|(c, _)| c).ok_or(Counter::DropNoBackend)
}

#[inline(always)]
fn better(best: Option<(Choice, u64)>, c: Choice) -> Option<(Choice, u64)> {
    let n = conns(c.id);
    match best {
        Some((b, bn)) if !less_loaded(n, c.entry.weight, bn, b.entry.weight) => Some((b, bn)),
        _ => Some((c, n)),
    }
}
