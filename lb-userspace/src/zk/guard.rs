//! Mass-removal guard.
//!
//! When many ephemeral backend nodes vanish at once, the likely cause is ZooKeeper itself (sessions
//! expiring because the ensemble is sick), not the backends. So if one update would remove more than
//! `max_removal_share` of a service's backends, the missing backends are held (kept forwarding) for
//! `grace`, and the hold is logged; when the grace ends they go. Smaller removals apply at once.
//!
//! Not counted as removals: backends that were already draining or at weight 0 (they were leaving on
//! purpose: `lb register` drains before it deletes its node), and whole services that were deleted
//! (deleting a service node is an explicit operator action).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{BackendSpec, DesiredState};

/// Defaults: hold when more than half of a service's backends vanish at once, for 60 s (longer than
/// a typical session timeout, so backends whose sessions come back re-register within it).
pub const DEFAULT_MAX_REMOVAL_SHARE: f64 = 0.5;
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardConfig {
    /// Share of a service's backends (0.0..=1.0) one update may remove without a hold.
    pub max_removal_share: f64,
    pub grace: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_removal_share: DEFAULT_MAX_REMOVAL_SHARE,
            grace: DEFAULT_GRACE,
        }
    }
}

/// What the guard did in one pass, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardEvent {
    /// These backends vanished in a mass removal and are kept until the grace ends.
    Held {
        service: String,
        backends: Vec<SocketAddr>,
        total: usize,
    },
    /// The grace ended: these held backends are removed now.
    Released {
        service: String,
        backends: Vec<SocketAddr>,
    },
}

#[derive(Clone, Debug)]
struct Held {
    backend: BackendSpec,
    since: Instant,
}

/// Remembers what it let through last time and which backends it holds.
#[derive(Debug, Default)]
pub struct MassRemovalGuard {
    config: GuardConfig,
    /// The state the guard returned last time (what the data plane forwards with).
    last_output: DesiredState,
    held: BTreeMap<String, BTreeMap<SocketAddr, Held>>,
}

impl MassRemovalGuard {
    pub fn new(config: GuardConfig) -> MassRemovalGuard {
        MassRemovalGuard {
            config,
            ..Default::default()
        }
    }

    /// Filters `desired`: backends held by the guard are put back. Returns what to apply.
    pub fn filter(
        &mut self,
        mut desired: DesiredState,
        now: Instant,
    ) -> (DesiredState, Vec<GuardEvent>) {
        let mut events = Vec::new();
        let mut held = std::mem::take(&mut self.held);
        held.retain(|name, _| desired.services.contains_key(name));
        for (name, spec) in desired.services.iter_mut() {
            let Some(before) = self.last_output.services.get(name) else {
                continue;
            };
            // The very spec let through last time, nothing held: no backend vanished, nothing
            // to put back (at fleet size most services of an update are such).
            if Arc::ptr_eq(before, spec) && held.get(name).is_none_or(BTreeMap::is_empty) {
                continue;
            }
            let service_held = held.entry(name.clone()).or_default();
            // A backend that came back is no longer held.
            service_held.retain(|addr, _| !spec.backends.contains_key(addr));

            // Backends already held stay held until their grace ends; only new vanishings count.
            let unplanned: Vec<&BackendSpec> = before
                .backends
                .values()
                .filter(|b| !spec.backends.contains_key(&b.addr))
                .filter(|b| !service_held.contains_key(&b.addr))
                .filter(|b| b.takes_new_flows())
                .collect();
            let share = unplanned.len() as f64 / before.backends.len().max(1) as f64;
            if !unplanned.is_empty() && share > self.config.max_removal_share {
                for backend in &unplanned {
                    service_held.insert(
                        backend.addr,
                        Held {
                            backend: (*backend).clone(),
                            since: now,
                        },
                    );
                }
                events.push(GuardEvent::Held {
                    service: name.clone(),
                    backends: unplanned.iter().map(|b| b.addr).collect(),
                    total: before.backends.len(),
                });
            }
            let mut released = Vec::new();
            service_held.retain(|addr, h| {
                let keep = now.saturating_duration_since(h.since) < self.config.grace;
                if !keep {
                    released.push(*addr);
                }
                keep
            });
            if !released.is_empty() {
                events.push(GuardEvent::Released {
                    service: name.clone(),
                    backends: released,
                });
            }
            for h in service_held.values() {
                Arc::make_mut(spec)
                    .backends
                    .insert(h.backend.addr, h.backend.clone());
            }
        }
        held.retain(|_, backends| !backends.is_empty());
        self.held = held;
        self.last_output = desired.clone();
        (desired, events)
    }

