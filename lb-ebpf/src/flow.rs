//! The flow table, the active-connection counts and session persistence: which backend a packet's
//! connection uses.
//!
//! State comes only from a SYN. A SYN creates a half-open flow (not counted); the client's first ACK
//! makes it established (counted, persistence written); FIN/RST closes it (the unit returned, the
//! entry kept on its backend until the closed timeout). Any other packet without a flow entry is
//! forwarded by the service's consistent hash and creates nothing, so spoofed ACKs cannot fill the
//! table; above `--max-new-flows-per-cpu` new SYNs are forwarded the same way (the new-flow guard).
//!
//! Flags change only through atomic read-modify-writes, so two CPUs seeing packets of one flow at
//! once (a FIN and the last ACK, two ACKs of the handshake) count the connection up and down once.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_coarse_ns};
use lb_common::{
    Counter, FLOW_F_CLOSED, FLOW_F_COUNTED, FLOW_F_ESTABLISHED, FlowEntry, FlowKey, LbConfig,
    PersistEntry, PersistKey, ServiceEntry,
    addr::mask_words,
    limits::{FLOW_TOUCH_INTERVAL_NS, NEW_FLOW_GUARD_WINDOW_NS},
};

use crate::{
    flow_table::{self, Insert, Way},
    flows::LbFlows,
    lookup::{backend, now_ns as now_cached, takes_new_flows},
    maps::{GuardState, LB_BE_CONNS, LB_GUARD, LB_PERSIST},
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    select::{Choice, consistent, schedule},
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

/// Sets `bits` in a flow's flags atomically; returns the flags before. `backend_id` and `flags` are
/// the low and high halves of the entry's first 8 bytes (little-endian BPF), and the mask leaves
/// the backend id alone.
#[inline(always)]
fn flags_set(p: *mut FlowEntry, bits: u32) -> u32 {
    let mut v = u64::from(bits) << 32;
    // SAFETY: `p` is an 8-byte aligned map value (FlowEntry is 8-byte aligned) that lives as long
    // as the map; BPF_ATOMIC | BPF_OR | BPF_FETCH.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_or((u64 *)({p} + 0), {v})",
            p = in(reg) p,
            v = inout(reg) v,
            options(nostack),
        );
    }
    (v >> 32) as u32
}

/// Clears `bits` in a flow's flags atomically; returns the flags before.
#[inline(always)]
fn flags_clear(p: *mut FlowEntry, bits: u32) -> u32 {
    let mut v = !(u64::from(bits) << 32);
    // SAFETY: as in `flags_set`; BPF_ATOMIC | BPF_AND | BPF_FETCH.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_and((u64 *)({p} + 0), {v})",
            p = in(reg) p,
            v = inout(reg) v,
            options(nostack),
        );
    }
    (v >> 32) as u32
}

