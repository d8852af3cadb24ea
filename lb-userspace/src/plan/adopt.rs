//! Adoption: a planner seeded from what the pinned maps of an earlier `lb run` hold, so a restart
//! keeps every service id, backend id and table slot (the flow table, the persistence table and the
//! connection counters refer to them) and its first apply writes only what differs.
//!
//! A pinned service is matched to a desired one by its VIP. It is adopted *unchanged* when the maps
//! hold exactly what this planner would write for it (entries, metadata, table); otherwise it is
//! adopted *to rewrite*: its ids are kept, and the next apply writes it in full against what the maps
//! hold. A pinned service no desired one claims is adopted as an *orphan* the next apply removes.
//! Pinned backends no adopted service holds are draining (retired) until no flow refers to them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use lb_common::{BACKEND_F_VALID, BackendEntry, ServiceEntry, ServiceMeta, VipKey};
use thiserror::Error;

use super::{AppliedService, Planner, RetiredBackend, backend_entry, backend_flags, service_meta};
use super::{ServiceHealth, table_backends};
use crate::health::HealthView;
use crate::model::{DesiredState, ServiceSpec};
use crate::tables::build_slot_tables;

/// One service as the pinned maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedService {
    pub key: VipKey,
    pub entry: ServiceEntry,
    pub meta: ServiceMeta,
    /// The slot's contents the entry uses (scheduler table, then hash table).
    pub table: Vec<u32>,
}

/// What the pinned maps hold, as far as the planner decides it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinnedState {
    pub services: Vec<PinnedService>,
    /// Every backend entry marked valid, by id.
    pub backends: BTreeMap<u32, BackendEntry>,
}

/// What a pinned service's adoption found it holds when it must be rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PinnedWrites {
    pub backends: BTreeMap<SocketAddr, BackendEntry>,
    pub meta: ServiceMeta,
}

/// What [`Planner::adopt`] did, by service name (each list sorted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    /// The maps hold exactly these services' writes: the next apply leaves them alone.
    pub unchanged: Vec<String>,
    /// Ids kept, written in full by the next apply.
    pub rewrite: Vec<String>,
    /// Pinned VIPs no desired service claims (named `(pinned <vip>)`): the next apply removes them.
    pub orphans: Vec<String>,
    /// Pinned backends no adopted service holds, now draining.
    pub draining: usize,
    /// The highest generation the pinned services carry.
    pub generation: u32,
}

/// Pinned maps this build cannot have written: adopting them would corrupt forwarding.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AdoptError {
    #[error(
        "pinned service {vip}: table at offset {offset} with {len} entries is not a table slot of \
         these maps (table size {table_size}, {slots} slots)"
    )]
    BadSlot {
        vip: String,
        offset: u32,
        len: u32,
        table_size: u32,
        slots: u32,
    },
    #[error("pinned {what} id {id} is out of range or used twice")]
    BadId { what: &'static str, id: u32 },
    #[error("pinned backend {id} holds no valid address (family {family})")]
    BadAddress { id: u32, family: u8 },
}

impl Planner {
    /// Seeds this (new, empty) planner from `pinned`, matching its services to `desired` by VIP and
    /// judging them with `health` (the health the next apply will use).
    pub fn adopt(
        &mut self,
        pinned: &PinnedState,
        desired: &DesiredState,
        health: &HealthView,
        now: Instant,
    ) -> Result<Adoption, AdoptError> {
        // Any counter of pinned maps may hold a count.
        self.conns_zeroed_from = self.capacity.max_backends;
        let by_key: BTreeMap<VipKey, &Arc<ServiceSpec>> = desired
            .services
            .values()
            .map(|s| (s.vip_key(), s))
            .collect();
        let mut by_service: BTreeMap<u32, Vec<(u32, SocketAddr)>> = BTreeMap::new();
        for (id, b) in &pinned.backends {
            if b.flags & BACKEND_F_VALID == 0 {
                continue;
            }
            if !self.backend_ids.take(*id) {
                return Err(AdoptError::BadId {
                    what: "backend",
                    id: *id,
                });
            }
            by_service
                .entry(b.service_id)
                .or_default()
                .push((*id, backend_addr(*id, b)?));
        }
        let mut adoption = Adoption::default();
        for p in &pinned.services {
            self.take_service(p)?;
            adoption.generation = adoption.generation.max(p.entry.generation);
            let held = by_service.remove(&p.entry.id).unwrap_or_default();
            let spec = by_key.get(&p.key).copied();
            let (applied, left) = match spec {
                Some(spec) => self.adopted(spec, p, held, health, pinned),
                None => (self.orphan(p, held), Vec::new()),
            };
            self.retire(&left, p.entry.id, now);
            let name = applied.spec.name.clone();
            match (spec, &applied.pinned) {
                (None, _) => adoption.orphans.push(name.clone()),
                (Some(_), None) => adoption.unchanged.push(name.clone()),
                (Some(_), Some(_)) => adoption.rewrite.push(name.clone()),
            }
            self.services.insert(name, applied);
        }
        // Backends of services no longer in the maps: draining, their service id kept until they go.
        for (service_id, left) in by_service {
            if service_id < self.capacity.max_services {
                self.service_ids.take(service_id);
            }
            self.retire(&left, service_id, now);
        }
        adoption.draining = self.retired.len();
        for names in [
            &mut adoption.unchanged,
            &mut adoption.rewrite,
            &mut adoption.orphans,
        ] {
            names.sort();
        }
        Ok(adoption)
    }

