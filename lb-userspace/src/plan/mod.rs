//! The pure planner: decides every map write of an apply, and owns what those writes depend on —
//! service and backend ids, table slots and their quarantine, retired backends, the panic policy
//! ([`ServiceHealth::of`]) and table building. It never touches a map: it returns [`Op`]s for the
//! executor, and its state changes only when the caller [commits](Planner::commit) a change the
//! executor wrote in full. A change that is not committed takes nothing: no id, slot or retired
//! backend is lost when a service fails.
//!
//! One service's change is ordered so that no packet can observe it half-done:
//!
//! 1. backends (new ids, new weights and flags) — nothing points at a new id yet;
//! 2. the service's new table into a free slot of `LB_SCHEDULE`;
//! 3. metadata, then the `ServiceEntry` (one map update flips the table);
//! 4. after the flip, backends that left the service are kept as draining (their established flows
//!    keep working) until no flow refers to them; the old slot is quarantined briefly before reuse.
//!
//! Every write before the flip carries its undo, so a failed write leaves the service as it was.

mod adopt;
mod diff;
mod health;
mod ids;
mod op;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_common::limits::Capacity;
use lb_common::{
    BACKEND_F_DOWN, BACKEND_F_DRAINING, BACKEND_F_VALID, BackendEntry, ServiceEntry, ServiceMeta,
    VipKey,
};
use thiserror::Error;

use crate::model::{BackendSpec, DesiredState, ServiceSpec};
use crate::tables::{Prebuilt, TableBackend, TableJob, build_slot_tables, prebuild};

pub use adopt::{AdoptError, Adoption, PinnedService, PinnedState};
pub use diff::{NameDiff, diff};
pub use health::ServiceHealth;
pub use ids::IdPool;
pub use op::{Op, Step, backend_entry, service_meta};

/// How long a replaced table slot stays untouched: an XDP program run that read the old
/// `ServiceEntry` finishes within microseconds.
pub const SLOT_QUARANTINE: Duration = Duration::from_millis(2);

/// A service that does not fit the capacity the maps were created with.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CapacityError {
    #[error("no free service id: at most {max} services (raise --max-services)")]
    TooManyServices { max: u32 },
    #[error(
        "no free backend id: {needed} new backends needed, {free} free of at most {max} in all (raise --max-backends)"
    )]
    TooManyBackends {
        needed: usize,
        free: usize,
        max: u32,
    },
    #[error("{count} backends do not fit the table size {table_size} (raise --table-size)")]
    TableTooLarge { count: usize, table_size: u32 },
    #[error("no free table slot: all {slots} are in use or quarantined (raise --max-services)")]
    NoFreeSlot { slots: u32 },
}

#[derive(Clone, Debug)]
struct AppliedService {
    /// The desired state's own spec (shared, not copied).
    spec: Arc<ServiceSpec>,
    id: u32,
    slot: u32,
    backend_ids: BTreeMap<SocketAddr, u32>,
    health: ServiceHealth,
    /// What its `LB_SERVICES` entry holds.
    entry: ServiceEntry,
    /// Adopted from pinned maps that differ from what this planner would write: what they hold
    /// (the next plan writes the service in full against it).
    pinned: Option<adopt::PinnedWrites>,
}

/// A backend that left its service: draining until no flow refers to it.
#[derive(Clone, Debug)]
pub struct RetiredBackend {
    pub id: u32,
    pub service_id: u32,
    pub addr: SocketAddr,
    pub since: Instant,
}

/// One service's new version: the writes and what committing them takes and gives back.
#[derive(Clone, Debug)]
pub struct ServiceChange {
    /// Up to and including the flip (the `PutService`), each with its undo.
    pub steps: Vec<Step>,
    /// After the flip: the backends that left the service, marked draining.
    pub cleanup: Vec<Op>,
    applied: AppliedService,
    previous_health: Option<ServiceHealth>,
    service_id_taken: bool,
    backend_ids_taken: Vec<u32>,
    unretired: Vec<u32>,
    retiring: Vec<(SocketAddr, u32)>,
    old_slot: Option<u32>,
    vacated: Option<VipKey>,
}

impl ServiceChange {
    /// The health of the version this replaces (`None`: a new service).
    pub fn previous_health(&self) -> Option<&ServiceHealth> {
        self.previous_health.as_ref()
    }
    pub fn health(&self) -> &ServiceHealth {
        &self.applied.health
    }
    pub fn table_len(&self) -> u32 {
        self.applied.entry.table_len
    }
    /// The old VIP, left in the map because a desired service claims it (see [`Planner::unheld`]).
    pub fn vacated(&self) -> Option<VipKey> {
        self.vacated
    }
}

