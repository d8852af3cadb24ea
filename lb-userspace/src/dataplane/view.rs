//! `MapsView`: typed handles of every map. The daemon owns one through `Dataplane` (and writes
//! through it); `lb status` opens one from the pins without the daemon and only reads.

use std::{collections::BTreeMap, os::fd::AsFd as _, path::Path};

use aya::maps::{
    Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key,
};
use lb_common::{
    BACKEND_F_VALID, BackendEntry, Counter, DecapCounter, DecapKey, DecapSrcKey, FlowBucket,
    FlowEntry, FlowKey, LbConfig, PersistEntry, PersistKey, ServiceEntry, ServiceMeta,
    TrafficStats, VipAddrKey, VipKey, VipSlot,
    flow::flow_capacity,
    limits::{Capacity, SCHEDULE_IDS_PER_ENTRY, SPARE_TABLE_SLOTS},
    maps,
};

use crate::plan::{PinnedService, PinnedState};

use super::{
    DataplaneError, batch, error::map_op, flow_table::FlowTableMmap, mapped_array::MappedArray,
    schedule::ScheduleMmap,
};

/// What a view may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// `lb status`, `lb flows`, scrapes.
    ReadOnly,
    /// The sweeper: frees flows in the flow table, writes connection counters.
    Sweep,
    /// The daemon's own data plane.
    ReadWrite,
}

/// Typed handles of every map of the data plane.
pub struct MapsView {
    pub(crate) services: HashMap<MapData, VipKey, ServiceEntry>,
    pub(crate) vip_addrs: HashMap<MapData, VipAddrKey, u32>,
    pub(crate) vip_filter: Array<MapData, u64>,
    pub(crate) vip_table: Array<MapData, VipSlot>,
    pub(crate) service_meta: Array<MapData, ServiceMeta>,
    pub(crate) backends: Array<MapData, BackendEntry>,
    /// `LB_BACKENDS` mapped read-only: whole-array reads are one copy.
    backends_mapped: MappedArray<BackendEntry>,
    pub(crate) schedule: ScheduleMmap,
    // Kept so the view owns every map; read and swept through `flow_table`.
    #[allow(dead_code)]
    pub(crate) flows: Array<MapData, FlowBucket>,
    flow_table: FlowTableMmap,
    // Written by the XDP program only; kept so the view owns every map.
    #[allow(dead_code)]
    pub(crate) persist: HashMap<MapData, PersistKey, PersistEntry>,
    pub(crate) backend_conns: Array<MapData, u64>,
    /// `LB_BE_CONNS` mapped read-only (the program updates it atomically; reads copy it).
    conns_mapped: MappedArray<u64>,
    #[allow(dead_code)]
    pub(crate) cursors: PerCpuArray<MapData, u32>,
    pub(crate) stats: PerCpuArray<MapData, u64>,
    pub(crate) service_stats: PerCpuArray<MapData, TrafficStats>,
    /// Per CPU as a plain array (`max_backends` slots per CPU, CPU-major); zeroed through it.
    pub(crate) backend_stats: Array<MapData, TrafficStats>,
    /// `LB_BE_STATS` mapped read-only: every CPU's slots read in one copy each.
    backend_stats_mapped: MappedArray<TrafficStats>,
    /// The possible CPUs, each with its part of `LB_BE_STATS`.
    cpus: u32,
    pub(crate) config: Array<MapData, LbConfig>,
    pub(crate) decap_addrs: HashMap<MapData, DecapKey, u32>,
    pub(crate) decap_stats: PerCpuArray<MapData, u64>,
    pub(crate) decap_allow: LpmTrie<MapData, DecapSrcKey, u32>,
    capacity: Capacity,
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    name: &'static str,
    map: Map,
) -> Result<T, DataplaneError> {
    T::try_from(map).map_err(|source| DataplaneError::MissingMap { map: name, source })
}

fn max_entries<K: aya::Pod, V, M: IterableMap<K, V>>(
    name: &'static str,
    m: &M,
) -> Result<u32, DataplaneError> {
    Ok(m.map()
        .info()
        .map_err(map_op(name, "reading map info"))?
        .max_entries())
}

