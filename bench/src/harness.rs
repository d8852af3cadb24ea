//! Measuring the XDP programs with `BPF_PROG_TEST_RUN` (used by `lb-xdp-bench`).
//!
//! The kernel repeats a program on one buffer without restoring it, so every measured run goes
//! through `lb_reset` (restore the template frame, optionally with a new flow, then tail-call the
//! program under test); `lb_reset_only` measures that harness so it can be subtracted. Those
//! programs are in the bench object (`lb-bench-ebpf`), loaded next to the production one: the jump
//! slot `LB_BENCH_JMP[0]` takes the production `lb_balancer` (from [`Dataplane::balancer_program`]),
//! the bench's `lb_floor`, or any other loaded XDP program ([`XdpBench::set_program`]: another
//! data plane's `lb_balancer`, Katran's `balancer_ingress`). A program-array slot takes programs
//! of other objects as long as they are XDP programs like its owner (`lb_reset`): same type, both
//! JIT-compiled, neither built for XDP fragments.

use std::time::Duration;

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    bench::{
        BENCH_F_VARY_FLOW, BENCH_FRAME_MAX, BenchTemplate, MAP_JUMP, MAP_TEMPLATE, PROG_FLOOR,
        PROG_RESET, PROG_RESET_ONLY,
    },
    maps::PROG_BALANCER,
};
use lb_userspace::dataplane::Dataplane;

/// The bench object built from `lb-bench-ebpf` by the build script.
pub(crate) static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench-ebpf"));

/// The program a measured run jumps into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchTarget {
    Balancer,
    Floor,
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct BenchRun {
    /// The verdict of the last repetition.
    pub verdict: u32,
    /// Average time per repetition, as the kernel measured it.
    pub per_packet: Duration,
    /// The frame as the last repetition left it.
    pub output: Vec<u8>,
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

/// The bench programs, next to a loaded data plane (or alone: [`XdpBench::load_alone`]).
pub struct XdpBench<'a> {
    dp: Option<&'a mut Dataplane>,
    bench: Ebpf,
    frame: Vec<u8>,
}

impl XdpBench<'static> {
    /// Loads the bench object alone, its maps as `loader` sizes them, with the wrapper's
    /// programs and `programs` (programs of the bench object that need no data plane).
    pub fn load_alone(
        loader: &mut EbpfLoader<'_>,
        programs: &[&'static str],
    ) -> anyhow::Result<Self> {
        let mut bench = loader
            .load(BENCH_OBJECT)
            .context("loading the bench object")?;
        for program in [PROG_RESET, PROG_RESET_ONLY].iter().chain(programs) {
            xdp_program(&mut bench, program)?
                .load()
                .with_context(|| format!("loading the bench program {program}"))?;
        }
        Ok(XdpBench {
            dp: None,
            bench,
            frame: Vec::new(),
        })
    }
}

impl<'a> XdpBench<'a> {
    /// Loads the bench object and its programs (needs root) for measuring `dp`.
    pub fn load(dp: &'a mut Dataplane) -> anyhow::Result<Self> {
        let mut bench = Ebpf::load(BENCH_OBJECT).context("loading the bench object")?;
        for program in [PROG_RESET, PROG_RESET_ONLY, PROG_FLOOR] {
            xdp_program(&mut bench, program)?
                .load()
                .with_context(|| format!("loading the bench program {program}"))?;
        }
        Ok(XdpBench {
            dp: Some(dp),
            bench,
            frame: Vec::new(),
        })
    }

    /// The bench object (its maps, its programs).
    pub fn object(&mut self) -> &mut Ebpf {
        &mut self.bench
    }

    /// Puts the bench object's own program `name` (loaded) into the jump slot.
    pub fn set_bench_program(&mut self, name: &'static str) -> anyhow::Result<()> {
        let fd = program_fd(name, xdp_program(&mut self.bench, name)?)?;
        put_in_jump_slot(&mut self.bench, name, &fd)
    }

    /// Sets the frame every repetition starts from.
    pub fn set_frame(&mut self, f: &BenchFrame<'_>) -> anyhow::Result<()> {
        anyhow::ensure!(
            !f.frame.is_empty() && f.frame.len() <= BENCH_FRAME_MAX,
            "a bench frame has 1..={BENCH_FRAME_MAX} bytes, not {}",
            f.frame.len()
        );
        let mut t = BenchTemplate {
            len: f.frame.len() as u32,
            flags: if f.vary_flow { BENCH_F_VARY_FLOW } else { 0 },
            sport_off: f.sport_off,
            src_low_off: f.src_low_off,
            ..Default::default()
        };
        t.frame[..f.frame.len()].copy_from_slice(f.frame);
        let map = self
            .bench
            .map_mut(MAP_TEMPLATE)
            .with_context(|| format!("the bench object has no map {MAP_TEMPLATE}"))?;
        let mut array: Array<_, BenchTemplate> =
            Array::try_from(map).with_context(|| format!("{MAP_TEMPLATE} is not an array"))?;
        array
            .set(0, t, 0)
            .with_context(|| format!("writing {MAP_TEMPLATE}"))?;
        self.frame = f.frame.to_vec();
        Ok(())
    }

