//! Expires idle flows and keeps the per-backend active-connection counters exact.
//!
//! The XDP program counts a connection up on the client's first ACK and down on its FIN/RST. Flows
//! that vanish without either (a client that disappeared, an eviction) would leave the counter
//! inflated, so every sweep deletes flows idle longer than their timeout and then sets each backend's
//! counter to the number of counted flows the table really holds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lb_common::{FLOW_F_CLOSED, FLOW_F_COUNTED, FLOW_F_ESTABLISHED, FlowEntry, FlowKey};

use crate::dataplane::{DataplaneError, MapsView, now_coarse_ns};

/// Idle timeouts by flow state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// Flows past the handshake (IPVS: 900 s).
    pub established: Duration,
    /// Flows that only ever sent a SYN (a SYN flood's residue).
    pub half_open: Duration,
    /// Flows whose client sent FIN/RST, kept for the last ACKs.
    pub closed: Duration,
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        FlowTimeouts {
            established: Duration::from_secs(900),
            half_open: Duration::from_secs(30),
            closed: Duration::from_secs(10),
        }
    }
}

impl FlowTimeouts {
    fn for_flags(&self, flags: u32) -> Duration {
        if flags & FLOW_F_CLOSED != 0 {
            self.closed
        } else if flags & FLOW_F_ESTABLISHED != 0 {
            self.established
        } else {
            self.half_open
        }
    }
}

/// What one sweep saw and did.
#[derive(Debug, Default, Clone)]
pub struct SweepReport {
    pub flows: usize,
    pub expired: usize,
    /// Counted flows per backend id after the sweep.
    pub active: BTreeMap<u32, u64>,
    /// Backend ids any remaining flow refers to.
    pub in_use: BTreeSet<u32>,
    pub counters_corrected: usize,
    /// Flows the data plane inserted since it was loaded (`flow_new` − `flow_insert_failed`).
    pub inserted_total: u64,
    /// Flows that lost their way to a new one since the maps were created (`flow_evicted`).
    pub evicted_total: u64,
}

/// Decides which flows are expired at `now_ns` (pure; unit-tested). A flow is idle since its
/// `last_seen_ns` but not since before `aged_from_ns`: the program's clock may have stood still
/// until then (see `Dataplane::clock_started_ns`), so its flows were not touched.
pub fn expired_flows(
    flows: &[(FlowKey, FlowEntry)],
    now_ns: u64,
    aged_from_ns: u64,
    timeouts: &FlowTimeouts,
) -> Vec<usize> {
    flows
        .iter()
        .enumerate()
        .filter(|(_, (_, e))| {
            let idle = now_ns.saturating_sub(e.last_seen_ns.max(aged_from_ns));
            idle > timeouts.for_flags(e.flags).as_nanos() as u64
        })
        .map(|(i, _)| i)
        .collect()
}

/// One sweep: expire idle flows, then reconcile the connection counters of `backend_ids`.
///
/// It works on its own view of the pinned maps (`maps`), so it can run on a thread of its own:
/// at fleet size a sweep reads millions of flows. `aged_from_ns` is
/// [`crate::dataplane::Dataplane::clock_started_ns`].
pub fn sweep(
    maps: &mut MapsView,
    aged_from_ns: u64,
    timeouts: &FlowTimeouts,
    backend_ids: &BTreeSet<u32>,
) -> Result<SweepReport, DataplaneError> {
    // Counters that move while the table is scanned belong to flows the scan may or may not have
    // seen: such a backend is left for a quieter sweep rather than set to a wrong count.
    let before = maps.all_backend_conns()?;
    let flows = maps.flows()?;
    let now = now_coarse_ns();
    let expired = expired_flows(&flows, now, aged_from_ns, timeouts);
    let expired_set: BTreeSet<usize> = expired.iter().copied().collect();
    for i in &expired {
        // A flow evicted, closed or touched meanwhile stays as the program left it.
        let (key, seen) = &flows[*i];
        let _ = maps.delete_flow(key, seen);
    }
    let mut report = SweepReport {
        flows: flows.len() - expired.len(),
        expired: expired.len(),
        ..Default::default()
    };
    let counters = maps.counters()?;
    let counter = |c: lb_common::Counter| {
        counters
            .iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, n)| *n)
    };
    report.inserted_total = counter(lb_common::Counter::FlowNew)
        .saturating_sub(counter(lb_common::Counter::FlowInsertFailed));
    report.evicted_total = counter(lb_common::Counter::FlowEvicted);
    for (i, (_, e)) in flows.iter().enumerate() {
        if expired_set.contains(&i) {
            continue;
        }
        report.in_use.insert(e.backend_id);
        if e.flags & FLOW_F_COUNTED != 0 {
            *report.active.entry(e.backend_id).or_default() += 1;
        }
    }
    let after = maps.all_backend_conns()?;
    for id in backend_ids {
        let want = report.active.get(id).copied().unwrap_or(0);
        let Some(&have) = after.get(*id as usize) else {
            continue;
        };
        if have != want && before.get(*id as usize) == Some(&have) {
            // Only a connection established or closed between this read and the write is lost,
            // and the next sweep corrects it.
            maps.set_backend_conns(*id, want)?;
            report.counters_corrected += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(flags: u32, last_seen_ns: u64) -> (FlowKey, FlowEntry) {
        (
            FlowKey::default(),
            FlowEntry {
                backend_id: 1,
                flags,
                last_seen_ns,
            },
        )
    }

    #[test]
    fn each_state_has_its_own_timeout() {
        let t = FlowTimeouts {
            established: Duration::from_secs(100),
            half_open: Duration::from_secs(10),
            closed: Duration::from_secs(1),
        };
        let s = 1_000_000_000u64;
        let now = 1000 * s;
        let flows = vec![
            flow(FLOW_F_COUNTED | FLOW_F_ESTABLISHED, now - 50 * s), // established, fresh
            flow(FLOW_F_COUNTED | FLOW_F_ESTABLISHED, now - 150 * s), // established, idle
            flow(FLOW_F_COUNTED, now - 5 * s),                       // half-open, fresh
            flow(FLOW_F_COUNTED, now - 20 * s),                      // half-open, idle
            flow(FLOW_F_ESTABLISHED | FLOW_F_CLOSED, now - 2 * s),   // closed, idle
            flow(FLOW_F_ESTABLISHED, now + s),                       // touched after `now` was read
        ];
        assert_eq!(expired_flows(&flows, now, 0, &t), vec![1, 3, 4]);
    }

    #[test]
    fn flows_age_no_earlier_than_the_clock_started() {
        let t = FlowTimeouts::default();
        let s = 1_000_000_000u64;
        let now = 10_000 * s;
        // Untouched since an earlier daemon's clock stopped 2,000 s ago; this one started it 20 s
        // ago: the established flow is kept, the half-open (30 s) and closed (10 s) ones are not.
        let flows = vec![
            flow(FLOW_F_COUNTED | FLOW_F_ESTABLISHED, now - 2000 * s),
            flow(FLOW_F_COUNTED, now - 2000 * s),
            flow(FLOW_F_ESTABLISHED | FLOW_F_CLOSED, now - 2000 * s),
        ];
        assert_eq!(expired_flows(&flows, now, now - 20 * s, &t), vec![2]);
        assert_eq!(expired_flows(&flows, now, now - 40 * s, &t), vec![1, 2]);
        assert_eq!(expired_flows(&flows, now, 0, &t), vec![0, 1, 2]);
    }
}
