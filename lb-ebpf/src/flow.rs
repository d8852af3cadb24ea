//! The flow table, the active-connection counts and session persistence: which backend a packet's
//! connection uses.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_coarse_ns};
use lb_common::{
    Counter, FLOW_F_CLOSED, FLOW_F_COUNTED, FLOW_F_ESTABLISHED, FlowEntry, FlowKey, PersistEntry,
    PersistKey, ServiceEntry, addr::mask_words, limits::FLOW_TOUCH_INTERVAL_NS,
};

use crate::{
    lookup::{backend, takes_new_flows},
    maps::{LB_BE_CONNS, LB_FLOWS, LB_PERSIST},
    parse::{TCP_FIN, TCP_RST, TCP_SYN},
    select::{Choice, schedule},
    stats::count,
};

/// The backend of a packet and whether the packet started a new flow.
#[derive(Clone, Copy)]
pub struct Assignment {
    pub choice: Choice,
    /// 1 if the packet started a new flow, else 0 (added to stats without a branch).
    pub new_flow: u64,
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Atomically adds `delta` (two's complement, so "minus one" is `u64::MAX`) to a backend's
/// active-connection count; every CPU and userspace share it.
#[inline(always)]
fn conns_add(id: u32, delta: u64) {
    if let Some(p) = LB_BE_CONNS.get_ptr_mut(id) {
        // The BPF target has no atomic read-modify-write in `core`, so emit the instruction
        // (BPF_ATOMIC | BPF_ADD, no fetch) directly.
        // SAFETY: `p` is an 8-byte aligned map value that lives as long as the map.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({p} + 0) += {v}",
                p = in(reg) p,
                v = in(reg) delta,
                options(nostack),
            );
        }
    }
}

const ONE: u64 = 1;
const MINUS_ONE: u64 = u64::MAX;

/// Flags of a flow after this packet, and whether the packet returns the connection unit.
#[inline(always)]
fn next_flags(flags: u32, tcp_flags: u8) -> (u32, bool) {
    let mut flags = flags;
    let mut release = false;
    if tcp_flags & TCP_SYN == 0 {
        flags |= FLOW_F_ESTABLISHED;
    }
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 && flags & FLOW_F_CLOSED == 0 {
        release = flags & FLOW_F_COUNTED != 0;
        flags = (flags | FLOW_F_CLOSED) & !FLOW_F_COUNTED;
    }
    (flags, release)
}

/// Finds or creates the flow of a packet. `Err` is the drop counter.
#[inline(always)]
pub fn assign(
    svc: &ServiceEntry,
    key: &FlowKey,
    tcp_flags: u8,
    hash_seed: u32,
) -> Result<Assignment, Counter> {
    let existing = LB_FLOWS.get_ptr_mut(key);
    if let Some(p) = existing {
        // SAFETY: LRU value pointer from the kernel; concurrent writers only race on the same
        // flow's flags, which at worst repeats an idempotent update.
        let entry = unsafe { *p };
        if let Some(be) = backend(entry.backend_id)
            && be.carries_flows()
            && be.service_id == svc.id
        {
            count(Counter::FlowHit);
            touch(p, &entry, entry.backend_id, tcp_flags);
            return Ok(Assignment {
                choice: Choice {
                    id: entry.backend_id,
                    entry: be,
                },
                new_flow: 0,
            });
        }
    }
    // One scheduling site for new and rescheduled flows keeps the verified program small.
    let remembered = if existing.is_none() {
        persisted(svc, key)
    } else {
        None
    };
    let choice = match remembered {
        Some(c) => {
            count(Counter::PersistHit);
            c
        }
        None => schedule(svc, key, hash_seed)?,
    };
    match existing {
        Some(p) => {
            // SAFETY: as above.
            let entry = unsafe { *p };
            count(Counter::FlowRescheduled);
            // The flow's connection unit follows it to the new backend.
            if entry.flags & FLOW_F_COUNTED != 0 {
                conns_add(entry.backend_id, MINUS_ONE);
                conns_add(choice.id, ONE);
            }
            touch(p, &entry, choice.id, tcp_flags);
            Ok(Assignment {
                choice,
                new_flow: 0,
            })
        }
        None => {
            insert_flow(key, choice.id, tcp_flags);
            remember(svc, key, choice.id);
            Ok(Assignment {
                choice,
                new_flow: 1,
            })
        }
    }
}

