//! Every map of the data plane. Names are `lb_common::maps::*` (the statics carry the same names);
//! sizes are the `lb_common::limits` defaults, which userspace overrides at load time.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_common::{
    BackendEntry, Counter, DecapCounter, DecapKey, DecapSrcKey, FlowBucket, LbConfig, PersistEntry,
    PersistKey, ServiceEntry, ServiceMeta, TrafficStats, VipAddrKey, VipKey, VipSlot,
    flow::flow_buckets,
    limits::{
        DEFAULT_FLOW_TABLE_SIZE, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES, DEFAULT_MAX_VIP_ADDRS,
        DEFAULT_PERSIST_TABLE_SIZE, DEFAULT_TABLE_SIZE, MAX_DECAP_ADDRS, MAX_DECAP_ALLOW_PREFIXES,
        SCHEDULE_IDS_PER_ENTRY, SPARE_TABLE_SLOTS,
    },
    service::{VIP_FILTER_WORDS, VIP_TABLE_SLOTS},
};

#[map]
pub static LB_SERVICES: HashMap<VipKey, ServiceEntry> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// `lb_common::service::vip_filter_bit` of every VIP address set (userspace, with `LB_VIP_ADDRS`).
#[map]
pub static LB_VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// A direct-mapped copy of `LB_SERVICES` (`lb_common::service::VipSlot`), read first.
#[map]
pub static LB_VIP_TABLE: Array<VipSlot> = Array::with_max_entries(VIP_TABLE_SLOTS, 0);

/// Read by userspace only; defined here so one object carries every map.
#[map]
pub static LB_SVC_META: Array<ServiceMeta> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// `BPF_F_MMAPABLE`: `lb status`, scrapes and adoption copy it through a read-only mapping.
#[map]
pub static LB_BACKENDS: Array<BackendEntry> =
    Array::with_max_entries(DEFAULT_MAX_BACKENDS, BPF_F_MMAPABLE);

/// The pool of service tables: backend ids, `SCHEDULE_IDS_PER_ENTRY` (2) per element so the pool is
/// one dense `u32` array. Userspace writes tables through an mmap of it, hence `BPF_F_MMAPABLE`.
#[map]
pub static LB_SCHEDULE: Array<[u32; 2]> = Array::with_max_entries(
    ((DEFAULT_MAX_SERVICES + SPARE_TABLE_SLOTS) * DEFAULT_TABLE_SIZE)
        .div_ceil(SCHEDULE_IDS_PER_ENTRY),
    BPF_F_MMAPABLE,
);

/// The set-associative flow table (`lb_common::flow`); userspace sweeps it through an mmap.
#[map]
pub static LB_FLOWS: Array<FlowBucket> =
    Array::with_max_entries(flow_buckets(DEFAULT_FLOW_TABLE_SIZE), BPF_F_MMAPABLE);

#[map]
pub static LB_PERSIST: LruHashMap<PersistKey, PersistEntry> =
    LruHashMap::with_max_entries(DEFAULT_PERSIST_TABLE_SIZE, 0);

/// Shared across CPUs (least-conn must see every CPU's connections), so updated atomically.
/// `BPF_F_MMAPABLE` for the same readers as `LB_BACKENDS`.
#[map]
pub static LB_BE_CONNS: Array<u64> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, BPF_F_MMAPABLE);

#[map]
pub static LB_CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
pub static LB_SVC_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Per CPU as a plain array, CPU-major: CPU c's counters are elements
/// `c * LB_BE_STATS_STRIDE ..` (`stats::backend_traffic`). Userspace sizes it to max backends ×
/// possible CPUs (the default here is one CPU's) and reads it through a mapping: a per-CPU array
/// costs the kernel one allocation per element at creation and one copy per element per read.
#[map]
pub static LB_BE_STATS: Array<TrafficStats> =
    Array::with_max_entries(DEFAULT_MAX_BACKENDS, BPF_F_MMAPABLE);

/// Mapped into `lb run`'s memory (`BPF_F_MMAPABLE`): its clock thread stores `now_ns` there.
#[map]
pub static LB_CONFIG: Array<LbConfig> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map]
pub static LB_DECAP_ADDRS: HashMap<DecapKey, u32> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// Outer source prefixes tunnel packets are accepted from (`lb decap --allow-src`; a zero-length
/// prefix of each family with `--allow-any-src`).
#[map]
pub static LB_DECAP_ALLOW: LpmTrie<DecapSrcKey, u32> =
    LpmTrie::with_max_entries(MAX_DECAP_ALLOW_PREFIXES, 0);

#[map]
pub static LB_DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DecapCounter::COUNT, 0);

/// Next hops by backend id, shared by every CPU: `bpf_fib_lookup` costs ~45 ns for IPv4 and
/// ~160 ns for IPv6 per packet; see `route::next_hop_cached`.
#[map]
pub static LB_NH_CACHE: Array<crate::route::CachedHop> =
    Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// The new-flow guard's window on one CPU (`flow::over_guard`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GuardState {
    pub window_start_ns: u64,
    pub new_flows: u64,
}

/// Per CPU, one element; not pinned (a restart starts a fresh window).
#[map]
pub static LB_GUARD: PerCpuArray<GuardState> = PerCpuArray::with_max_entries(1, 0);

/// The VIP addresses (any port): unbalanced packets to them are never passed (`icmp`).
#[map]
pub static LB_VIP_ADDRS: HashMap<VipAddrKey, u32> =
    HashMap::with_max_entries(DEFAULT_MAX_VIP_ADDRS, 0);

/// This CPU's budget of ICMP too-big messages (`icmp::take_budget`); never pinned.
#[map]
pub static LB_ICMP_RATE: PerCpuArray<crate::icmp::IcmpBudget> = PerCpuArray::with_max_entries(1, 0);