impl MapsView {
    /// Builds the view from a source of maps by name (the loaded object, or the pins).
    pub(crate) fn from_source(
        mut source: impl FnMut(&'static str) -> Result<Map, DataplaneError>,
        access: Access,
    ) -> Result<Self, DataplaneError> {
        let writable = access == Access::ReadWrite;
        let services: HashMap<_, VipKey, ServiceEntry> =
            typed(maps::SERVICES, source(maps::SERVICES)?)?;
        let backends: Array<_, BackendEntry> = typed(maps::BACKENDS, source(maps::BACKENDS)?)?;
        let schedule_map: Array<_, [u32; 2]> = typed(maps::SCHEDULE, source(maps::SCHEDULE)?)?;
        let flows: Array<_, FlowBucket> = typed(maps::FLOWS, source(maps::FLOWS)?)?;
        let persist: HashMap<_, PersistKey, PersistEntry> =
            typed(maps::PERSIST, source(maps::PERSIST)?)?;

        let max_services = max_entries(maps::SERVICES, &services)?;
        let flow_buckets = max_entries(maps::FLOWS, &flows)?;
        // Ids the pool holds: `SCHEDULE_IDS_PER_ENTRY` per map element.
        let schedule_entries = max_entries(maps::SCHEDULE, &schedule_map)? * SCHEDULE_IDS_PER_ENTRY;
        let capacity = Capacity {
            max_services,
            max_backends: max_entries(maps::BACKENDS, &backends)?,
            table_size: schedule_entries / (max_services + SPARE_TABLE_SLOTS),
            flow_table_size: flow_capacity(flow_buckets),
            persist_table_size: max_entries(maps::PERSIST, &persist)?,
        };
        let schedule =
            ScheduleMmap::new(schedule_map.map().fd().as_fd(), schedule_entries, writable)?;
        let flow_table = FlowTableMmap::new(
            flows.map().fd().as_fd(),
            flow_buckets,
            access != Access::ReadOnly,
        )?;
        let backends_mapped = MappedArray::new(
            backends.map().fd().as_fd(),
            maps::BACKENDS,
            capacity.max_backends,
        )?;
        let backend_stats: Array<_, TrafficStats> =
            typed(maps::BACKEND_STATS, source(maps::BACKEND_STATS)?)?;
        let cpus = u32::try_from(super::possible_cpus()?).unwrap_or(u32::MAX);
        let stats_entries = max_entries(maps::BACKEND_STATS, &backend_stats)?;
        if u64::from(stats_entries) != u64::from(capacity.max_backends) * u64::from(cpus) {
            return Err(DataplaneError::PerCpuShape {
                map: maps::BACKEND_STATS,
                entries: stats_entries,
                per_cpu: capacity.max_backends,
                cpus,
            });
        }
        let backend_stats_mapped = MappedArray::new(
            backend_stats.map().fd().as_fd(),
            maps::BACKEND_STATS,
            stats_entries,
        )?;
        let backend_conns: Array<_, u64> =
            typed(maps::BACKEND_CONNS, source(maps::BACKEND_CONNS)?)?;
        let conns_mapped = MappedArray::new(
            backend_conns.map().fd().as_fd(),
            maps::BACKEND_CONNS,
            capacity.max_backends,
        )?;

        Ok(MapsView {
            services,
            vip_addrs: typed(maps::VIP_ADDRS, source(maps::VIP_ADDRS)?)?,
            vip_filter: typed(maps::VIP_FILTER, source(maps::VIP_FILTER)?)?,
            vip_table: typed(maps::VIP_TABLE, source(maps::VIP_TABLE)?)?,
            service_meta: typed(maps::SERVICE_META, source(maps::SERVICE_META)?)?,
            backends,
            backends_mapped,
            schedule,
            flows,
            flow_table,
            persist,
            backend_conns,
            conns_mapped,
            cursors: typed(maps::CURSORS, source(maps::CURSORS)?)?,
            stats: typed(maps::STATS, source(maps::STATS)?)?,
            service_stats: typed(maps::SERVICE_STATS, source(maps::SERVICE_STATS)?)?,
            backend_stats,
            backend_stats_mapped,
            cpus,
            config: typed(maps::CONFIG, source(maps::CONFIG)?)?,
            decap_addrs: typed(maps::DECAP_ADDRS, source(maps::DECAP_ADDRS)?)?,
            decap_stats: typed(maps::DECAP_STATS, source(maps::DECAP_STATS)?)?,
            decap_allow: typed(maps::DECAP_ALLOW, source(maps::DECAP_ALLOW)?)?,
            capacity,
        })
    }

    /// Opens the maps a running `lb run` pinned under `pin_dir`, read-only.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, DataplaneError> {
        Self::open_pins(pin_dir, Access::ReadOnly)
    }