    /// Chooses the program `run` measures.
    pub fn set_target(&mut self, target: BenchTarget) -> anyhow::Result<()> {
        let (name, program) = match target {
            BenchTarget::Balancer => (
                PROG_BALANCER,
                self.dp
                    .as_deref_mut()
                    .context("a bench loaded alone has no balancer")?
                    .balancer_program(),
            ),
            BenchTarget::Floor => (PROG_FLOOR, xdp_program(&mut self.bench, PROG_FLOOR)?),
        };
        let fd = program_fd(name, program)?;
        put_in_jump_slot(&mut self.bench, name, &fd)
    }

    /// Makes `run` measure `program` (loaded, XDP), named `name` in errors.
    pub fn set_program(&mut self, name: &str, program: &Xdp) -> anyhow::Result<()> {
        let fd = program_fd(name, program)?;
        put_in_jump_slot(&mut self.bench, name, &fd)
    }

    /// Runs restore + target `repeat` times, as if received on `ifindex` (0: loopback).
    pub fn run(&mut self, ifindex: u32, repeat: u32) -> anyhow::Result<BenchRun> {
        self.run_program(PROG_RESET, ifindex, repeat)
    }

    /// Runs only the restore `repeat` times: the harness cost.
    pub fn run_reset_only(&mut self, ifindex: u32, repeat: u32) -> anyhow::Result<BenchRun> {
        self.run_program(PROG_RESET_ONLY, ifindex, repeat)
    }

    /// [`XdpBench::run`] through a shared reference: several threads may run at once (each on
    /// the CPU it is pinned to); `reset_only`: [`XdpBench::run_reset_only`].
    pub fn run_shared(
        &self,
        reset_only: bool,
        ifindex: u32,
        repeat: u32,
    ) -> anyhow::Result<BenchRun> {
        let program = if reset_only {
            PROG_RESET_ONLY
        } else {
            PROG_RESET
        };
        self.run_program(program, ifindex, repeat)
    }

    fn run_program(
        &self,
        program: &'static str,
        ifindex: u32,
        repeat: u32,
    ) -> anyhow::Result<BenchRun> {
        let frame = &self.frame;
        let mut out = vec![0u8; frame.len() + 256];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w: &u32| w.to_ne_bytes())
            .collect();
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: if ifindex == 0 { None } else { Some(&ctx) },
            repeat: repeat.max(1),
            ..Default::default()
        };
        let xdp: &Xdp = self
            .bench
            .program(program)
            .and_then(|p| p.try_into().ok())
            .with_context(|| format!("the bench object has no XDP program {program}"))?;
        let result = xdp
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        out.truncate(result.data_size_out as usize);
        Ok(BenchRun {
            verdict: result.return_value,
            per_packet: result.duration,
            output: out,
        })
    }

    /// The data plane under test (to write services, read counters).
    ///
    /// # Panics
    /// On a bench loaded alone ([`XdpBench::load_alone`]), which has none.
    pub fn dataplane(&mut self) -> &mut Dataplane {
        self.dp
            .as_deref_mut()
            .expect("XdpBench::dataplane on a bench loaded alone")
    }
}

fn program_fd(name: &str, program: &Xdp) -> anyhow::Result<ProgramFd> {
    program
        .fd()
        .with_context(|| format!("{name} is not loaded"))?
        .try_clone()
        .with_context(|| format!("duplicating the fd of {name}"))
}

fn put_in_jump_slot(bench: &mut Ebpf, name: &str, fd: &ProgramFd) -> anyhow::Result<()> {
    let map = bench
        .map_mut(MAP_JUMP)
        .with_context(|| format!("the bench object has no map {MAP_JUMP}"))?;
    let mut jump = ProgramArray::try_from(map)
        .with_context(|| format!("{MAP_JUMP} is not a program array"))?;
    jump.set(0, fd, 0).with_context(|| {
        format!("putting {name} into {MAP_JUMP} (the kernel takes only XDP programs like lb_reset)")
    })
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(program)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .with_context(|| format!("the bench object has no XDP program {program}"))
}