/// A service leaving the data plane.
#[derive(Clone, Debug)]
pub struct Removal {
    name: String,
    /// The flip: deleting its VIP (none when a desired service takes the VIP over).
    pub steps: Vec<Step>,
    /// Its metadata cleared and its backends marked draining.
    pub cleanup: Vec<Op>,
    vacated: Option<VipKey>,
}

impl Removal {
    pub fn vacated(&self) -> Option<VipKey> {
        self.vacated
    }
}

/// A retired backend no flow refers to any more, and the writes that clear it.
#[derive(Clone, Debug)]
pub struct Release {
    pub id: u32,
    pub ops: Vec<Op>,
}

/// What the data plane holds, as far as the control plane decides it.
#[derive(Clone, Debug)]
pub struct Planner {
    capacity: Capacity,
    seed: u32,
    services: BTreeMap<String, AppliedService>,
    service_ids: IdPool,
    backend_ids: IdPool,
    slots: IdPool,
    quarantine: Vec<(u32, Instant)>,
    retired: Vec<RetiredBackend>,
    /// Tables built ahead by [`Planner::prebuild_tables`], used by the next plans of these services.
    prebuilt: BTreeMap<String, Prebuilt>,
    /// Backend ids from here up were never given out in these maps, so their `LB_BE_CONNS`
    /// counters are still the 0 the kernel created them with: a new backend there needs no
    /// zeroing write (100,000 syscalls at a cold start). Past the last id until told the maps
    /// are fresh ([`Planner::on_fresh_maps`]).
    conns_zeroed_from: u32,
}

impl Planner {
    pub fn new(capacity: Capacity, seed: u32) -> Self {
        Planner {
            capacity,
            seed,
            services: BTreeMap::new(),
            service_ids: IdPool::new(capacity.max_services),
            backend_ids: IdPool::new(capacity.max_backends),
            slots: IdPool::new(capacity.table_slots()),
            quarantine: Vec::new(),
            retired: Vec::new(),
            prebuilt: BTreeMap::new(),
            conns_zeroed_from: capacity.max_backends,
        }
    }

    /// The maps were created empty for this planner (not adopted): no backend id was given out in
    /// them yet, so every connection counter is 0.
    pub fn on_fresh_maps(&mut self) {
        self.conns_zeroed_from = 0;
    }