/// A SYN without ACK: the only packet that may create state.
#[inline(always)]
fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Finds or creates the flow of a packet. `Err` is the drop counter.
#[inline(always)]
pub fn assign(
    svc: &ServiceEntry,
    key: &FlowKey,
    tcp_flags: u8,
    cfg: &LbConfig,
) -> Result<Assignment, Counter> {
    let syn = is_syn(tcp_flags);
    let place = flow_table::place(key, cfg.flow_buckets);
    flow_table::warm::<LbFlows>(&place);
    // Where time decides (the new-flow guard, persistence timeouts, a new entry's age) the kernel's
    // clock, read once; on every other packet the daemon's, where a stale time only delays
    // bookkeeping (the flow touch) and costs no helper call.
    let now = if syn { now_ns() } else { now_cached(cfg) };
    let guarded = syn && over_guard(cfg.max_new_flows_per_cpu, now);
    let mut found = None;
    if syn && !guarded {
        // Insert first: a SYN is almost always new, and the insert finds a retransmitted one's
        // entry on its way (it keeps its first backend).
        let choice = match persisted(svc, key, now) {
            Some(c) => {
                count(Counter::PersistHit);
                c
            }
            None => schedule(svc, key, cfg.hash_seed)?,
        };
        let closing = tcp_flags & (TCP_FIN | TCP_RST) != 0;
        let flags = if closing { FLOW_F_CLOSED } else { 0 };
        let inserted = flow_table::insert::<LbFlows>(&place, key, choice.id, flags, now);
        let new = Assignment {
            choice,
            new_flow: 1,
        };
        match inserted {
            Insert::Inserted => {
                count(Counter::FlowNew);
                return Ok(new);
            }
            Insert::Evicted(unit) => {
                count(Counter::FlowNew);
                count(Counter::FlowEvicted);
                if unit != flow_table::NO_UNIT {
                    conns_add(unit, MINUS_ONE);
                }
                return Ok(new);
            }
            Insert::Exists(way) => found = Some(way),
            Insert::Failed => {
                count(Counter::FlowNew);
                count(Counter::FlowInsertFailed);
                return Ok(new);
            }
        }
    }
    let Some(way) = found.or_else(|| flow_table::find::<LbFlows>(&place, key)) else {
        // No state and none to create: the consistent hash, the same on every LB of a fleet.
        count(if syn {
            Counter::FlowGuardBypass
        } else {
            Counter::FlowMissNonSyn
        });
        return Ok(Assignment {
            choice: consistent(svc, key, cfg.hash_seed)?,
            new_flow: u64::from(syn),
        });
    };
    let p = way.entry();
    // SAFETY: flow table value pointer; its flags change only atomically (below), its backend id
    // only when the backend is gone.
    // Read field by field: no copy of the entry in the stack frame.
    let (backend_id, seen) = unsafe {
        (
            (*p).backend_id,
            Seen {
                flags: (*p).flags,
                at_ns: (*p).last_seen_ns,
            },
        )
    };
    if let Some(be) = backend(backend_id)
        && be.carries_flows()
        && be.service_id == svc.id
    {
        count(Counter::FlowHit);
        advance(&way, seen, backend_id, svc, key, tcp_flags, now);
        return Ok(Assignment {
            choice: Choice {
                id: backend_id,
                entry: be,
            },
            new_flow: 0,
        });
    }
    // The flow's backend is gone (down or removed): move the flow; its unit follows it.
    let choice = schedule(svc, key, cfg.hash_seed)?;
    count(Counter::FlowRescheduled);
    // SAFETY: as above; a u32 store leaves the flags half alone.
    unsafe { (*p).backend_id = choice.id };
    if seen.flags & FLOW_F_COUNTED != 0 {
        conns_add(backend_id, MINUS_ONE);
        conns_add(choice.id, ONE);
    }
    advance(&way, seen, choice.id, svc, key, tcp_flags, now);
    Ok(Assignment {
        choice,
        new_flow: 0,
    })
}

/// The backend of a flow for a packet that must not change any state (an ICMP error about the
/// flow): its entry's backend while that one carries flows, else the consistent hash, where the
/// flow's packets without an entry go too.
#[inline(always)]
pub fn backend_without_state(
    svc: &ServiceEntry,
    key: &FlowKey,
    cfg: &LbConfig,
) -> Result<Choice, Counter> {
    // SAFETY: the value is copied out at once.
    if let Some(way) = flow_table::find::<LbFlows>(&flow_table::place(key, cfg.flow_buckets), key)
        && let entry = unsafe { *way.entry() }
        && let Some(be) = backend(entry.backend_id)
        && be.carries_flows()
        && be.service_id == svc.id
    {
        return Ok(Choice {
            id: entry.backend_id,
            entry: be,
        });
    }
    consistent(svc, key, cfg.hash_seed)
}

/// A flow entry's flags and time as the packet found them.
#[derive(Clone, Copy)]
struct Seen {
    flags: u32,
    at_ns: u64,
}

