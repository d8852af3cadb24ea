//! Benchmark support (`lb-xdp-bench`): the frame template the `lb_reset` program restores before
//! every `BPF_PROG_TEST_RUN` repetition, and the names of the bench-only maps and programs.

use bytemuck::{Pod, Zeroable};

/// Largest frame a template holds.
pub const BENCH_FRAME_MAX: usize = 256;

/// `BenchTemplate::flags`: give every repetition a new flow (new source port and source address
/// low bits), so the flow table always misses.
pub const BENCH_F_VARY_FLOW: u32 = 1 << 0;

/// Value of `LB_BENCH_TMPL[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BenchTemplate {
    /// Bytes of `frame` in use (1..=`BENCH_FRAME_MAX`).
    pub len: u32,
    /// `BENCH_F_*`.
    pub flags: u32,
    /// Offset of the TCP source port in the frame (rewritten with `BENCH_F_VARY_FLOW`).
    pub sport_off: u32,
    /// Offset of the two low bytes of the source address (rewritten with `BENCH_F_VARY_FLOW`).
    pub src_low_off: u32,
    pub frame: [u8; BENCH_FRAME_MAX],
}

impl Default for BenchTemplate {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

pub const MAP_TEMPLATE: &str = "LB_BENCH_TMPL";
pub const MAP_JUMP: &str = "LB_BENCH_JMP";
pub const MAP_SEQ: &str = "LB_BENCH_SEQ";

/// Restores the template, then tail-calls `LB_BENCH_JMP[0]` (the program under test).
pub const PROG_RESET: &str = "lb_reset";
/// Restores the template and returns `XDP_TX`: the harness cost subtracted from every result.
pub const PROG_RESET_ONLY: &str = "lb_reset_only";
/// The floor: parse Ethernet + IP and encapsulate toward a fixed MAC, nothing else.
pub const PROG_FLOOR: &str = "lb_floor";

/// The flow-table bench (`lb-flowtable-bench`): one program per table kind, each doing exactly
/// what the balancer does with its flow table (a SYN inserts unless present, an ACK looks up).
pub const PROG_FT_LRU: &str = "lb_ft_lru";
pub const PROG_FT_LRU_PERCPU: &str = "lb_ft_lru_percpu";
pub const PROG_FT_KATRAN: &str = "lb_ft_katran";
pub const PROG_FT_SETASSOC: &str = "lb_ft_setassoc";

/// LRU hash, shared LRU lists.
pub const MAP_FT_LRU: &str = "LB_BENCH_FT_LRU";
/// LRU hash with `BPF_F_NO_COMMON_LRU` (per-CPU LRU lists).
pub const MAP_FT_LRU_PERCPU: &str = "LB_BENCH_FT_LRU_PERCPU";
/// Katran-style: an array of maps, one LRU hash per CPU (created and sized by userspace).
pub const MAP_FT_KATRAN: &str = "LB_BENCH_FT_KATRAN";
/// The set-associative table (`FlowBucket`s).
pub const MAP_FT_SETASSOC: &str = "LB_BENCH_FT_SETASSOC";
/// Read-only global: the bucket count of `MAP_FT_SETASSOC` (set at load).
pub const GLOBAL_FT_BUCKETS: &str = "LB_BENCH_FT_BUCKETS";
/// Per-CPU `u64` counters, indexed by `FtOutcome`.
pub const MAP_FT_STATS: &str = "LB_BENCH_FT_STATS";

/// What one flow-table operation did (index of `MAP_FT_STATS`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FtOutcome {
    /// A SYN's flow went into a free place.
    Inserted = 0,
    /// A SYN's flow was there already.
    Existed = 1,
    /// A SYN's flow took the place of another (the set-associative table counts it; the kernel's
    /// LRU evicts silently and counts it as `Inserted`).
    Evicted = 2,
    /// An ACK found its flow.
    Hit = 3,
    /// An ACK found no flow.
    Miss = 4,
    /// The insert failed (map error, lost claim, no per-CPU map).
    Failed = 5,
}

impl FtOutcome {
    pub const ALL: [FtOutcome; 6] = [
        FtOutcome::Inserted,
        FtOutcome::Existed,
        FtOutcome::Evicted,
        FtOutcome::Hit,
        FtOutcome::Miss,
        FtOutcome::Failed,
    ];
}

/// Entries of `MAP_FT_STATS`.
pub const FT_OUTCOMES: u32 = FtOutcome::ALL.len() as u32;
