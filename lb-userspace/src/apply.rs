//! Desired state → data plane. Owns the ids (services, backends) and the table slots, and writes every
//! change in an order that no packet can observe half-done:
//!
//! 1. backends (new ids, new weights and flags) — nothing points at a new id yet;
//! 2. the service's new table into a free slot of `LB_SCHEDULE`;
//! 3. metadata, then the `ServiceEntry` (one map update flips the table);
//! 4. the old slot is quarantined briefly before reuse; backends that left the configuration are kept
//!    as draining (their established flows keep working) until no flow refers to them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_common::limits::Capacity;
use lb_common::service::SERVICE_NAME_LEN;
use lb_common::{
    BACKEND_F_DOWN, BACKEND_F_DRAINING, BACKEND_F_VALID, BackendEntry, ServiceEntry, ServiceMeta,
    VipKey,
};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::dataplane::{Dataplane, DataplaneError};
use crate::health::HealthView;
use crate::model::{DesiredState, ServiceSpec};
use crate::plan;
use crate::tables::{TableBackend, build_table};

/// How long a replaced table slot stays untouched: an XDP program run that read the old
/// `ServiceEntry` finishes within microseconds.
const SLOT_QUARANTINE: Duration = Duration::from_millis(2);

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("no free service id: at most {max} services (raise --max-services)")]
    TooManyServices { max: u32 },
    #[error("no free backend id: at most {max} backends in all (raise --max-backends)")]
    TooManyBackends { max: u32 },
    #[error("service {service}: {count} entries do not fit the table size {table_size}")]
    TableTooLarge {
        service: String,
        count: usize,
        table_size: u32,
    },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// A free list of ids `0..max`, handing out the lowest free id first.
#[derive(Debug)]
struct IdPool {
    free: BTreeSet<u32>,
}

impl IdPool {
    fn new(max: u32) -> Self {
        IdPool {
            free: (0..max).collect(),
        }
    }
    fn take(&mut self) -> Option<u32> {
        self.free.pop_first()
    }
    fn give_back(&mut self, id: u32) {
        self.free.insert(id);
    }
}

#[derive(Clone, Debug)]
struct AppliedService {
    spec: ServiceSpec,
    id: u32,
    slot: u32,
    backend_ids: BTreeMap<SocketAddr, u32>,
    health: ServiceHealth,
}

/// Which of a service's backends its health checks took out, as applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceHealth {
    /// Backends flagged down: out of the table, their established flows are moved.
    pub down: BTreeSet<SocketAddr>,
    /// Fewer than `panic_threshold` percent of the backends that take new flows are healthy, so
    /// all of them stay in the table (none is flagged down).
    pub panic: bool,
}

impl ServiceHealth {
    /// What `health` means for `spec`, panic threshold included (pure; unit-tested).
    pub fn of(spec: &ServiceSpec, health: &HealthView) -> ServiceHealth {
        let check = spec.health_check.as_ref();
        let down: BTreeSet<SocketAddr> = spec
            .backends
            .keys()
            .copied()
            .filter(|addr| health.is_down(*addr, check))
            .collect();
        let eligible = spec
            .backends
            .values()
            .filter(|b| b.takes_new_flows())
            .count();
        let healthy = spec
            .backends
            .values()
            .filter(|b| b.takes_new_flows() && !down.contains(&b.addr))
            .count();
        let threshold = usize::from(spec.panic_threshold);
        if threshold > 0 && eligible > 0 && healthy * 100 < threshold * eligible {
            ServiceHealth {
                down: BTreeSet::new(),
                panic: true,
            }
        } else {
            ServiceHealth { down, panic: false }
        }
    }
}

/// A backend that left its service: draining until no flow refers to it.
#[derive(Clone, Debug)]
pub struct RetiredBackend {
    pub id: u32,
    pub service_id: u32,
    pub addr: SocketAddr,
    pub since: Instant,
}

