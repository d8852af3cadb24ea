//! Active health checks from the load balancer to each backend's real address.
//!
//! - [`check`]: one probe (TCP connect, or HTTP GET with an expected status range);
//! - [`tracker`]: the rise/fall state machine over consecutive probe results (pure);
//! - [`scheduler`]: one tokio task per (address, check) — deduplicated across services, so probe
//!   traffic does not grow with the number of VIPs sharing a backend — each with its own interval
//!   and timeout, so a slow backend never delays the others.
//!
//! The daemon keeps a [`HealthView`] of the results and hands it to the `Applier`, which takes down
//! backends out of their service's table and flags them `BACKEND_F_DOWN` (their established flows
//! are moved), unless the service is in panic mode.

pub mod check;
pub mod scheduler;
pub mod tracker;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::model::HealthCheckSpec;

pub use check::{ProbeError, probe};
pub use scheduler::{HealthChecker, HealthEvent};
pub use tracker::{Health, Tracker};

/// What is probed: a backend address with one check. Services that share both share the probe.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeTarget {
    pub addr: SocketAddr,
    pub check: HealthCheckSpec,
}

/// The health of every probed backend. Backends without a health check are always up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthView {
    states: BTreeMap<ProbeTarget, Health>,
}

impl HealthView {
    /// Is `addr`, checked with `check`, known to be down? Unchecked or not yet probed: no.
    pub fn is_down(&self, addr: SocketAddr, check: Option<&HealthCheckSpec>) -> bool {
        let Some(check) = check else { return false };
        let target = ProbeTarget {
            addr,
            check: check.clone(),
        };
        self.states.get(&target) == Some(&Health::Down)
    }

    /// The known state of `target` (`None`: not probed yet, counted as up).
    pub fn state(&self, target: &ProbeTarget) -> Option<Health> {
        self.states.get(target).copied()
    }

    /// Records a state; returns whether it changed anything.
    pub fn set(&mut self, target: ProbeTarget, health: Health) -> bool {
        self.states.insert(target, health) != Some(health)
    }

    /// Forgets targets no longer probed.
    pub fn retain(&mut self, keep: impl Fn(&ProbeTarget) -> bool) {
        self.states.retain(|t, _| keep(t));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ProbeTarget, Health)> {
        self.states.iter().map(|(t, h)| (t, *h))
    }
}