    /// Opens the pinned maps for a sweep: read-only but for the flow table, whose idle flows
    /// the sweep frees.
    pub fn open_pinned_for_sweeps(pin_dir: &Path) -> Result<Self, DataplaneError> {
        Self::open_pins(pin_dir, Access::Sweep)
    }

    fn open_pins(pin_dir: &Path, access: Access) -> Result<Self, DataplaneError> {
        if !pin_dir.exists() {
            return Err(DataplaneError::NoPinDir {
                dir: pin_dir.to_path_buf(),
            });
        }
        // Maps of another layout would be misread (or fail to map): say which binary reads them.
        if let Some(found) = super::pinned_layout_version(pin_dir)
            && found != lb_common::layout::LAYOUT_VERSION
        {
            return Err(DataplaneError::OtherLayout {
                dir: pin_dir.to_path_buf(),
                found,
                expected: lb_common::layout::LAYOUT_VERSION,
            });
        }
        Self::from_source(
            |name| {
                let path = pin_dir.join(name);
                let data =
                    MapData::from_pin(&path).map_err(|source| DataplaneError::NotPinned {
                        map: name,
                        path: path.clone(),
                        source,
                    })?;
                Map::from_map_data(data)
                    .map_err(|source| DataplaneError::MissingMap { map: name, source })
            },
            access,
        )
    }

    /// Every global counter of the balancer, summed over CPUs, in `Counter::ALL` order;
    /// `rx_packets` derived from the verdict counters (`Counter::derive_rx_packets`).
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DataplaneError> {
        let mut counters = Counter::ALL
            .iter()
            .map(|c| Ok((*c, sum_u64(&self.stats, *c as u32, maps::STATS)?)))
            .collect::<Result<Vec<_>, DataplaneError>>()?;
        Counter::derive_rx_packets(&mut counters);
        Ok(counters)
    }

    /// Every counter of the decap program, summed over CPUs.
    pub fn decap_counters(&self) -> Result<Vec<(DecapCounter, u64)>, DataplaneError> {
        DecapCounter::ALL
            .iter()
            .map(|c| {
                Ok((
                    *c,
                    sum_u64(&self.decap_stats, *c as u32, maps::DECAP_STATS)?,
                ))
            })
            .collect()
    }

    /// The outer source prefixes `lb decap` accepts tunnel packets from (trie keys).
    pub fn decap_allowed_prefixes(&self) -> Result<Vec<Key<DecapSrcKey>>, DataplaneError> {
        self.decap_allow
            .keys()
            .take(lb_common::limits::MAX_DECAP_ALLOW_PREFIXES as usize)
            .collect::<Result<_, _>>()
            .map_err(map_op(maps::DECAP_ALLOW, "iterate"))
    }

    /// The program configuration, with the clock it reads (`now_ns`).
    pub fn config(&self) -> Result<LbConfig, DataplaneError> {
        self.config
            .get(&0, 0)
            .map_err(map_op(maps::CONFIG, "lookup"))
    }

    /// Every service (VIP) entry.
    pub fn services(&self) -> Result<Vec<(VipKey, ServiceEntry)>, DataplaneError> {
        let (keys, values) = batch::read_hash(
            self.services.map().fd().as_fd(),
            self.capacity.max_services,
            std::mem::size_of::<VipKey>(),
            std::mem::size_of::<ServiceEntry>(),
        )
        .map_err(map_op(maps::SERVICES, "batch lookup"))?;
        Ok(decode_pairs(&keys, &values))
    }

    /// Every service's metadata, indexed by service id (a few syscalls for the whole array).
    pub fn all_service_meta(&self) -> Result<Vec<ServiceMeta>, DataplaneError> {
        read_all(
            &self.service_meta,
            self.capacity.max_services,
            maps::SERVICE_META,
        )
    }

    /// Every service's traffic summed over CPUs, indexed by service id.
    pub fn all_service_stats(&self) -> Result<Vec<TrafficStats>, DataplaneError> {
        read_traffic(
            &self.service_stats,
            self.capacity.max_services,
            maps::SERVICE_STATS,
        )
    }

    pub fn service_meta(&self, id: u32) -> Result<ServiceMeta, DataplaneError> {
        self.service_meta
            .get(&id, 0)
            .map_err(map_op(maps::SERVICE_META, "lookup"))
    }

    pub fn backend(&self, id: u32) -> Result<BackendEntry, DataplaneError> {
        self.backends
            .get(&id, 0)
            .map_err(map_op(maps::BACKENDS, "lookup"))
    }

