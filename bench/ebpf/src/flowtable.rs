//! The flow-table bench programs: exactly the balancer's flow-table operation on each table kind,
//! nothing else. The flow key is read from the fixed offsets of the bench's IPv4/TCP frames
//! (Ethernet, a 20-byte IPv4 header, TCP) and built as `lb_balancer` builds it; a SYN inserts the
//! flow unless present, any other packet looks it up. Every outcome is counted
//! (`LB_BENCH_FT_STATS`, per CPU), so userspace checks that each run did what its row says.
//!
//! The tables: an LRU hash with shared LRU lists, one with `BPF_F_NO_COMMON_LRU`, Katran's array
//! of per-CPU LRU hashes (created and sized by userspace), and the set-associative table of
//! `lb_ebpf::flow_table` on a map of its own, with its own global scan functions.

use aya_ebpf::{
    bindings::{
        BPF_F_NO_COMMON_LRU, BPF_NOEXIST,
        xdp_action::{XDP_ABORTED, XDP_PASS, XDP_TX},
    },
    btf_maps::{self, ArrayOfMaps},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns},
    macros::{btf_map, map},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    AF_INET, FlowBucket, FlowEntry, FlowKey, IPPROTO_TCP,
    bench::{FT_OUTCOMES, FtOutcome},
};
use lb_ebpf::{
    flow_table::{self, Buckets, Insert, scan_match, scan_victim},
    parse::{TCP_ACK, TCP_SYN},
};

/// Default sizes: userspace sets the real ones at load (`EbpfLoader::map_max_entries`), so an
/// object loaded for another bench allocates next to nothing.
const DEFAULT_ENTRIES: u32 = 1024;

#[map]
static LB_BENCH_FT_LRU: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(DEFAULT_ENTRIES, 0);

#[map]
static LB_BENCH_FT_LRU_PERCPU: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(DEFAULT_ENTRIES, BPF_F_NO_COMMON_LRU);

/// Katran's `lru_mapping`: slot `cpu` holds that CPU's LRU (the template below is only its shape).
#[btf_map]
static LB_BENCH_FT_KATRAN: ArrayOfMaps<btf_maps::LruHashMap<FlowKey, FlowEntry, 1024>, 64> =
    ArrayOfMaps::new();

#[map]
static LB_BENCH_FT_SETASSOC: Array<FlowBucket> = Array::with_max_entries(1, 0);

/// Buckets of `LB_BENCH_FT_SETASSOC`, set at load (read-only data).
#[unsafe(no_mangle)]
static LB_BENCH_FT_BUCKETS: u32 = 1;

#[map]
static LB_BENCH_FT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FT_OUTCOMES, 0);

/// Ethernet + IPv4 (no options) + the TCP header up to its flags.
const ETH_HLEN: usize = 14;
const IP_SRC: usize = ETH_HLEN + 12;
const TCP_OFF: usize = ETH_HLEN + 20;
const TCP_FLAGS: usize = TCP_OFF + 13;

/// A frame's flow key and whether it is a SYN (without ACK).
#[inline(always)]
fn flow_of(ctx: &XdpContext) -> Option<(FlowKey, bool)> {
    let data = ctx.data();
    if data + TCP_FLAGS + 1 > ctx.data_end() {
        return None;
    }
    let p = data as *const u8;
    // SAFETY: every offset read is below TCP_FLAGS + 1, checked against the frame's end.
    let (src, dst, sport_be, dport_be, flags) = unsafe {
        (
            core::ptr::read_unaligned(p.add(IP_SRC).cast::<u32>()),
            core::ptr::read_unaligned(p.add(IP_SRC + 4).cast::<u32>()),
            core::ptr::read_unaligned(p.add(TCP_OFF).cast::<u16>()),
            core::ptr::read_unaligned(p.add(TCP_OFF + 2).cast::<u16>()),
            *p.add(TCP_FLAGS),
        )
    };
    let key = FlowKey {
        src: [src, 0, 0, 0],
        dst: [dst, 0, 0, 0],
        sport_be,
        dport_be,
        proto: IPPROTO_TCP,
        family: AF_INET,
        _pad: [0; 2],
    };
    Some((key, flags & (TCP_SYN | TCP_ACK) == TCP_SYN))
}

#[inline(always)]
fn count(o: FtOutcome) {
    if let Some(p) = LB_BENCH_FT_STATS.get_ptr_mut(o as u32) {
        // SAFETY: this CPU's slot.
        unsafe { *p += 1 };
    }
}