    /// Builds the tables of `services` (with their health) on every CPU, for the plans that follow
    /// ([`Planner::plan_service`] uses a prebuilt table only when its backends are still the same).
    /// Worth it when many services change at once: a cold start, a resync.
    pub fn prebuild_tables<'a>(
        &mut self,
        services: impl IntoIterator<Item = (&'a ServiceSpec, &'a ServiceHealth)>,
    ) {
        self.prebuilt = prebuild_tables(services, self.capacity.table_size, self.seed);
    }

    /// Takes tables built ahead (by [`prebuild_for`], e.g. while the data plane loads) for the
    /// plans that follow.
    pub fn use_prebuilt(&mut self, prebuilt: BTreeMap<String, Prebuilt>) {
        self.prebuilt = prebuilt;
    }

    /// Whether tables built ahead wait to be used.
    pub fn has_prebuilt(&self) -> bool {
        !self.prebuilt.is_empty()
    }

    /// Drops the tables [`Planner::prebuild_tables`] built.
    pub fn clear_prebuilt(&mut self) {
        self.prebuilt.clear();
    }

    /// The state the data plane forwards with now.
    pub fn applied_state(&self) -> DesiredState {
        DesiredState {
            services: self
                .services
                .iter()
                .map(|(n, s)| (n.clone(), Arc::clone(&s.spec)))
                .collect(),
        }
    }

    pub fn spec(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.get(name).map(|s| &*s.spec)
    }

    pub fn service_id(&self, name: &str) -> Option<u32> {
        self.services.get(name).map(|s| s.id)
    }

    pub fn backend_id(&self, service: &str, addr: &SocketAddr) -> Option<u32> {
        self.services
            .get(service)
            .and_then(|s| s.backend_ids.get(addr).copied())
    }

    pub fn service_health(&self, name: &str) -> Option<&ServiceHealth> {
        self.services.get(name).map(|s| &s.health)
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

    /// Free ids and slots: (service ids, backend ids, table slots not quarantined).
    pub fn free_counts(&self) -> (usize, usize, usize) {
        (
            self.service_ids.free(),
            self.backend_ids.free(),
            self.slots.free(),
        )
    }

    /// Names of services whose applied health differs from what `health` means for them.
    pub fn health_changed<'a>(
        &self,
        desired: &'a DesiredState,
        health: &crate::health::HealthView,
    ) -> impl Iterator<Item = &'a Arc<ServiceSpec>> {
        let applied: BTreeMap<&str, ServiceHealth> = self
            .services
            .iter()
            .filter(|(name, s)| desired.services.get(*name) == Some(&s.spec))
            .map(|(name, s)| (name.as_str(), s.health.clone()))
            .collect();
        desired.services.values().filter(move |spec| {
            applied
                .get(spec.name.as_str())
                .is_some_and(|h| *h != ServiceHealth::of(spec, health))
        })
    }

    /// Ends the quarantines older than [`SLOT_QUARANTINE`]. Returns how long to wait before a slot
    /// is free when none is (`None`: one is free now, or none will be).
    pub fn release_quarantine(&mut self, now: Instant) -> Option<Duration> {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.quarantine)
            .into_iter()
            .partition(|(_, t)| now.duration_since(*t) >= SLOT_QUARANTINE);
        self.quarantine = waiting;
        for (slot, _) in ready {
            self.slots.give_back(slot);
        }
        if self.slots.free() > 0 {
            return None;
        }
        self.quarantine
            .iter()
            .map(|(_, t)| SLOT_QUARANTINE.saturating_sub(now.duration_since(*t)))
            .min()
    }

    /// The writes that bring `spec` to the data plane with `health`, under `generation`. `claimed`
    /// holds the VIPs of every desired service: an old VIP one of them claims is not deleted.
    pub fn plan_service(
        &self,
        spec: &Arc<ServiceSpec>,
        health: ServiceHealth,
        claimed: &BTreeSet<VipKey>,
        generation: u32,
    ) -> Result<ServiceChange, CapacityError> {
        let previous = self.services.get(&spec.name);
        let (service_id, service_id_taken) = match previous {
            Some(p) => (p.id, false),
            None => {
                let id = self.service_ids.peek(1).first().copied().ok_or(
                    CapacityError::TooManyServices {
                        max: self.capacity.max_services,
                    },
                )?;
                (id, true)
            }
        };
        let ids = self.backend_ids_for(spec, previous, service_id)?;
        let table_backends = table_backends(spec, &health, &ids.all);
        if table_backends.len() > self.capacity.table_size as usize {
            return Err(CapacityError::TableTooLarge {
                count: table_backends.len(),
                table_size: self.capacity.table_size,
            });
        }
        let slot = self
            .slots
            .peek(1)
            .first()
            .copied()
            .ok_or(CapacityError::NoFreeSlot {
                slots: self.capacity.table_slots(),
            })?;
        let kind = spec.scheduler.table_kind();
        let tables = self
            .prebuilt
            .get(&spec.name)
            .and_then(|p| p.with_ids(kind, &table_backends, self.capacity.table_size))
            .unwrap_or_else(|| {
                build_slot_tables(kind, &table_backends, self.capacity.table_size, self.seed)
            });
        let key = spec.vip_key();
        let offset = slot * self.capacity.table_size;
        let entry = ServiceEntry {
            id: service_id,
            scheduler: spec.scheduler as u32,
            table_offset: offset,
            table_len: tables.table_len,
            hash_offset: offset + tables.hash_start,
            hash_len: tables.hash_len,
            persist_timeout_s: spec.persistence_timeout_s,
            persist_prefix_len: spec.persist_prefix_len(),
            generation,
            flags: 0,
        };

        // 1. Backends; 2. the table.
        let mut steps = self.backend_steps(spec, &health, previous, service_id, &ids);
        steps.push(Step::new(
            Op::WriteTable {
                offset,
                ids: tables.ids,
            },
            None,
        ));
        // 3. Metadata, the old VIP if it moved, then the flip.
        let meta = service_meta(spec);
        let pinned = previous.and_then(|p| p.pinned.as_ref());
        let old_meta = match (previous, pinned) {
            (_, Some(pinned)) => pinned.meta,
            (Some(p), None) => service_meta(&p.spec),
            (None, None) => ServiceMeta::default(),
        };
        if previous.is_none() || meta != old_meta {
            steps.push(Step::new(
                Op::PutServiceMeta {
                    id: service_id,
                    meta,
                },
                Some(Op::PutServiceMeta {
                    id: service_id,
                    meta: old_meta,
                }),
            ));
        }
        let mut vacated = None;
        if let Some(prev) = previous.filter(|p| p.spec.vip_key() != key) {
            let old_key = prev.spec.vip_key();
            if claimed.contains(&old_key) {
                vacated = Some(old_key);
            } else {
                steps.push(Step::new(
                    Op::DeleteService { key: old_key },
                    Some(Op::PutService {
                        key: old_key,
                        entry: prev.entry,
                    }),
                ));
            }
        }
        steps.push(Step::new(Op::PutService { key, entry }, None));

        // 4. After the flip: the backends that left.
        let retiring: Vec<(SocketAddr, u32)> = previous
            .map(|p| {
                p.backend_ids
                    .iter()
                    .filter(|(addr, _)| !ids.all.contains_key(*addr))
                    .map(|(addr, id)| (*addr, *id))
                    .collect()
            })
            .unwrap_or_default();
        let cleanup = retiring
            .iter()
            .map(|(addr, id)| retire_op(*addr, *id, service_id))
            .collect();
        Ok(ServiceChange {
            steps,
            cleanup,
            applied: AppliedService {
                spec: Arc::clone(spec),
                id: service_id,
                slot,
                backend_ids: ids.all,
                health,
                entry,
                pinned: None,
            },
            previous_health: previous.map(|p| p.health.clone()),
            service_id_taken,
            backend_ids_taken: ids.taken,
            unretired: ids.unretired,
            retiring,
            old_slot: previous.map(|p| p.slot),
            vacated,
        })
    }

    /// Which id each backend of `spec` gets: its current one, its retired one (a backend that comes
    /// back before its id was released keeps its flows), or the lowest free one.
    fn backend_ids_for(
        &self,
        spec: &ServiceSpec,
        previous: Option<&AppliedService>,
        service_id: u32,
    ) -> Result<BackendIds, CapacityError> {
        let mut ids = BackendIds::default();
        let mut missing = Vec::new();
        for addr in spec.backends.keys() {
            if let Some(id) = previous.and_then(|p| p.backend_ids.get(addr)) {
                ids.all.insert(*addr, *id);
            } else if let Some(r) = self
                .retired
                .iter()
                .find(|r| r.service_id == service_id && r.addr == *addr)
            {
                ids.all.insert(*addr, r.id);
                ids.unretired.push(r.id);
            } else {
                missing.push(*addr);
            }
        }
        let fresh = self.backend_ids.peek(missing.len());
        if fresh.len() < missing.len() {
            return Err(CapacityError::TooManyBackends {
                needed: missing.len(),
                free: fresh.len(),
                max: self.capacity.max_backends,
            });
        }
        for (addr, id) in missing.into_iter().zip(fresh) {
            ids.all.insert(addr, id);
            ids.taken.push(id);
        }
        Ok(ids)
    }

    /// Step 1: every backend entry that differs from what the map holds, new ids' counters zeroed.
    fn backend_steps(
        &self,
        spec: &ServiceSpec,
        health: &ServiceHealth,
        previous: Option<&AppliedService>,
        service_id: u32,
        ids: &BackendIds,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
        for (addr, b) in &spec.backends {
            let Some(&id) = ids.all.get(addr) else {
                continue;
            };
            let entry = backend_entry(addr, service_id, b.weight, backend_flags(b, health, addr));
            let old = if ids.taken.contains(&id) {
                if id < self.conns_zeroed_from {
                    steps.push(Step::new(Op::SetBackendConns { id, conns: 0 }, None));
                }
                BackendEntry::default()
            } else if ids.unretired.contains(&id) {
                retired_entry(*addr, service_id)
            } else if let Some(pinned) = previous.and_then(|p| p.pinned.as_ref()) {
                pinned.backends.get(addr).copied().unwrap_or_default()
            } else {
                previous
                    .and_then(|p| Some((p.spec.backends.get(addr)?, &p.health)))
                    .map(|(pb, ph)| {
                        backend_entry(addr, service_id, pb.weight, backend_flags(pb, ph, addr))
                    })
                    .unwrap_or_default()
            };
            if entry != old {
                steps.push(Step::new(
                    Op::PutBackend { id, entry },
                    Some(Op::PutBackend { id, entry: old }),
                ));
            }
        }
        steps
    }

    /// Takes what `change` allocated and records it as applied (call once its steps are written).
    pub fn commit(&mut self, change: ServiceChange, now: Instant) {
        let applied = change.applied;
        if change.service_id_taken {
            self.service_ids.take(applied.id);
        }
        for id in &change.backend_ids_taken {
            self.backend_ids.take(*id);
            self.conns_zeroed_from = self.conns_zeroed_from.max(id.saturating_add(1));
        }
        self.slots.take(applied.slot);
        self.retired.retain(|r| !change.unretired.contains(&r.id));
        self.retired
            .extend(change.retiring.iter().map(|(addr, id)| RetiredBackend {
                id: *id,
                service_id: applied.id,
                addr: *addr,
                since: now,
            }));
        if let Some(slot) = change.old_slot {
            self.quarantine.push((slot, now));
        }
        self.services.insert(applied.spec.name.clone(), applied);
    }

    /// The writes that take service `name` out (`None`: it is not applied).
    pub fn plan_removal(&self, name: &str, claimed: &BTreeSet<VipKey>) -> Option<Removal> {
        let prev = self.services.get(name)?;
        let key = prev.spec.vip_key();
        let (steps, vacated) = if claimed.contains(&key) {
            (Vec::new(), Some(key))
        } else {
            (vec![Step::new(Op::DeleteService { key }, None)], None)
        };
        let mut cleanup = vec![Op::PutServiceMeta {
            id: prev.id,
            meta: ServiceMeta::default(),
        }];
        cleanup.extend(
            prev.backend_ids
                .iter()
                .map(|(addr, id)| retire_op(*addr, *id, prev.id)),
        );
        Some(Removal {
            name: name.to_owned(),
            steps,
            cleanup,
            vacated,
        })
    }

    pub fn commit_removal(&mut self, removal: Removal, now: Instant) {
        let Some(prev) = self.services.remove(&removal.name) else {
            return;
        };
        self.quarantine.push((prev.slot, now));
        self.retired
            .extend(prev.backend_ids.iter().map(|(addr, id)| RetiredBackend {
                id: *id,
                service_id: prev.id,
                addr: *addr,
                since: now,
            }));
        // The service id is reused only after its retired backends are gone (flows check service ids).
        self.release_service_id_when_idle(prev.id);
    }

    /// Of `keys` (VIPs left in the map for a desired service to take over), those no applied service
    /// holds: their claimant failed, so they must be deleted.
    pub fn unheld(&self, keys: &BTreeSet<VipKey>) -> Vec<VipKey> {
        let held: BTreeSet<VipKey> = self.services.values().map(|s| s.spec.vip_key()).collect();
        keys.iter().filter(|k| !held.contains(k)).copied().collect()
    }

    /// Retired backends that no flow refers to (`in_use`, from the sweeper) and that have been retired
    /// for at least `grace`, with the writes that clear them.
    pub fn plan_release(
        &self,
        in_use: &BTreeSet<u32>,
        grace: Duration,
        now: Instant,
    ) -> Vec<Release> {
        self.retired
            .iter()
            .filter(|r| !in_use.contains(&r.id) && now.duration_since(r.since) >= grace)
            .map(|r| Release {
                id: r.id,
                ops: vec![
                    Op::PutBackend {
                        id: r.id,
                        entry: BackendEntry::default(),
                    },
                    Op::SetBackendConns { id: r.id, conns: 0 },
                ],
            })
            .collect()
    }

    /// Gives a released backend's id back (call once its ops are written).
    pub fn commit_release(&mut self, id: u32) {
        let Some(pos) = self.retired.iter().position(|r| r.id == id) else {
            return;
        };
        let r = self.retired.remove(pos);
        self.backend_ids.give_back(r.id);
        if !self.services.values().any(|s| s.id == r.service_id) {
            self.release_service_id_when_idle(r.service_id);
        }
    }

    fn release_service_id_when_idle(&mut self, id: u32) {
        if !self.retired.iter().any(|r| r.service_id == id) {
            self.service_ids.give_back(id);
        }
    }
}

