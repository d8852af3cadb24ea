//! Every size of the data plane, defined once. Map sizes are defaults that `lb run` may override at
//! load time; the loop bounds are compiled into the XDP program.

/// VIPs (services) the maps hold.
pub const DEFAULT_MAX_SERVICES: u32 = 1024;
/// Backends across all services (Katran: 4,096 in all).
pub const DEFAULT_MAX_BACKENDS: u32 = 65_536;
/// Backends one service may have.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 4096;
/// Entries of one service table: the Maglev table size M (prime) and the cap of a weighted sequence.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// Table slots beyond one per service, so new tables can be written beside the live ones.
pub const SPARE_TABLE_SLOTS: u32 = 8;
/// Connections the flow table is rated for (`lb_common::flow`: it holds that many without evicting one).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 20;
/// Clients the persistence table tracks (LRU).
pub const DEFAULT_PERSIST_TABLE_SIZE: u32 = 1 << 16;
/// Backend ids per `LB_SCHEDULE` element. The kernel stores array values at an 8-byte stride, so
/// a `u32` per element would waste half the pool; two ids per element make the pool (and its mmap)
/// one dense `u32` array: id `i` lives in element `i / 2`, half `i % 2`.
pub const SCHEDULE_IDS_PER_ENTRY: u32 = 2;
/// Local addresses the decap program accepts.
pub const MAX_DECAP_ADDRS: u32 = 64;
/// Outer source prefixes the decap program accepts tunnel packets from (`lb decap --allow-src`).
pub const MAX_DECAP_ALLOW_PREFIXES: u32 = 64;

/// VIP addresses (`LB_VIP_ADDRS`): at most one per service.
pub const DEFAULT_MAX_VIP_ADDRS: u32 = DEFAULT_MAX_SERVICES;
/// ICMP frag-needed / packet-too-big messages one CPU sends per second at most (Linux's own
/// `icmp_msgs_per_sec` is 1000 per host); more are not sent and their packets count as `drop_mtu`.
pub const ICMP_TOO_BIG_PER_SEC_PER_CPU: u64 = 100;
/// Bytes of the offending IP packet an ICMP too-big message quotes: its IP header (up to 60 bytes
/// for IPv4, 40 for IPv6) and the TCP header's start, at least the 8 bytes RFC 792 and the
/// IPv6 header + ports RFC 4443 ask for. Fixed, so the checksum is a bounded `bpf_csum_diff`.
pub const ICMP_TOO_BIG_QUOTE: usize = 128;

/// Up to this many backends least-conn compares all of them; above it, it compares two random
/// choices (power of two choices), which keeps the per-packet cost flat.
pub const LEAST_CONN_EXACT_MAX: u32 = 32;
/// A flow's `last_seen_ns` is rewritten at most this often, to keep established-flow packets from
/// dirtying a shared cache line on every packet.
pub const FLOW_TOUCH_INTERVAL_NS: u64 = 1_000_000_000;
/// How often `lb run` stores the coarse clock into `LbConfig::now_ns`.
pub const PROGRAM_CLOCK_TICK_NS: u64 = 10_000_000;
/// Default of `--max-new-flows-per-cpu` (Katran bypasses its LRU above ~125k new flows/s per core).
pub const DEFAULT_MAX_NEW_FLOWS_PER_CPU: u32 = 125_000;
/// The window of the new-flow guard.
pub const NEW_FLOW_GUARD_WINDOW_NS: u64 = 1_000_000_000;
/// Upper bound of the consistent-hash table of a service whose scheduler is not Maglev (a prime;
/// the table takes the room its slot has left, up to this).
pub const HASH_TABLE_MAX: u32 = 16_411;

/// Sizes chosen at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub max_services: u32,
    pub max_backends: u32,
    pub table_size: u32,
    pub flow_table_size: u32,
    pub persist_table_size: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            max_services: DEFAULT_MAX_SERVICES,
            max_backends: DEFAULT_MAX_BACKENDS,
            table_size: DEFAULT_TABLE_SIZE,
            flow_table_size: DEFAULT_FLOW_TABLE_SIZE,
            persist_table_size: DEFAULT_PERSIST_TABLE_SIZE,
        }
    }
}

impl Capacity {
    /// Table slots in the schedule pool.
    pub const fn table_slots(&self) -> u32 {
        self.max_services + SPARE_TABLE_SLOTS
    }

    /// Backend ids the schedule pool holds (table slots × table size).
    pub const fn schedule_entries(&self) -> u32 {
        self.table_slots() * self.table_size
    }

    /// `max_entries` of the `LB_SCHEDULE` map ([`SCHEDULE_IDS_PER_ENTRY`] ids per element).
    pub const fn schedule_map_entries(&self) -> u32 {
        self.schedule_entries().div_ceil(SCHEDULE_IDS_PER_ENTRY)
    }

    /// The capacity the maps of this one really have (the flow table is rated for whole buckets).
    pub const fn as_built(&self) -> Capacity {
        Capacity {
            flow_table_size: crate::flow::flow_capacity(crate::flow::flow_buckets(
                self.flow_table_size,
            )),
            ..*self
        }
    }

    /// Checks the combination; returns what is wrong.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.max_services == 0
            || self.max_backends == 0
            || self.flow_table_size == 0
            || self.persist_table_size == 0
        {
            return Err("every capacity must be at least 1");
        }
        if self.table_size < MAX_BACKENDS_PER_SERVICE {
            return Err("the table size must be at least the backends a service may have (4096)");
        }
        if (self.table_slots() as u64) * (self.table_size as u64) > u32::MAX as u64 / 4 {
            return Err("max services × table size is too large for one schedule array");
        }
        Ok(())
    }
}
