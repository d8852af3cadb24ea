//! Runs the probes: one task per [`ProbeTarget`], started and stopped as the configuration changes.
//! Transitions come back on a channel; the tasks never touch the data plane.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use super::{Health, HealthView, ProbeTarget, Tracker, probe};
use crate::model::DesiredState;
use crate::telemetry::telemetry;

/// A backend's health changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub target: ProbeTarget,
    pub health: Health,
}

/// The running probe tasks and what they concluded.
pub struct HealthChecker {
    tasks: BTreeMap<ProbeTarget, JoinHandle<()>>,
    sender: mpsc::UnboundedSender<HealthEvent>,
    events: mpsc::UnboundedReceiver<HealthEvent>,
    view: HealthView,
}

impl Default for HealthChecker {
    fn default() -> Self {
        let (sender, events) = mpsc::unbounded_channel();
        HealthChecker {
            tasks: BTreeMap::new(),
            sender,
            events,
            view: HealthView::default(),
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

/// Every (address, check) of `desired`, once however many services share it.
pub fn probe_targets(desired: &DesiredState) -> BTreeSet<ProbeTarget> {
    desired
        .services
        .values()
        .filter_map(|s| s.health_check.as_ref().map(|check| (s, check)))
        .flat_map(|(s, check)| {
            s.backends.keys().map(|addr| ProbeTarget {
                addr: *addr,
                check: check.clone(),
            })
        })
        .collect()
}

impl HealthChecker {
    /// Starts probes for new targets of `desired` and stops those of targets it no longer has.
    /// Must run inside the tokio runtime.
    pub fn sync(&mut self, desired: &DesiredState) {
        let wanted = probe_targets(desired);
        self.tasks.retain(|target, task| {
            let keep = wanted.contains(target);
            if !keep {
                task.abort();
                telemetry().forget_probe(target.addr, target.check.kind.name());
            }
            keep
        });
        self.view.retain(|t| wanted.contains(t));
        for target in wanted {
            if !self.tasks.contains_key(&target) {
                let start = self.view.state(&target).unwrap_or(Health::Up);
                let task = tokio::spawn(probe_loop(target.clone(), start, self.sender.clone()));
                self.tasks.insert(target, task);
            }
        }
    }

    /// Restores the last known health (from the state file) before the first [`Self::sync`]:
    /// these targets start down and their probes need `rise` passes to bring them up. Targets
    /// `sync` does not probe are forgotten by it.
    pub fn restore(&mut self, down: impl IntoIterator<Item = ProbeTarget>) {
        for target in down {
            self.view.set(target, Health::Down);
        }
    }

    /// Probe tasks running (one per distinct address and check).
    pub fn probes(&self) -> usize {
        self.tasks.len()
    }

    pub fn view(&self) -> &HealthView {
        &self.view
    }

    /// Waits for the next transition and every one queued behind it; returns whether the view
    /// changed (a transition of a target that was stopped meanwhile changes nothing).
    pub async fn changed(&mut self) -> bool {
        let Some(first) = self.events.recv().await else {
            // Never: `self` holds a sender.
            return std::future::pending().await;
        };
        let mut changed = self.record(first);
        while let Ok(event) = self.events.try_recv() {
            changed |= self.record(event);
        }
        changed
    }

    fn record(&mut self, event: HealthEvent) -> bool {
        if !self.tasks.contains_key(&event.target) {
            return false;
        }
        self.view.set(event.target, event.health)
    }
}

/// Probes one target every interval until aborted; reports transitions (one log line each).
async fn probe_loop(
    target: ProbeTarget,
    start: Health,
    events: mpsc::UnboundedSender<HealthEvent>,
) {
    let check = &target.check;
    let mut tracker = Tracker::starting(check.rise, check.fall, start);
    let mut interval = tokio::time::interval(Duration::from_millis(u64::from(check.interval_ms)));
    // A late tick is not made up for with a burst of probes.
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let started = Instant::now();
        let result = probe(target.addr, check).await;
        telemetry().probe(
            target.addr,
            check.kind.name(),
            result.is_ok(),
            started.elapsed(),
        );
        let Some(health) = tracker.record(result.is_ok()) else {
            continue;
        };
        match (&health, &result) {
            (Health::Down, Err(e)) => warn!(
                backend = %target.addr,
                check = check.kind.name(),
                fall = check.fall,
                "backend is down: {e} ({} failed checks in a row)",
                check.fall
            ),
            _ => info!(
                backend = %target.addr,
                check = check.kind.name(),
                rise = check.rise,
                "backend is up ({} passed checks in a row)",
                check.rise
            ),
        }
        if events
            .send(HealthEvent {
                target: target.clone(),
                health,
            })
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackendSpec, HealthCheckSpec, ServiceSpec};

    fn service(
        name: &str,
        vip: &str,
        backends: &[&str],
        check: Option<HealthCheckSpec>,
    ) -> ServiceSpec {
        let mut s = ServiceSpec::new(name, vip.parse().unwrap());
        s.health_check = check;
        for b in backends {
            s = s.with_backend(BackendSpec::new(b.parse().unwrap()));
        }
        s
    }

    fn state(services: Vec<ServiceSpec>) -> DesiredState {
        DesiredState::of(services)
    }

    #[test]
    fn targets_are_deduplicated_by_address_and_check() {
        let check = HealthCheckSpec::default();
        let other = HealthCheckSpec {
            interval_ms: 2000,
            ..HealthCheckSpec::default()
        };
        let d = state(vec![
            service(
                "a",
                "198.18.100.1:80",
                &["198.18.2.11:80", "198.18.2.12:80"],
                Some(check.clone()),
            ),
            service(
                "b",
                "198.18.100.2:80",
                &["198.18.2.11:80", "198.18.2.12:80"],
                Some(check.clone()),
            ),
            service("c", "198.18.100.3:80", &["198.18.2.11:80"], Some(other)),
            service("d", "198.18.100.4:80", &["198.18.2.13:80"], None),
        ]);
        let targets = probe_targets(&d);
        // Two addresses with the shared check, one with its own; the unchecked service adds none.
        assert_eq!(targets.len(), 3, "{targets:?}");
    }

    /// A loopback listener that can be closed and reopened on the same port.
    async fn listener() -> (tokio::net::TcpListener, std::net::SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[tokio::test]
    async fn a_closed_port_goes_down_and_comes_back_up() {
        let (l, addr) = listener().await;
        let port = addr.port();
        let check = HealthCheckSpec {
            interval_ms: 20,
            timeout_ms: 10,
            rise: 2,
            fall: 2,
            ..Default::default()
        };
        let d = state(vec![service(
            "web",
            &format!("198.18.100.1:{port}"),
            &[&addr.to_string()],
            Some(check.clone()),
        )]);
        let mut checker = HealthChecker::default();
        checker.sync(&d);
        assert_eq!(checker.probes(), 1);
        drop(l);
        let wait = Duration::from_secs(5);
        tokio::time::timeout(wait, checker.changed())
            .await
            .expect("a down transition");
        assert!(checker.view().is_down(addr, Some(&check)));
        let _again = tokio::net::TcpListener::bind(addr).await.unwrap();
        tokio::time::timeout(wait, checker.changed())
            .await
            .expect("an up transition");
        assert!(!checker.view().is_down(addr, Some(&check)));
        // Removing the service stops its probe and forgets its state.
        checker.sync(&DesiredState::default());
        assert_eq!(checker.probes(), 0);
        assert_eq!(checker.view().iter().count(), 0);
    }
}