#[derive(Debug, Default)]
struct BackendIds {
    all: BTreeMap<SocketAddr, u32>,
    /// Fresh from the pool.
    taken: Vec<u32>,
    /// Back from retirement.
    unretired: Vec<u32>,
}

fn backend_flags(b: &BackendSpec, health: &ServiceHealth, addr: &SocketAddr) -> u32 {
    let mut flags = BACKEND_F_VALID;
    if !b.takes_new_flows() {
        flags |= BACKEND_F_DRAINING;
    }
    if health.down.contains(addr) {
        flags |= BACKEND_F_DOWN;
    }
    flags
}

fn retired_entry(addr: SocketAddr, service_id: u32) -> BackendEntry {
    backend_entry(&addr, service_id, 0, BACKEND_F_VALID | BACKEND_F_DRAINING)
}

fn retire_op(addr: SocketAddr, id: u32, service_id: u32) -> Op {
    Op::PutBackend {
        id,
        entry: retired_entry(addr, service_id),
    }
}

/// The backends that take new flows and are not down, with their ids.
fn table_backends(
    spec: &ServiceSpec,
    health: &ServiceHealth,
    ids: &BTreeMap<SocketAddr, u32>,
) -> Vec<TableBackend> {
    table_candidates(spec, health)
        .filter_map(|b| ids.get(&b.addr).map(|id| TableBackend { id: *id, ..b }))
        .collect()
}

