//! Measuring the XDP programs with `BPF_PROG_TEST_RUN` (used by `lb-xdp-bench`).
//!
//! The kernel repeats a program on one buffer without restoring it, so every measured run goes
//! through `lb_reset` (restore the template frame, optionally with a new flow, then tail-call the
//! program under test); `lb_reset_only` measures that harness so it can be subtracted.

use std::time::Duration;

use aya::{
    maps::{Array, ProgramArray},
    programs::{TestRun, TestRunOptions},
};
use lb_common::{
    bench::{
        BENCH_F_VARY_FLOW, BENCH_FRAME_MAX, BenchTemplate, MAP_JUMP, MAP_TEMPLATE, PROG_FLOOR,
        PROG_RESET, PROG_RESET_ONLY,
    },
    maps::PROG_BALANCER,
};

use super::{Dataplane, DataplaneError, error::map_op, missing_map, xdp_program};

/// The program a measured run jumps into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchTarget {
    Balancer,
    Floor,
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
pub struct BenchRun {
    /// The verdict of the last repetition.
    pub verdict: u32,
    /// Average time per repetition, as the kernel measured it.
    pub per_packet: Duration,
}

/// A frame to replay, and where its flow fields are (for `vary_flow`).
pub struct BenchFrame<'a> {
    pub frame: &'a [u8],
    /// Offset of the TCP source port.
    pub sport_off: u32,
    /// Offset of the two low bytes of the source address.
    pub src_low_off: u32,
    /// Every repetition is a new flow (the flow table always misses).
    pub vary_flow: bool,
}

/// The bench programs of a loaded data plane.
pub struct XdpBench<'a> {
    dp: &'a mut Dataplane,
    frame: Vec<u8>,
}

impl Dataplane {
    /// Loads the bench programs (once) and returns the harness.
    pub fn bench(&mut self) -> Result<XdpBench<'_>, DataplaneError> {
        for program in [PROG_RESET, PROG_RESET_ONLY, PROG_FLOOR] {
            let xdp = xdp_program(&mut self.ebpf, program)?;
            if xdp.fd().is_err() {
                xdp.load()
                    .map_err(|source| DataplaneError::Load { program, source })?;
            }
        }
        Ok(XdpBench {
            dp: self,
            frame: Vec::new(),
        })
    }
}

impl XdpBench<'_> {
    /// Sets the frame every repetition starts from.
    pub fn set_frame(&mut self, f: &BenchFrame<'_>) -> Result<(), DataplaneError> {
        if f.frame.is_empty() || f.frame.len() > BENCH_FRAME_MAX {
            return Err(DataplaneError::OutOfRange {
                map: MAP_TEMPLATE,
                index: 0,
                len: f.frame.len() as u64,
                capacity: BENCH_FRAME_MAX as u64,
            });
        }
        let mut t = BenchTemplate {
            len: f.frame.len() as u32,
            flags: if f.vary_flow { BENCH_F_VARY_FLOW } else { 0 },
            sport_off: f.sport_off,
            src_low_off: f.src_low_off,
            ..Default::default()
        };
        t.frame[..f.frame.len()].copy_from_slice(f.frame);
        let map = self
            .dp
            .ebpf
            .map_mut(MAP_TEMPLATE)
            .ok_or_else(|| missing_map(MAP_TEMPLATE))?;
        let mut array: Array<_, BenchTemplate> =
            Array::try_from(map).map_err(|source| DataplaneError::MissingMap {
                map: MAP_TEMPLATE,
                source,
            })?;
        array.set(0, t, 0).map_err(map_op(MAP_TEMPLATE, "update"))?;
        self.frame = f.frame.to_vec();
        Ok(())
    }

    /// Chooses the program `run` measures.
    pub fn set_target(&mut self, target: BenchTarget) -> Result<(), DataplaneError> {
        let name = match target {
            BenchTarget::Balancer => PROG_BALANCER,
            BenchTarget::Floor => PROG_FLOOR,
        };
        let fd = xdp_program(&mut self.dp.ebpf, name)?
            .fd()
            .map_err(|source| DataplaneError::Load {
                program: name,
                source,
            })?
            .try_clone()
            .map_err(|e| DataplaneError::Bench(format!("duplicating the fd of {name}: {e}")))?;
        let map = self
            .dp
            .ebpf
            .map_mut(MAP_JUMP)
            .ok_or_else(|| missing_map(MAP_JUMP))?;
        let mut jump =
            ProgramArray::try_from(map).map_err(|source| DataplaneError::MissingMap {
                map: MAP_JUMP,
                source,
            })?;
        jump.set(0, &fd, 0).map_err(map_op(MAP_JUMP, "update"))
    }

    /// Runs restore + target `repeat` times, as if received on `ifindex` (0: loopback).
    pub fn run(&mut self, ifindex: u32, repeat: u32) -> Result<BenchRun, DataplaneError> {
        self.run_program(PROG_RESET, ifindex, repeat)
    }

    /// Runs only the restore `repeat` times: the harness cost.
    pub fn run_reset_only(
        &mut self,
        ifindex: u32,
        repeat: u32,
    ) -> Result<BenchRun, DataplaneError> {
        self.run_program(PROG_RESET_ONLY, ifindex, repeat)
    }

    fn run_program(
        &mut self,
        program: &'static str,
        ifindex: u32,
        repeat: u32,
    ) -> Result<BenchRun, DataplaneError> {
        let frame = self.frame.clone();
        let mut out = vec![0u8; frame.len() + 256];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w: &u32| w.to_ne_bytes())
            .collect();
        let opts = TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ctx_in: if ifindex == 0 { None } else { Some(&ctx) },
            repeat: repeat.max(1),
            ..Default::default()
        };
        let result = xdp_program(&mut self.dp.ebpf, program)?
            .test_run(opts)
            .map_err(|source| DataplaneError::Load { program, source })?;
        Ok(BenchRun {
            verdict: result.return_value,
            per_packet: result.duration,
        })
    }

    /// The data plane under test (to write services, read counters).
    pub fn dataplane(&mut self) -> &mut Dataplane {
        self.dp
    }
}