    /// Active connections of a backend as the XDP program counts them.
    pub fn backend_conns(&self, id: u32) -> Result<u64, DataplaneError> {
        self.backend_conns
            .get(&id, 0)
            .map_err(map_op(maps::BACKEND_CONNS, "lookup"))
    }

    /// Traffic of a service, summed over CPUs.
    pub fn service_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        sum_traffic(&self.service_stats, id, maps::SERVICE_STATS)
    }

    /// Traffic of a backend, summed over CPUs.
    pub fn backend_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        if id >= self.capacity.max_backends {
            return Err(DataplaneError::OutOfRange {
                map: maps::BACKEND_STATS,
                index: u64::from(id),
                len: 1,
                capacity: u64::from(self.capacity.max_backends),
            });
        }
        Ok(self.backend_traffic(id))
    }

    /// Traffic of backend `id` (below `max_backends`), summed over its slot of every CPU.
    fn backend_traffic(&self, id: u32) -> TrafficStats {
        let per_cpu = self.capacity.max_backends;
        let mut total = TrafficStats::default();
        for cpu in 0..self.cpus {
            if let Some(one) = self
                .backend_stats_mapped
                .get(cpu.saturating_mul(per_cpu).saturating_add(id))
            {
                total.add(&one);
            }
        }
        total
    }

    /// Elements of `LB_BE_STATS` (every CPU's slots).
    pub(crate) fn backend_stats_entries(&self) -> u32 {
        self.capacity.max_backends.saturating_mul(self.cpus)
    }

    /// The table a service entry points at.
    pub fn table(&self, entry: &ServiceEntry) -> Result<Vec<u32>, DataplaneError> {
        self.schedule.read(entry.table_offset, entry.table_len)
    }

    /// What a service entry uses of its slot: the scheduler's table and the hash table after it.
    pub fn slot_contents(&self, entry: &ServiceEntry) -> Result<Vec<u32>, DataplaneError> {
        self.schedule.read(entry.table_offset, entry.slot_span())
    }

    /// Word `word` of the VIP-address filter (`LB_VIP_FILTER`).
    pub fn vip_filter_word(&self, word: u32) -> Result<u64, DataplaneError> {
        self.vip_filter
            .get(&word, 0)
            .map_err(map_op(maps::VIP_FILTER, "lookup"))
    }

    /// Slot `slot` of the direct-mapped service table (`LB_VIP_TABLE`).
    pub fn vip_slot(&self, slot: u32) -> Result<VipSlot, DataplaneError> {
        self.vip_table
            .get(&slot, 0)
            .map_err(map_op(maps::VIP_TABLE, "lookup"))
    }

    /// Every tracked flow.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry)>, DataplaneError> {
        Ok(self.flow_table.flows())
    }

    /// How many flows the flow table holds.
    pub fn flow_count(&self) -> Result<usize, DataplaneError> {
        Ok(self.flow_table.count())
    }

    /// Buckets of the flow table (what the program must be told in `LbConfig::flow_buckets`).
    pub fn flow_buckets(&self) -> u32 {
        self.flow_table.buckets()
    }

    /// Every backend's active-connection count, indexed by backend id.
    pub fn all_backend_conns(&self) -> Result<Vec<u64>, DataplaneError> {
        Ok(self.conns_mapped.read(self.capacity.max_backends))
    }

    pub fn set_backend_conns(&mut self, id: u32, conns: u64) -> Result<(), DataplaneError> {
        self.backend_conns
            .set(id, conns, 0)
            .map_err(map_op(maps::BACKEND_CONNS, "update"))
    }

    /// Deletes a flow unless a packet touched it after `seen` was read; one already gone
    /// (evicted, expired) or touched is no error. True if it was deleted.
    pub fn delete_flow(&mut self, key: &FlowKey, seen: &FlowEntry) -> Result<bool, DataplaneError> {
        self.flow_table.release(key, seen)
    }

    /// Every backend slot up to the last valid one (ids are given out lowest first, so the slots
    /// beyond are unused), its connection count and its traffic (summed over CPUs), index by
    /// index: copied from the arrays' mappings.
    ///
    /// One pass over the mappings, element by element: at 100,000 backends, copying each array
    /// first made most of `lb status`'s page faults.
    pub fn backend_slots(&self) -> Result<Vec<BackendSlot>, DataplaneError> {
        let used = (0..self.capacity.max_backends)
            .rev()
            .find(|&id| {
                self.backends_mapped
                    .get(id)
                    .is_some_and(|b| b.flags & BACKEND_F_VALID != 0)
            })
            .map_or(0, |last| last + 1);
        let mut slots = Vec::with_capacity(used as usize);
        for id in 0..used {
            slots.push(BackendSlot {
                id,
                entry: self.backends_mapped.get(id).unwrap_or_default(),
                conns: self.conns_mapped.get(id).unwrap_or_default(),
                stats: self.backend_traffic(id),
            });
        }
        Ok(slots)
    }

    /// What the planner needs of these maps to adopt them: every service with its metadata and
    /// table, and every backend entry marked valid.
    pub fn pinned_state(&self) -> Result<PinnedState, DataplaneError> {
        let services = self
            .services()?
            .into_iter()
            .map(|(key, entry)| {
                Ok(PinnedService {
                    key,
                    entry,
                    meta: self.service_meta(entry.id)?,
                    table: self.slot_contents(&entry)?,
                })
            })
            .collect::<Result<Vec<_>, DataplaneError>>()?;
        let entries = self.backends_mapped.read(self.capacity.max_backends);
        let backends: BTreeMap<u32, BackendEntry> = (0u32..)
            .zip(entries)
            .filter(|(_, b)| b.flags & BACKEND_F_VALID != 0)
            .collect();
        Ok(PinnedState { services, backends })
    }

    /// The sizes the maps were created with.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }
}