    /// When the earliest hold ends (the caller filters again then, even without a new update).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held
            .values()
            .flat_map(|b| b.values())
            .map(|h| h.since + self.config.grace)
            .min()
    }

    /// Backends held now, per service.
    pub fn held_count(&self) -> usize {
        self.held.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackendState, ServiceSpec};

    fn state(backends: &[(u8, BackendState)]) -> DesiredState {
        let mut spec = ServiceSpec::new("web", "198.18.100.1:80".parse().unwrap());
        for (last, st) in backends {
            let mut b = BackendSpec::new(format!("198.18.2.{last}:80").parse().unwrap());
            b.state = *st;
            spec = spec.with_backend(b);
        }
        DesiredState::of([spec])
    }

    fn active(lasts: &[u8]) -> DesiredState {
        let v: Vec<(u8, BackendState)> = lasts.iter().map(|l| (*l, BackendState::Active)).collect();
        state(&v)
    }

    fn lasts(s: &DesiredState) -> Vec<u8> {
        s.services["web"]
            .backends
            .keys()
            .map(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => v4.octets()[3],
                std::net::IpAddr::V6(_) => unreachable!(),
            })
            .collect()
    }

    fn guard() -> MassRemovalGuard {
        MassRemovalGuard::new(GuardConfig {
            max_removal_share: 0.5,
            grace: Duration::from_secs(60),
        })
    }

    #[test]
    fn removals_up_to_the_share_apply_at_once() {
        let mut g = guard();
        let t0 = Instant::now();
        g.filter(active(&[1, 2, 3, 4]), t0);
        let (out, events) = g.filter(active(&[3, 4]), t0);
        assert_eq!(lasts(&out), vec![3, 4], "2 of 4 is exactly the share");
        assert!(events.is_empty());
        assert_eq!(g.next_deadline(), None);
    }

    #[test]
    fn a_hold_outlives_later_small_removals() {
        let mut g = guard();
        let t0 = Instant::now();
        g.filter(active(&[1, 2, 3, 4, 5, 6]), t0);
        g.filter(active(&[5, 6]), t0);
        assert_eq!(g.held_count(), 4);
        // One more of six goes: below the share, so it goes now; the four held stay held.
        let (out, _) = g.filter(active(&[5]), t0 + Duration::from_secs(1));
        assert_eq!(lasts(&out), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_mass_removal_is_held_for_the_grace_then_applied() {
        let mut g = guard();
        let t0 = Instant::now();
        g.filter(active(&[1, 2, 3, 4]), t0);
        let (out, events) = g.filter(active(&[4]), t0);
        assert_eq!(lasts(&out), vec![1, 2, 3, 4], "3 of 4 vanished: held");
        assert_eq!(events.len(), 1);
        assert!(
            matches!(&events[0], GuardEvent::Held { backends, total: 4, .. } if backends.len() == 3)
        );
        assert_eq!(g.next_deadline(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(g.held_count(), 3);

        // An unrelated update during the grace keeps the hold.
        let (out, events) = g.filter(active(&[4, 5]), t0 + Duration::from_secs(30));
        assert_eq!(lasts(&out), vec![1, 2, 3, 4, 5]);
        assert!(events.is_empty());

        let (out, events) = g.filter(active(&[4, 5]), t0 + Duration::from_secs(60));
        assert_eq!(lasts(&out), vec![4, 5]);
        assert!(matches!(&events[0], GuardEvent::Released { backends, .. } if backends.len() == 3));
        assert_eq!(g.next_deadline(), None);
    }

    #[test]
    fn backends_that_come_back_end_their_hold() {
        let mut g = guard();
        let t0 = Instant::now();
        g.filter(active(&[1, 2, 3, 4]), t0);
        g.filter(active(&[]), t0);
        assert_eq!(g.held_count(), 4);
        let (out, _) = g.filter(active(&[1, 2, 3]), t0 + Duration::from_secs(5));
        assert_eq!(lasts(&out), vec![1, 2, 3, 4]);
        assert_eq!(g.held_count(), 1);
    }

    #[test]
    fn draining_backends_leave_at_once() {
        let mut g = guard();
        let t0 = Instant::now();
        g.filter(
            state(&[
                (1, BackendState::Draining),
                (2, BackendState::Draining),
                (3, BackendState::Draining),
                (4, BackendState::Active),
            ]),
            t0,
        );
        let (out, events) = g.filter(active(&[4]), t0);
        assert_eq!(lasts(&out), vec![4]);
        assert!(events.is_empty());
    }

    #[test]
    fn a_deleted_service_is_not_held() {
        let mut g = guard();
        let t0 = Instant::now();
        g.filter(active(&[1, 2, 3, 4]), t0);
        let (out, events) = g.filter(DesiredState::default(), t0);
        assert!(out.services.is_empty());
        assert!(events.is_empty());
    }

    #[test]
    fn a_new_service_is_taken_as_it_is() {
        let mut g = guard();
        let (out, events) = g.filter(active(&[1]), Instant::now());
        assert_eq!(lasts(&out), vec![1]);
        assert!(events.is_empty());
    }
}
