//! The schedulers: pick the backend of a new flow from the service's table.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{
    BackendEntry, Counter, FlowKey, Scheduler, ServiceEntry, hash::flow_hash,
    limits::LEAST_CONN_EXACT_MAX,
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
    pub entry: &'static BackendEntry,
}

/// Picks the backend of a new flow with the service's scheduler; `Err` is the drop counter.
#[inline(always)]
pub fn schedule(svc: &ServiceEntry, key: &FlowKey, hash_seed: u32) -> Result<Choice, Counter> {
    let hash = if svc.scheduler == Scheduler::Maglev as u32 {
        flow_hash(key, hash_seed)
    } else {
        0
    };
    picked(lb_schedule(
        svc.id,
        svc.scheduler,
        svc.table_offset,
        svc.table_len,
        hash,
    ))
}

/// The backend the service's consistent-hash table gives a flow, whatever its scheduler: where
/// packets go that have no flow entry and create none (the same on every LB of a fleet).
#[inline(always)]
pub fn consistent(svc: &ServiceEntry, key: &FlowKey, hash_seed: u32) -> Result<Choice, Counter> {
    picked(lb_schedule(
        svc.id,
        Scheduler::Maglev as u32,
        svc.hash_offset,
        svc.hash_len,
        flow_hash(key, hash_seed),
    ))
}

#[inline(always)]
fn picked(picked: u64) -> Result<Choice, Counter> {
    if picked & PICKED == 0 {
        return Err(counter_from_code(picked as u32));
    }
    let id = picked as u32;
    let entry = backend(id).ok_or(Counter::DropBadTableEntry)?;
    Ok(Choice { id, entry })
}

/// Bit of `lb_schedule`'s result that says the low 32 bits are a backend id (else a `Counter`).
const PICKED: u64 = 1 << 32;

#[inline(always)]
fn counter_from_code(code: u32) -> Counter {
    if code == Counter::DropNoBackend as u32 {
        Counter::DropNoBackend
    } else {
        Counter::DropBadTableEntry
    }
}

/// The scheduler proper, as a global (exported, never inlined) function: the verifier checks it
/// once on its own with unknown arguments, instead of once for every path that reaches it (IPv4 or
/// IPv6, new or rescheduled flow, persistence or not), which multiplied verification work by ten.
///
/// Every scheduler yields a table position and one shared `probe` walks on from it. Returns
/// `PICKED | id`, or the `Counter` of the drop.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_schedule(
    service_id: u32,
    scheduler: u32,
    table_offset: u32,
    len: u32,
    hash: u32,
) -> u64 {
    if len == 0 {
        return Counter::DropNoBackend as u64;
    }
    let pos = match Scheduler::from_u32(scheduler) {
        Some(Scheduler::LeastConn) => match least_conn(service_id, table_offset, len) {
            Some(id) => return PICKED | u64::from(id),
            // Nothing usable among the candidates: probing reports what is wrong with the table.
            None => random() % len,
        },
        Some(Scheduler::RoundRobin) | Some(Scheduler::WeightedRoundRobin) => {
            next_cursor(service_id) % len
        }
        Some(Scheduler::Random) | Some(Scheduler::WeightedRandom) => random() % len,
        Some(Scheduler::Maglev) => hash % len,
        None => return Counter::DropBadTableEntry as u64,
    };
    match probe(service_id, table_offset, pos, len) {
        Ok(id) => PICKED | u64::from(id),
        Err(c) => c as u64,
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

/// The backend id at `pos` of a table (two ids per schedule element).
#[inline(always)]
fn table_entry(table_offset: u32, pos: u32) -> Option<u32> {
    let index = table_offset.wrapping_add(pos);
    let pair = LB_SCHEDULE.get(index >> 1)?;
    Some(if index & 1 == 0 { pair[0] } else { pair[1] })
}

/// The backend at `pos`, or the next ones when it cannot take new flows. A table entry that is not
/// a backend of this service means a raced table swap or a bug: counted, never followed.
#[inline(always)]
fn probe(service_id: u32, table_offset: u32, pos: u32, len: u32) -> Result<u32, Counter> {
    let mut pos = pos;
    let mut i = 0;
    while i <= MAX_PROBES {
        let id = table_entry(table_offset, pos).ok_or(Counter::DropBadTableEntry)?;
        let entry = backend(id).ok_or(Counter::DropBadTableEntry)?;
        if entry.flags & lb_common::BACKEND_F_VALID == 0 || entry.service_id != service_id {
            return Err(Counter::DropBadTableEntry);
        }
        if takes_new_flows(&entry) {
            return Ok(id);
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
        Some(p) => {
            // SAFETY: map value; a torn read cannot happen on a 64-bit aligned load.
            let n = unsafe { core::ptr::read_volatile(p) };
            // The sweeper may reset a counter just before a flow it did not see closes; the decrement
            // then wraps below zero until the next sweep. Read that as no connections, not 2^64.
            if (n as i64) < 0 { 0 } else { n }
        }
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
fn candidate(service_id: u32, table_offset: u32, pos: u32) -> Option<(u32, &'static BackendEntry)> {
    let id = table_entry(table_offset, pos)?;
    let entry = backend(id)?;
    if entry.service_id != service_id || !takes_new_flows(entry) {
        return None;
    }
    Some((id, entry))
}

/// The running best of a least-connections scan.
struct LeastConnScan {
    service_id: u32,
    table_offset: u32,
    best_id: u32,
    best_weight: u32,
    best_conns: u64,
    found: bool,
}

impl LeastConnScan {
    #[inline(always)]
    fn consider(&mut self, pos: u32) {
        let Some((id, entry)) = candidate(self.service_id, self.table_offset, pos) else {
            return;
        };
        let n = conns(id);
        if !self.found || less_loaded(n, entry.weight, self.best_conns, self.best_weight) {
            self.best_id = id;
            self.best_weight = entry.weight;
            self.best_conns = n;
            self.found = true;
        }
    }
}

/// Weighted least connections: exact over small lists, power of two choices over large ones.
#[inline(always)]
fn least_conn(service_id: u32, table_offset: u32, len: u32) -> Option<u32> {
    let mut scan = LeastConnScan {
        service_id,
        table_offset,
        best_id: 0,
        best_weight: 0,
        best_conns: 0,
        found: false,
    };
    if len <= LEAST_CONN_EXACT_MAX {
        let mut i = 0;
        while i < LEAST_CONN_EXACT_MAX {
            if i >= len {
                break;
            }
            scan.consider(i);
            i += 1;
        }
    } else {
        scan.consider(random() % len);
        scan.consider(random() % len);
    }
    if scan.found { Some(scan.best_id) } else { None }
}