/// What one apply did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Services re-applied because a backend's health (or their panic mode) changed.
    pub health_changed: Vec<String>,
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
    capacity: Capacity,
    seed: u32,
    services: BTreeMap<String, AppliedService>,
    service_ids: IdPool,
    backend_ids: IdPool,
    slots: IdPool,
    quarantine: Vec<(u32, Instant)>,
    retired: Vec<RetiredBackend>,
    generation: u32,
}

impl Applier {
    pub fn new(capacity: Capacity, seed: u32) -> Self {
        Applier {
            capacity,
            seed,
            services: BTreeMap::new(),
            service_ids: IdPool::new(capacity.max_services),
            backend_ids: IdPool::new(capacity.max_backends),
            slots: IdPool::new(capacity.table_slots()),
            quarantine: Vec::new(),
            retired: Vec::new(),
            generation: 0,
        }
    }

    /// The state the data plane forwards with now.
    pub fn applied_state(&self) -> DesiredState {
        DesiredState {
            services: self
                .services
                .iter()
                .map(|(n, s)| (n.clone(), s.spec.clone()))
                .collect(),
        }
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn service_id(&self, name: &str) -> Option<u32> {
        self.services.get(name).map(|s| s.id)
    }

    pub fn backend_id(&self, service: &str, addr: &SocketAddr) -> Option<u32> {
        self.services
            .get(service)
            .and_then(|s| s.backend_ids.get(addr).copied())
    }

    /// Every backend address the data plane may send to (configured and retired).
    pub fn backend_addrs(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .services
            .values()
            .flat_map(|s| s.backend_ids.keys().copied())
            .collect();
        v.extend(self.retired.iter().map(|r| r.addr));
        v.sort();
        v.dedup();
        v
    }

    /// Every backend id in use (configured and retired).
    pub fn all_backend_ids(&self) -> BTreeSet<u32> {
        let mut ids: BTreeSet<u32> = self
            .services
            .values()
            .flat_map(|s| s.backend_ids.values().copied())
            .collect();
        ids.extend(self.retired.iter().map(|r| r.id));
        ids
    }

    pub fn retired(&self) -> &[RetiredBackend] {
        &self.retired
    }

    /// Applies `desired` (already validated) with every backend healthy; see [`Applier::apply_with_health`].
    pub fn apply(
        &mut self,
        dp: &mut Dataplane,
        desired: &DesiredState,
    ) -> Result<ApplyReport, ApplyError> {
        self.apply_with_health(dp, desired, &HealthView::default())
    }

    /// Applies `desired` (already validated) service by service, with the backends `health` reports
    /// down taken out of their tables; each service flips atomically. A service whose configuration
    /// is unchanged is re-applied when its backends' health changed. On error, services applied
    /// before the failing one stay applied and the failing one keeps its previous version; the
    /// caller logs and retries on the next change.
    pub fn apply_with_health(
        &mut self,
        dp: &mut Dataplane,
        desired: &DesiredState,
        health: &HealthView,
    ) -> Result<ApplyReport, ApplyError> {
        let plan = plan::diff(&self.applied_state(), desired);
        let health_changed: Vec<String> = desired
            .services
            .values()
            .filter(|spec| !plan.added.contains(&spec.name) && !plan.changed.contains(&spec.name))
            .filter(|spec| {
                self.services
                    .get(&spec.name)
                    .is_some_and(|a| a.health != ServiceHealth::of(spec, health))
            })
            .map(|spec| spec.name.clone())
            .collect();
        if plan.is_empty() && health_changed.is_empty() {
            return Ok(ApplyReport {
                generation: self.generation,
                ..Default::default()
            });
        }
        self.generation = self.generation.wrapping_add(1);
        let desired_vips: BTreeSet<VipKey> =
            desired.services.values().map(|s| s.vip_key()).collect();
        for name in &plan.removed {
            self.remove_service(dp, name, &desired_vips)?;
        }
        for name in plan
            .added
            .iter()
            .chain(plan.changed.iter())
            .chain(health_changed.iter())
        {
            if let Some(spec) = desired.services.get(name) {
                self.put_service(dp, spec, &ServiceHealth::of(spec, health), &desired_vips)?;
            }
        }
        Ok(ApplyReport {
            added: plan.added,
            changed: plan.changed,
            removed: plan.removed,
            health_changed,
            generation: self.generation,
        })
    }

    /// The applied health of every service (for `lb status` and the metrics).
    pub fn service_health(&self, name: &str) -> Option<&ServiceHealth> {
        self.services.get(name).map(|s| &s.health)
    }

    fn put_service(
        &mut self,
        dp: &mut Dataplane,
        spec: &ServiceSpec,
        health: &ServiceHealth,
        desired_vips: &BTreeSet<VipKey>,
    ) -> Result<(), ApplyError> {
        let previous = self.services.get(&spec.name).cloned();
        let service_id = match &previous {
            Some(p) => p.id,
            None => self.service_ids.take().ok_or(ApplyError::TooManyServices {
                max: self.capacity.max_services,
            })?,
        };

        // 1. Backends: keep ids of addresses that stay, allocate new ones, write entries.
        let mut backend_ids = BTreeMap::new();
        let mut allocated = Vec::new();
        for (addr, b) in &spec.backends {
            let existing = previous
                .as_ref()
                .and_then(|p| p.backend_ids.get(addr).copied());
            let id = match existing.or_else(|| self.unretire(service_id, addr)) {
                Some(id) => id,
                None => match self.backend_ids.take() {
                    Some(id) => {
                        allocated.push(id);
                        dp.set_backend_conns(id, 0)?;
                        id
                    }
                    None => {
                        for id in allocated {
                            self.backend_ids.give_back(id);
                        }
                        if previous.is_none() {
                            self.service_ids.give_back(service_id);
                        }
                        return Err(ApplyError::TooManyBackends {
                            max: self.capacity.max_backends,
                        });
                    }
                },
            };
            let mut flags = BACKEND_F_VALID;
            if !b.takes_new_flows() {
                flags |= BACKEND_F_DRAINING;
            }
            if health.down.contains(addr) {
                flags |= BACKEND_F_DOWN;
            }
            dp.put_backend(id, &backend_entry(addr, service_id, b.weight, flags))?;
            backend_ids.insert(*addr, id);
        }

        // 2. The table, into a free slot.
        let table_backends: Vec<TableBackend> = spec
            .backends
            .iter()
            .filter(|(addr, b)| b.takes_new_flows() && !health.down.contains(addr))
            .filter_map(|(addr, b)| {
                backend_ids.get(addr).map(|id| TableBackend {
                    id: *id,
                    addr: *addr,
                    weight: b.weight,
                })
            })
            .collect();
        let table = build_table(
            spec.scheduler.table_kind(),
            &table_backends,
            self.capacity.table_size,
            self.seed,
        );
        if table.len() > self.capacity.table_size as usize {
            return Err(ApplyError::TableTooLarge {
                service: spec.name.clone(),
                count: table.len(),
                table_size: self.capacity.table_size,
            });
        }
        let slot = self.free_slot();
        let offset = slot * self.capacity.table_size;
        dp.write_table(offset, &table)?;

        // 3. Metadata, then the service entry: this is the flip.
        dp.put_service_meta(service_id, &service_meta(spec))?;
        let key = spec.vip_key();
        let entry = ServiceEntry {
            id: service_id,
            scheduler: spec.scheduler as u32,
            table_offset: offset,
            table_len: table.len() as u32,
            persist_timeout_s: spec.persistence_timeout_s,
            persist_prefix_len: spec.persist_prefix_len(),
            generation: self.generation,
            flags: 0,
        };
        dp.put_service(&key, &entry)?;

        // 4. Clean up what the old version used.
        if let Some(prev) = &previous {
            self.quarantine.push((prev.slot, Instant::now()));
            let old_key = prev.spec.vip_key();
            if old_key != key && !desired_vips.contains(&old_key) {
                dp.delete_service(&old_key)?;
            }
            for (addr, id) in &prev.backend_ids {
                if !backend_ids.contains_key(addr) {
                    self.retire(dp, service_id, *addr, *id)?;
                }
            }
        }
        let was_panic = previous.as_ref().is_some_and(|p| p.health.panic);
        if health.panic && !was_panic {
            warn!(
                service = %spec.name,
                panic_threshold = spec.panic_threshold,
                "panic mode: fewer than {}% of the backends are healthy, new flows go to all of them",
                spec.panic_threshold
            );
        } else if was_panic && !health.panic {
            info!(service = %spec.name, "panic mode over: new flows go to healthy backends only");
        }
        info!(
            service = %spec.name,
            vip = %spec.vip,
            scheduler = spec.scheduler.name(),
            backends = spec.backends.len(),
            down = health.down.len(),
            table_len = table.len(),
            "service {}",
            if previous.is_some() { "updated" } else { "added" }
        );
        self.services.insert(
            spec.name.clone(),
            AppliedService {
                spec: spec.clone(),
                id: service_id,
                slot,
                backend_ids,
                health: health.clone(),
            },
        );
        Ok(())
    }

    fn remove_service(
        &mut self,
        dp: &mut Dataplane,
        name: &str,
        desired_vips: &BTreeSet<VipKey>,
    ) -> Result<(), ApplyError> {
        let Some(prev) = self.services.remove(name) else {
            return Ok(());
        };
        let key = prev.spec.vip_key();
        if !desired_vips.contains(&key) {
            dp.delete_service(&key)?;
        }
        dp.put_service_meta(prev.id, &ServiceMeta::default())?;
        self.quarantine.push((prev.slot, Instant::now()));
        for (addr, id) in &prev.backend_ids {
            self.retire(dp, prev.id, *addr, *id)?;
        }
        // The service id is reused only after its retired backends are gone (flows check service ids).
        info!(service = %name, vip = %prev.spec.vip, "service removed");
        self.release_service_id_when_idle(prev.id);
        Ok(())
    }

    fn release_service_id_when_idle(&mut self, id: u32) {
        if !self.retired.iter().any(|r| r.service_id == id) {
            self.service_ids.give_back(id);
        }
    }

    fn retire(
        &mut self,
        dp: &mut Dataplane,
        service_id: u32,
        addr: SocketAddr,
        id: u32,
    ) -> Result<(), ApplyError> {
        let entry = backend_entry(&addr, service_id, 0, BACKEND_F_VALID | BACKEND_F_DRAINING);
        dp.put_backend(id, &entry)?;
        debug!(backend = %addr, id, "backend retired (draining until its flows end)");
        self.retired.push(RetiredBackend {
            id,
            service_id,
            addr,
            since: Instant::now(),
        });
        Ok(())
    }

    /// A backend that comes back before its retired id was released gets the same id (its flows
    /// continue seamlessly).
    fn unretire(&mut self, service_id: u32, addr: &SocketAddr) -> Option<u32> {
        let pos = self
            .retired
            .iter()
            .position(|r| r.service_id == service_id && r.addr == *addr)?;
        Some(self.retired.remove(pos).id)
    }

    /// Releases retired backends that no flow refers to any more (`in_use` is the set of backend ids
    /// the flow table still holds, from the sweeper) and that have been retired for at least `grace`.
    pub fn release_retired(
        &mut self,
        dp: &mut Dataplane,
        in_use: &BTreeSet<u32>,
        grace: Duration,
    ) -> Result<usize, ApplyError> {
        let now = Instant::now();
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|r| !in_use.contains(&r.id) && now.duration_since(r.since) >= grace);
        self.retired = keep;
        for r in &gone {
            dp.put_backend(r.id, &BackendEntry::default())?;
            dp.set_backend_conns(r.id, 0)?;
            self.backend_ids.give_back(r.id);
            let service_alive = self.services.values().any(|s| s.id == r.service_id);
            if !service_alive {
                self.release_service_id_when_idle(r.service_id);
            }
        }
        Ok(gone.len())
    }