/// Counts `o` and returns the verdict a run checks: TX for what the row expects to succeed.
#[inline(always)]
fn verdict(o: FtOutcome) -> u32 {
    count(o);
    match o {
        FtOutcome::Miss => XDP_PASS,
        FtOutcome::Failed => XDP_ABORTED,
        _ => XDP_TX,
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The balancer's new entry for a SYN.
#[inline(always)]
fn new_entry() -> FlowEntry {
    FlowEntry {
        backend_id: 1,
        flags: 0,
        last_seen_ns: now_ns(),
    }
}

/// `BPF_NOEXIST` insert, lookup on `EEXIST` (a kernel hash map, as `LB_FLOWS` was).
macro_rules! kernel_map_op {
    ($map:expr, $key:expr, $syn:expr) => {{
        let key = $key;
        if $syn {
            match $map.insert(&key, &new_entry(), u64::from(BPF_NOEXIST)) {
                Ok(()) => FtOutcome::Inserted,
                Err(_) => match $map.get_ptr(&key) {
                    Some(_) => FtOutcome::Existed,
                    None => FtOutcome::Failed,
                },
            }
        } else {
            match $map.get_ptr(&key) {
                Some(_) => FtOutcome::Hit,
                None => FtOutcome::Miss,
            }
        }
    }};
}

#[inline(always)]
pub fn lru(ctx: &XdpContext) -> u32 {
    let Some((key, syn)) = flow_of(ctx) else {
        return verdict(FtOutcome::Failed);
    };
    verdict(kernel_map_op!(LB_BENCH_FT_LRU, key, syn))
}

#[inline(always)]
pub fn lru_percpu(ctx: &XdpContext) -> u32 {
    let Some((key, syn)) = flow_of(ctx) else {
        return verdict(FtOutcome::Failed);
    };
    verdict(kernel_map_op!(LB_BENCH_FT_LRU_PERCPU, key, syn))
}

#[inline(always)]
pub fn katran(ctx: &XdpContext) -> u32 {
    let Some((key, syn)) = flow_of(ctx) else {
        return verdict(FtOutcome::Failed);
    };
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(lru) = LB_BENCH_FT_KATRAN.get(cpu) else {
        return verdict(FtOutcome::Failed);
    };
    verdict(kernel_map_op!(lru, key, syn))
}

/// `LB_BENCH_FT_SETASSOC` as a `flow_table::Buckets` table.
struct BenchFlows;

impl Buckets for BenchFlows {
    #[inline(always)]
    fn map() -> &'static Array<FlowBucket> {
        &LB_BENCH_FT_SETASSOC
    }

    #[inline(always)]
    fn matching(index: u32, tag: u32, from: u32) -> u64 {
        lb_bench_ft_match(index, tag, from)
    }

    #[inline(always)]
    fn victim(i0: u32, i1: u32, now_age: u32) -> u64 {
        lb_bench_ft_victim(i0, i1, now_age)
    }
}

/// `scan_match` of a `LB_BENCH_FT_SETASSOC` bucket, as a global function.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_bench_ft_match(index: u32, tag: u32, from: u32) -> u64 {
    scan_match(LB_BENCH_FT_SETASSOC.get_ptr_mut(index), tag, from)
}

/// `scan_victim` of two `LB_BENCH_FT_SETASSOC` buckets, as a global function.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_bench_ft_victim(i0: u32, i1: u32, now_age: u32) -> u64 {
    scan_victim(
        LB_BENCH_FT_SETASSOC.get_ptr_mut(i0),
        LB_BENCH_FT_SETASSOC.get_ptr_mut(i1),
        now_age,
    )
}

#[inline(always)]
pub fn setassoc(ctx: &XdpContext) -> u32 {
    let Some((key, syn)) = flow_of(ctx) else {
        return verdict(FtOutcome::Failed);
    };
    // SAFETY: a read-only global, set at load.
    let buckets = unsafe { core::ptr::read_volatile(&LB_BENCH_FT_BUCKETS) };
    let place = flow_table::place(&key, buckets);
    // As the balancer does: both buckets' first lines are loaded at once, so their misses overlap.
    flow_table::warm::<BenchFlows>(&place);
    if !syn {
        return verdict(match flow_table::find::<BenchFlows>(&place, &key) {
            Some(_) => FtOutcome::Hit,
            None => FtOutcome::Miss,
        });
    }
    verdict(
        match flow_table::insert::<BenchFlows>(&place, &key, 1, 0, now_ns()) {
            Insert::Inserted => FtOutcome::Inserted,
            Insert::Evicted(_) => FtOutcome::Evicted,
            Insert::Exists(_) => FtOutcome::Existed,
            Insert::Failed => FtOutcome::Failed,
        },
    )
}