/// The tables of every service of `desired` with `health`, built on every CPU for a planner of
/// `table_size` entries per slot and `seed` (before the data plane, or the planner, exists).
/// `ahead` holds tables built earlier (while the state was read): those that fit their service's
/// backends are kept, only the others are built. Returns the tables and how many were kept.
pub fn prebuild_for(
    desired: &DesiredState,
    health: &crate::health::HealthView,
    table_size: u32,
    seed: u32,
    mut ahead: BTreeMap<String, Prebuilt>,
) -> (BTreeMap<String, Prebuilt>, usize) {
    let mut ready = BTreeMap::new();
    let mut to_build: Vec<(&ServiceSpec, ServiceHealth)> = Vec::new();
    for spec in desired.services.values() {
        let health = ServiceHealth::of(spec, health);
        let fits = ahead.remove(&spec.name).filter(|built| {
            let backends: Vec<TableBackend> = table_candidates(spec, &health).collect();
            built.is_for(spec.scheduler.table_kind(), &backends, table_size)
        });
        match fits {
            Some(built) => {
                ready.insert(spec.name.clone(), built);
            }
            None => to_build.push((spec, health)),
        }
    }
    let kept = ready.len();
    ready.extend(prebuild_tables(
        to_build.iter().map(|(spec, health)| (*spec, health)),
        table_size,
        seed,
    ));
    (ready, kept)
}

