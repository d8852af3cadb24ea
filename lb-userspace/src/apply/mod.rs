//! Desired state → data plane, one service at a time: the [planner](crate::plan) decides a
//! service's writes, the [executor](crate::execute) writes them to a [`MapWriter`], and only a
//! service written in full is committed. A service that fails (it does not fit the capacity, or a
//! map write fails) keeps its last good version — nothing of it is half-written and none of its ids
//! or slots is lost — and every other service is still applied. Failures are reported per service
//! and retried on the next apply, whether or not the desired state changed.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_common::VipKey;
use lb_common::limits::Capacity;
use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::dataplane::{DataplaneError, MapWriter};
use crate::execute;
use crate::health::HealthView;
use crate::model::{DesiredState, ServiceSpec};
use crate::plan::{self, AdoptError, Adoption, Op, PinnedState, Planner};

pub use crate::plan::{CapacityError, RetiredBackend, ServiceHealth};

/// From this many services in one apply, their tables are built in parallel first.
const PREBUILD_MIN_SERVICES: usize = 2;

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The new version is live; what the old one left behind is not cleaned up in full.
    #[error("applied, but marking the backends that left it as draining failed: {0}")]
    Cleanup(DataplaneError),
}

/// What one apply did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Services re-applied because a backend's health (or their panic mode) changed.
    pub health_changed: Vec<String>,
    /// Services that could not be applied, and why. Each keeps its last good version (a new one
    /// stays out) and is retried on the next apply.
    pub failed: Vec<(String, ApplyError)>,
    pub generation: u32,
}

impl ApplyReport {
    /// Did the data plane change?
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.health_changed.is_empty()
    }
}

pub struct Applier {
    planner: Planner,
    generation: u32,
    /// The services the last apply could not apply, with the error (for status and metrics).
    failures: BTreeMap<String, String>,
    /// VIPs left in the map for a desired service to take over; deleted if none holds them.
    vacated: BTreeSet<VipKey>,
}

impl Applier {
    pub fn new(capacity: Capacity, seed: u32) -> Self {
        Applier {
            planner: Planner::new(capacity, seed),
            generation: 0,
            failures: BTreeMap::new(),
            vacated: BTreeSet::new(),
        }
    }

    /// Seeds this new applier from the maps an earlier `lb run` pinned (see [`Planner::adopt`]):
    /// the next apply of `desired` with `health` writes only what differs from what they hold.
    pub fn adopt(
        &mut self,
        pinned: &PinnedState,
        desired: &DesiredState,
        health: &HealthView,
    ) -> Result<Adoption, AdoptError> {
        let adoption = self
            .planner
            .adopt(pinned, desired, health, Instant::now())?;
        self.generation = adoption.generation;
        Ok(adoption)
    }

    /// The maps were created empty for this applier (not adopted): see [`Planner::on_fresh_maps`].
    pub fn on_fresh_maps(&mut self) {
        self.planner.on_fresh_maps();
    }