/// The flow's state after this packet: established on the client's first ACK, closed on FIN/RST,
/// half-open again on a SYN that reuses a closed flow's ports; and (rarely) its time.
#[inline(always)]
fn advance(
    way: &Way,
    entry: Seen,
    backend_id: u32,
    svc: &ServiceEntry,
    key: &FlowKey,
    tcp_flags: u8,
    now: u64,
) {
    let p = way.entry();
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        if entry.flags & FLOW_F_CLOSED == 0 {
            flags_set(p, FLOW_F_CLOSED);
            if flags_clear(p, FLOW_F_COUNTED) & FLOW_F_COUNTED != 0 {
                conns_add(backend_id, MINUS_ONE);
                count(Counter::ConnClosed);
            }
        }
    } else if is_syn(tcp_flags) {
        if entry.flags & FLOW_F_CLOSED != 0 {
            // A new connection on the ports of a closed one: half-open again, same backend.
            flags_clear(p, FLOW_F_CLOSED | FLOW_F_ESTABLISHED | FLOW_F_COUNTED);
        }
    } else if tcp_flags & TCP_ACK != 0 && entry.flags & (FLOW_F_ESTABLISHED | FLOW_F_CLOSED) == 0 {
        let before = flags_set(p, FLOW_F_ESTABLISHED | FLOW_F_COUNTED);
        if before & (FLOW_F_COUNTED | FLOW_F_CLOSED) == 0 {
            conns_add(backend_id, ONE);
            count(Counter::FlowEstablished);
            remember(svc, key, backend_id, now);
        } else if before & (FLOW_F_COUNTED | FLOW_F_CLOSED) == FLOW_F_CLOSED {
            // A FIN/RST closed it meanwhile on another CPU: it holds no unit.
            flags_clear(p, FLOW_F_COUNTED);
        }
    }
    // Writing the time only when stale keeps established flows from dirtying a shared cache line
    // per packet. The daemon's clock may be a tick behind the kernel's that stamped a new entry.
    if now.saturating_sub(entry.at_ns) >= FLOW_TOUCH_INTERVAL_NS {
        // SAFETY: see `assign`; the time is its own 8 bytes.
        unsafe { (*p).last_seen_ns = now };
        way.touch(now);
    }
}

/// Counts a new flow against this CPU's budget; true when the budget of the current window is
/// spent (the SYN then creates no state).
#[inline(always)]
fn over_guard(limit: u32, now: u64) -> bool {
    if limit == 0 {
        return false;
    }
    let Some(g) = LB_GUARD.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot; XDP does not nest on one CPU.
    unsafe {
        let state: &mut GuardState = &mut *g;
        if now.wrapping_sub(state.window_start_ns) >= NEW_FLOW_GUARD_WINDOW_NS {
            state.window_start_ns = now;
            state.new_flows = 0;
        }
        state.new_flows += 1;
        state.new_flows > u64::from(limit)
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
fn persisted(svc: &ServiceEntry, key: &FlowKey, now: u64) -> Option<Choice> {
    if svc.persist_timeout_s == 0 {
        return None;
    }
    // SAFETY: copied out at once.
    let entry = unsafe { LB_PERSIST.get(persist_key(svc, key)).copied() }?;
    let timeout_ns = u64::from(svc.persist_timeout_s) * 1_000_000_000;
    if now.wrapping_sub(entry.last_seen_ns) >= timeout_ns {
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

/// Records the client's backend once a flow of it is established (a spoofed SYN writes nothing);
/// every established flow of the client renews it.
#[inline(always)]
fn remember(svc: &ServiceEntry, key: &FlowKey, backend_id: u32, now: u64) {
    if svc.persist_timeout_s == 0 {
        return;
    }
    let entry = PersistEntry {
        backend_id,
        _pad: 0,
        last_seen_ns: now,
    };
    // A failed insert only loses stickiness for this client.
    let _ = LB_PERSIST.insert(persist_key(svc, key), entry, u64::from(BPF_ANY));
}