/// The tables of one service with none of its backends down, built on this thread (start-up
/// builds them while the rest of the state is still read; [`prebuild_for`] checks them).
pub fn prebuild_one(spec: &ServiceSpec, table_size: u32, seed: u32) -> Prebuilt {
    Prebuilt::build(table_job(spec, &ServiceHealth::default()), table_size, seed)
}

/// What building `spec`'s tables with `health` takes: its table kind and candidates.
fn table_job(spec: &ServiceSpec, health: &ServiceHealth) -> TableJob {
    TableJob {
        kind: spec.scheduler.table_kind(),
        backends: table_candidates(spec, health).collect(),
    }
}

fn prebuild_tables<'a>(
    services: impl IntoIterator<Item = (&'a ServiceSpec, &'a ServiceHealth)>,
    table_size: u32,
    seed: u32,
) -> BTreeMap<String, Prebuilt> {
    let (names, jobs): (Vec<String>, Vec<TableJob>) = services
        .into_iter()
        .map(|(spec, health)| (spec.name.clone(), table_job(spec, health)))
        .unzip();
    names
        .into_iter()
        .zip(prebuild(jobs, table_size, seed))
        .filter_map(|(name, prebuilt)| Some((name, prebuilt?)))
        .collect()
}

/// The backends of `spec` its table holds (those taking new flows and not down), in table order;
/// the ids are not assigned yet (0).
fn table_candidates<'a>(
    spec: &'a ServiceSpec,
    health: &'a ServiceHealth,
) -> impl Iterator<Item = TableBackend> + 'a {
    spec.backends
        .iter()
        .filter(|(addr, b)| b.takes_new_flows() && !health.down.contains(addr))
        .map(|(addr, b)| TableBackend {
            id: 0,
            addr: *addr,
            weight: b.weight,
        })
}