    /// The state the data plane forwards with now.
    pub fn applied_state(&self) -> DesiredState {
        self.planner.applied_state()
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn service_id(&self, name: &str) -> Option<u32> {
        self.planner.service_id(name)
    }

    pub fn backend_id(&self, service: &str, addr: &SocketAddr) -> Option<u32> {
        self.planner.backend_id(service, addr)
    }

    /// Every backend address the data plane may send to (configured and retired).
    pub fn backend_addrs(&self) -> Vec<SocketAddr> {
        self.planner.backend_addrs()
    }

    /// Every backend id in use (configured and retired).
    pub fn all_backend_ids(&self) -> BTreeSet<u32> {
        self.planner.all_backend_ids()
    }

    pub fn retired(&self) -> &[RetiredBackend] {
        self.planner.retired()
    }

    /// The applied health of every service (for `lb status` and the metrics).
    pub fn service_health(&self, name: &str) -> Option<&ServiceHealth> {
        self.planner.service_health(name)
    }

    /// Services the last apply failed to apply, by name, with the error.
    pub fn failures(&self) -> &BTreeMap<String, String> {
        &self.failures
    }

    /// Applies `desired` (already validated) with every backend healthy; see [`Applier::apply_with_health`].
    /// Tables built ahead (see [`plan::prebuild_for`]), used by the next apply where they fit.
    pub fn use_prebuilt(&mut self, prebuilt: BTreeMap<String, crate::tables::Prebuilt>) {
        self.planner.use_prebuilt(prebuilt);
    }

    pub fn apply(&mut self, w: &mut impl MapWriter, desired: &DesiredState) -> ApplyReport {
        self.apply_with_health(w, desired, &HealthView::default())
    }

    /// Applies `desired` (already validated) service by service, with the backends `health` reports
    /// down taken out of their tables; each service flips atomically. A service whose configuration
    /// is unchanged is re-applied when its backends' health changed, and a service that failed last
    /// time is tried again. A failing service is logged and listed in [`ApplyReport::failed`].
    pub fn apply_with_health(
        &mut self,
        w: &mut impl MapWriter,
        desired: &DesiredState,
        health: &HealthView,
    ) -> ApplyReport {
        let mut names = plan::diff(&self.planner.applied_state(), desired);
        // Adopted services whose pinned maps differ from what the planner would write.
        let stale: Vec<String> = self
            .planner
            .stale()
            .filter(|n| desired.services.contains_key(*n) && !names.changed.iter().any(|c| c == n))
            .map(str::to_owned)
            .collect();
        names.changed.extend(stale);
        names.changed.sort();
        let health_changed: Vec<String> = self
            .planner
            .health_changed(desired, health)
            .map(|spec| spec.name.clone())
            .filter(|n| !names.changed.contains(n))
            .collect();
        // A service whose new version is live but whose cleanup failed.
        let retry: Vec<String> = self
            .failures
            .keys()
            .filter(|n| desired.services.contains_key(*n))
            .filter(|n| !names.added.contains(n) && !names.changed.contains(n))
            .filter(|n| !health_changed.contains(n))
            .cloned()
            .collect();
        if names.is_empty() && health_changed.is_empty() && retry.is_empty() {
            // Tables built ahead for a state that needs no write (adopted as it is) are not kept.
            self.planner.clear_prebuilt();
            return ApplyReport {
                generation: self.generation,
                ..Default::default()
            };
        }
        let previous_generation = self.generation;
        self.generation = self.generation.wrapping_add(1);
        let claimed: BTreeSet<VipKey> = desired.services.values().map(|s| s.vip_key()).collect();
        let mut report = ApplyReport::default();
        for name in names.removed {
            match self.remove_service(w, &name, &claimed) {
                Ok(()) => report.removed.push(name),
                Err(e) => report.failed.push((name, e)),
            }
        }
        // Many services at once (a cold start, a resync): their tables are built on every CPU
        // first.
        let to_put: Vec<&Arc<ServiceSpec>> =
            [&names.added, &names.changed, &health_changed, &retry]
                .into_iter()
                .flatten()
                .filter_map(|name| desired.services.get(name))
                .collect();
        if to_put.len() >= PREBUILD_MIN_SERVICES && !self.planner.has_prebuilt() {
            let healths: Vec<ServiceHealth> = to_put
                .iter()
                .map(|spec| ServiceHealth::of(spec, health))
                .collect();
            self.planner
                .prebuild_tables(to_put.iter().map(|s| &***s).zip(&healths));
        }
        let puts = [
            (names.added, &mut report.added),
            (names.changed, &mut report.changed),
            (health_changed, &mut report.health_changed),
        ];
        let mut failed = Vec::new();
        for (list, done) in puts {
            for name in list {
                self.put_named(w, desired, health, &claimed, name, done, &mut failed);
            }
        }
        for name in retry {
            self.put_named(
                w,
                desired,
                health,
                &claimed,
                name,
                &mut report.changed,
                &mut failed,
            );
        }
        self.planner.clear_prebuilt();
        report.failed.extend(failed);
        self.delete_unheld_vips(w);
        for (name, e) in &report.failed {
            error!(
                service = %name,
                "service not applied, it keeps its last version (retried on the next apply): {e}"
            );
        }
        self.failures = report
            .failed
            .iter()
            .map(|(name, e)| (name.clone(), e.to_string()))
            .collect();
        if report.is_empty() {
            // Nothing reached the data plane under the new generation.
            self.generation = previous_generation;
        }
        report.generation = self.generation;
        report
    }

    #[allow(clippy::too_many_arguments)]
    fn put_named(
        &mut self,
        w: &mut impl MapWriter,
        desired: &DesiredState,
        health: &HealthView,
        claimed: &BTreeSet<VipKey>,
        name: String,
        done: &mut Vec<String>,
        failed: &mut Vec<(String, ApplyError)>,
    ) {
        let Some(spec) = desired.services.get(&name) else {
            return;
        };
        match self.put_service(w, spec, ServiceHealth::of(spec, health), claimed) {
            Ok(()) => done.push(name),
            Err(e) => failed.push((name, e)),
        }
    }

    fn put_service(
        &mut self,
        w: &mut impl MapWriter,
        spec: &Arc<ServiceSpec>,
        health: ServiceHealth,
        claimed: &BTreeSet<VipKey>,
    ) -> Result<(), ApplyError> {
        // Every spare slot quarantined: wait out the oldest quarantine (at most 2 ms). There are
        // always max_services + spare slots, so one is free once quarantines end.
        if let Some(wait) = self.planner.release_quarantine(Instant::now()) {
            std::thread::sleep(wait);
            self.planner.release_quarantine(Instant::now());
        }
        let change = self
            .planner
            .plan_service(spec, health, claimed, self.generation)?;
        execute::write_steps(w, &change.steps)?;
        let cleanup = execute::write_all(w, &change.cleanup);
        let was_panic = change.previous_health().is_some_and(|h| h.panic);
        let panic = change.health().panic;
        if panic && !was_panic {
            warn!(
                service = %spec.name,
                panic_threshold = spec.panic_threshold,
                "panic mode: fewer than {}% of the backends are healthy, new flows go to all of them",
                spec.panic_threshold
            );
        } else if was_panic && !panic {
            info!(service = %spec.name, "panic mode over: new flows go to healthy backends only");
        }
        info!(
            service = %spec.name,
            vip = %spec.vip,
            scheduler = spec.scheduler.name(),
            backends = spec.backends.len(),
            down = change.health().down.len(),
            table_len = change.table_len(),
            "service {}",
            if change.previous_health().is_some() { "updated" } else { "added" }
        );
        self.vacated.extend(change.vacated());
        self.planner.commit(change, Instant::now());
        cleanup.map_err(ApplyError::Cleanup)
    }

    fn remove_service(
        &mut self,
        w: &mut impl MapWriter,
        name: &str,
        claimed: &BTreeSet<VipKey>,
    ) -> Result<(), ApplyError> {
        let vip = self.planner.spec(name).map(|s| s.vip);
        let Some(removal) = self.planner.plan_removal(name, claimed) else {
            return Ok(());
        };
        execute::write_steps(w, &removal.steps)?;
        let cleanup = execute::write_all(w, &removal.cleanup);
        self.vacated.extend(removal.vacated());
        self.planner.commit_removal(removal, Instant::now());
        info!(service = %name, vip = ?vip, "service removed");
        cleanup.map_err(ApplyError::Cleanup)
    }

    /// Deletes the VIPs left for a desired service that then failed (so no VIP points at a table
    /// slot that is about to be reused); a failed delete is retried on the next apply.
    fn delete_unheld_vips(&mut self, w: &mut impl MapWriter) {
        let unheld = self.planner.unheld(&self.vacated);
        self.vacated.clear();
        for key in unheld {
            if let Err(e) = execute::write(w, &Op::DeleteService { key }) {
                warn!(
                    "deleting a VIP no service holds any more failed (retried on the next apply): {e}"
                );
                self.vacated.insert(key);
            }
        }
    }

    /// Releases retired backends that no flow refers to any more (`in_use` is the set of backend ids
    /// the flow table still holds, from the sweeper) and that have been retired for at least `grace`.
    /// A backend whose release fails stays retired and is tried again on the next call.
    pub fn release_retired(
        &mut self,
        w: &mut impl MapWriter,
        in_use: &BTreeSet<u32>,
        grace: Duration,
    ) -> Result<usize, ApplyError> {
        let mut released = 0;
        let mut first_error = None;
        for release in self.planner.plan_release(in_use, grace, Instant::now()) {
            match execute::write_all(w, &release.ops) {
                Ok(()) => {
                    self.planner.commit_release(release.id);
                    debug!(id = release.id, "retired backend released");
                    released += 1;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(released),
        }
    }
}