    /// Names of adopted services whose maps differ from what this planner would write.
    pub fn stale(&self) -> impl Iterator<Item = &str> {
        self.services
            .iter()
            .filter(|(_, s)| s.pinned.is_some())
            .map(|(n, _)| n.as_str())
    }

    fn take_service(&mut self, p: &PinnedService) -> Result<(), AdoptError> {
        if p.entry.id >= self.capacity.max_services || !self.service_ids.take(p.entry.id) {
            return Err(AdoptError::BadId {
                what: "service",
                id: p.entry.id,
            });
        }
        let size = self.capacity.table_size;
        let slot = p.entry.table_offset / size;
        let fits = p.entry.table_offset.is_multiple_of(size)
            && slot < self.capacity.table_slots()
            && p.entry.hash_offset >= p.entry.table_offset
            && p.entry.slot_span() <= size;
        if !fits || !self.slots.take(slot) {
            return Err(AdoptError::BadSlot {
                vip: format!("{:?}", p.key),
                offset: p.entry.table_offset,
                len: p.entry.table_len,
                table_size: size,
                slots: self.capacity.table_slots(),
            });
        }
        Ok(())
    }

    /// `spec` on `p`'s ids; the pinned backends it does not hold are returned to retire.
    fn adopted(
        &self,
        spec: &Arc<ServiceSpec>,
        p: &PinnedService,
        held: Vec<(u32, SocketAddr)>,
        health: &HealthView,
        pinned: &PinnedState,
    ) -> (AppliedService, Vec<(u32, SocketAddr)>) {
        let mut backend_ids = BTreeMap::new();
        let mut left = Vec::new();
        for (id, addr) in held {
            if spec.backends.contains_key(&addr) && !backend_ids.contains_key(&addr) {
                backend_ids.insert(addr, id);
            } else {
                left.push((id, addr));
            }
        }
        let health = ServiceHealth::of(spec, health);
        let mut applied = AppliedService {
            spec: Arc::clone(spec),
            id: p.entry.id,
            slot: p.entry.table_offset / self.capacity.table_size,
            backend_ids,
            health,
            entry: p.entry,
            pinned: None,
        };
        if !self.holds_exactly(&applied, p, pinned) {
            applied.pinned = Some(PinnedWrites {
                backends: applied
                    .backend_ids
                    .iter()
                    .filter_map(|(addr, id)| Some((*addr, *pinned.backends.get(id)?)))
                    .collect(),
                meta: p.meta,
            });
        }
        (applied, left)
    }

    /// Do the maps hold exactly what planning `a` from nothing would write (ids and slot aside)?
    fn holds_exactly(&self, a: &AppliedService, p: &PinnedService, pinned: &PinnedState) -> bool {
        let spec = &a.spec;
        if a.backend_ids.len() != spec.backends.len() {
            return false;
        }
        let backends_match = spec.backends.iter().all(|(addr, b)| {
            let want = backend_entry(addr, a.id, b.weight, backend_flags(b, &a.health, addr));
            a.backend_ids
                .get(addr)
                .and_then(|id| pinned.backends.get(id))
                == Some(&want)
        });
        let tables = build_slot_tables(
            spec.scheduler.table_kind(),
            &table_backends(spec, &a.health, &a.backend_ids),
            self.capacity.table_size,
            self.seed,
        );
        let e = &p.entry;
        backends_match
            && p.meta == service_meta(spec)
            && p.table == tables.ids
            && e.table_len == tables.table_len
            && e.hash_offset == e.table_offset + tables.hash_start
            && e.hash_len == tables.hash_len
            && e.scheduler == spec.scheduler as u32
            && e.persist_timeout_s == spec.persistence_timeout_s
            && e.persist_prefix_len == spec.persist_prefix_len()
            && e.flags == 0
    }

    /// A pinned service nobody claims, with the backends it holds, under a name no valid service
    /// can have (its removal deletes `p.key`: the VIP is rebuilt from it).
    fn orphan(&self, p: &PinnedService, held: Vec<(u32, SocketAddr)>) -> AppliedService {
        let vip = lb_common::addr::from_words(p.key.addr, p.key.family).map_or_else(
            || SocketAddr::from(([0, 0, 0, 0], 0)),
            |ip| SocketAddr::new(ip, u16::from_be(p.key.port_be)),
        );
        AppliedService {
            spec: Arc::new(ServiceSpec::new(format!("(pinned {vip})"), vip)),
            id: p.entry.id,
            slot: p.entry.table_offset / self.capacity.table_size,
            backend_ids: held.into_iter().map(|(id, addr)| (addr, id)).collect(),
            health: ServiceHealth::default(),
            entry: p.entry,
            pinned: None,
        }
    }

    fn retire(&mut self, backends: &[(u32, SocketAddr)], service_id: u32, now: Instant) {
        self.retired
            .extend(backends.iter().map(|(id, addr)| RetiredBackend {
                id: *id,
                service_id,
                addr: *addr,
                since: now,
            }));
    }
}

fn backend_addr(id: u32, b: &BackendEntry) -> Result<SocketAddr, AdoptError> {
    lb_common::addr::from_words(b.addr, b.family)
        .map(|ip| SocketAddr::new(ip, u16::from_be(b.port_be)))
        .ok_or(AdoptError::BadAddress {
            id,
            family: b.family,
        })
}