/// One backend slot as `lb status` shows it.
pub struct BackendSlot {
    pub id: u32,
    pub entry: BackendEntry,
    pub conns: u64,
    pub stats: TrafficStats,
}

/// Every element of an array map, in index order (one batch read).
fn read_all<T: aya::Pod + bytemuck::Pod>(
    map: &Array<MapData, T>,
    len: u32,
    name: &'static str,
) -> Result<Vec<T>, DataplaneError> {
    let size = std::mem::size_of::<T>();
    let raw = batch::read_array(map.map().fd().as_fd(), len, size)
        .map_err(map_op(name, "batch lookup"))?;
    Ok(raw
        .chunks_exact(size)
        .map(bytemuck::pod_read_unaligned)
        .collect())
}

/// Every element of a per-CPU traffic array, summed over CPUs, in index order.
fn read_traffic(
    map: &PerCpuArray<MapData, TrafficStats>,
    len: u32,
    name: &'static str,
) -> Result<Vec<TrafficStats>, DataplaneError> {
    let cpus = super::possible_cpus()?;
    let elem = batch::per_cpu_elem_size::<TrafficStats>(cpus);
    let raw = batch::read_array(map.map().fd().as_fd(), len, elem)
        .map_err(map_op(name, "batch lookup"))?;
    let stride = std::mem::size_of::<TrafficStats>().next_multiple_of(8);
    Ok(raw
        .chunks_exact(elem)
        .map(|per_cpu| {
            let mut total = TrafficStats::default();
            for cpu in per_cpu.chunks_exact(stride) {
                total.add(&bytemuck::pod_read_unaligned(
                    &cpu[..std::mem::size_of::<TrafficStats>()],
                ));
            }
            total
        })
        .collect())
}

/// Key and value bytes of a batch read, as records.
fn decode_pairs<K: bytemuck::Pod, V: bytemuck::Pod>(keys: &[u8], values: &[u8]) -> Vec<(K, V)> {
    keys.chunks_exact(std::mem::size_of::<K>())
        .zip(values.chunks_exact(std::mem::size_of::<V>()))
        .map(|(k, v)| {
            (
                bytemuck::pod_read_unaligned(k),
                bytemuck::pod_read_unaligned(v),
            )
        })
        .collect()
}

fn sum_u64(
    map: &PerCpuArray<MapData, u64>,
    index: u32,
    name: &'static str,
) -> Result<u64, DataplaneError> {
    let values = map.get(&index, 0).map_err(map_op(name, "lookup"))?;
    Ok(values.iter().fold(0u64, |acc, v| acc.wrapping_add(*v)))
}

fn sum_traffic(
    map: &PerCpuArray<MapData, TrafficStats>,
    index: u32,
    name: &'static str,
) -> Result<TrafficStats, DataplaneError> {
    let values = map.get(&index, 0).map_err(map_op(name, "lookup"))?;
    let mut total = TrafficStats::default();
    for v in values.iter() {
        total.add(v);
    }
    Ok(total)
}