    fn free_slot(&mut self) -> u32 {
        loop {
            let now = Instant::now();
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.quarantine)
                .into_iter()
                .partition(|(_, t)| now.duration_since(*t) >= SLOT_QUARANTINE);
            self.quarantine = waiting;
            for (slot, _) in ready {
                self.slots.give_back(slot);
            }
            if let Some(slot) = self.slots.take() {
                return slot;
            }
            // Every spare slot is quarantined: wait out the oldest quarantine (bounded: 2 ms). There are
            // always max_services + spare slots, so one is free once quarantines end.
            std::thread::sleep(SLOT_QUARANTINE);
        }
    }
}

fn backend_entry(addr: &SocketAddr, service_id: u32, weight: u32, flags: u32) -> BackendEntry {
    let (words, family) = lb_common::addr::to_words(addr.ip());
    BackendEntry {
        addr: words,
        service_id,
        weight,
        flags,
        port_be: addr.port().to_be(),
        family,
        _pad: 0,
    }
}

fn service_meta(spec: &ServiceSpec) -> ServiceMeta {
    let mut meta = ServiceMeta {
        vip: spec.vip_key(),
        in_use: 1,
        ..Default::default()
    };
    let bytes = spec.name.as_bytes();
    let n = bytes.len().min(SERVICE_NAME_LEN - 1);
    meta.name[..n].copy_from_slice(&bytes[..n]);
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Health, ProbeTarget};
    use crate::model::{BackendSpec, BackendState, HealthCheckSpec};

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 2, 10 + i], 80))
    }

    fn service(backends: u8, panic_threshold: u8) -> ServiceSpec {
        let mut s = ServiceSpec::new("web", "198.18.100.1:80".parse().unwrap());
        s.health_check = Some(HealthCheckSpec::default());
        s.panic_threshold = panic_threshold;
        for i in 0..backends {
            s = s.with_backend(BackendSpec::new(addr(i)));
        }
        s
    }

    fn down(spec: &ServiceSpec, which: &[u8]) -> HealthView {
        let mut view = HealthView::default();
        for i in which {
            let target = ProbeTarget {
                addr: addr(*i),
                check: spec.health_check.clone().unwrap_or_default(),
            };
            view.set(target, Health::Down);
        }
        view
    }

    #[test]
    fn down_backends_leave_the_table() {
        let s = service(4, 0);
        let h = ServiceHealth::of(&s, &down(&s, &[1, 2]));
        assert!(!h.panic);
        assert_eq!(h.down, [addr(1), addr(2)].into_iter().collect());
    }

    #[test]
    fn unchecked_services_ignore_health() {
        let mut s = service(2, 0);
        let view = down(&s, &[0, 1]);
        s.health_check = None;
        assert_eq!(ServiceHealth::of(&s, &view), ServiceHealth::default());
    }

    #[test]
    fn panic_mode_keeps_every_backend_below_the_threshold() {
        let s = service(4, 50);
        // 2 of 4 healthy is 50 %: not below the threshold.
        assert!(!ServiceHealth::of(&s, &down(&s, &[0, 1])).panic);
        // 1 of 4 healthy is 25 %: panic, nothing flagged down.
        let h = ServiceHealth::of(&s, &down(&s, &[0, 1, 2]));
        assert!(h.panic);
        assert!(h.down.is_empty());
    }

    #[test]
    fn draining_backends_do_not_count_toward_the_panic_share() {
        let mut s = service(4, 50);
        for i in [2, 3] {
            if let Some(b) = s.backends.get_mut(&addr(i)) {
                b.state = BackendState::Draining;
            }
        }
        // Of the two that take new flows, one is healthy: 50 %, no panic.
        assert!(!ServiceHealth::of(&s, &down(&s, &[0])).panic);
        assert!(ServiceHealth::of(&s, &down(&s, &[0, 1])).panic);
    }
}
