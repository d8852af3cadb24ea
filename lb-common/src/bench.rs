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