/// Updates an existing flow: its backend, its state after this packet, and (rarely) its time.
#[inline(always)]
fn touch(p: *mut FlowEntry, entry: &FlowEntry, backend_id: u32, tcp_flags: u8) {
    let (flags, release) = next_flags(entry.flags, tcp_flags);
    if release {
        conns_add(backend_id, MINUS_ONE);
        count(Counter::ConnClosed);
    }
    let now = now_ns();
    let stale = now.wrapping_sub(entry.last_seen_ns) >= FLOW_TOUCH_INTERVAL_NS;
    // Writing only on change keeps established flows from dirtying a shared cache line per packet.
    if flags != entry.flags || backend_id != entry.backend_id || stale {
        // SAFETY: see `assign`.
        unsafe {
            (*p).backend_id = backend_id;
            (*p).flags = flags;
            (*p).last_seen_ns = now;
        }
    }
}

#[inline(always)]
fn insert_flow(key: &FlowKey, backend_id: u32, tcp_flags: u8) {
    // A first packet that already closes the connection never holds a unit.
    let closing = tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let mut flags = if closing {
        FLOW_F_CLOSED
    } else {
        FLOW_F_COUNTED
    };
    if tcp_flags & TCP_SYN == 0 {
        flags |= FLOW_F_ESTABLISHED;
    }
    let entry = FlowEntry {
        backend_id,
        flags,
        last_seen_ns: now_ns(),
    };
    count(Counter::FlowNew);
    if LB_FLOWS.insert(key, entry, u64::from(BPF_ANY)).is_err() {
        count(Counter::FlowInsertFailed);
        // Without a flow entry nothing would ever return the unit, so take none.
        return;
    }
    if !closing {
        conns_add(backend_id, ONE);
    }
}

#[inline(always)]
fn persist_key(svc: &ServiceEntry, key: &FlowKey) -> PersistKey {
    PersistKey {
        client: mask_words(key.src, key.family, svc.persist_prefix_len),
        service_id: svc.id,
        family: key.family,
        _pad: [0; 3],
    }
}

/// The backend this client used recently, if persistence is on and that backend still takes flows.
#[inline(always)]
fn persisted(svc: &ServiceEntry, key: &FlowKey) -> Option<Choice> {
    if svc.persist_timeout_s == 0 {
        return None;
    }
    // SAFETY: copied out at once.
    let entry = unsafe { LB_PERSIST.get(persist_key(svc, key)).copied() }?;
    let timeout_ns = u64::from(svc.persist_timeout_s) * 1_000_000_000;
    if now_ns().wrapping_sub(entry.last_seen_ns) >= timeout_ns {
        return None;
    }
    let be = backend(entry.backend_id)?;
    if be.service_id != svc.id || !takes_new_flows(&be) {
        return None;
    }
    Some(Choice {
        id: entry.backend_id,
        entry: be,
    })
}

/// Records the client's backend; every new flow of the client renews it.
#[inline(always)]
fn remember(svc: &ServiceEntry, key: &FlowKey, backend_id: u32) {
    if svc.persist_timeout_s == 0 {
        return;
    }
    let entry = PersistEntry {
        backend_id,
        _pad: 0,
        last_seen_ns: now_ns(),
    };
    // A failed insert only loses stickiness for this client.
    let _ = LB_PERSIST.insert(persist_key(svc, key), entry, u64::from(BPF_ANY));
}
