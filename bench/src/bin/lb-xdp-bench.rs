//! `lb-xdp-bench`: nanoseconds per packet of the XDP balancer, measured in the kernel with
//! `BPF_PROG_TEST_RUN` (no NIC, no traffic). Needs root.
//!
//! Every repetition starts from the same frame: `lb_reset` restores it (and, for new-flow cases,
//! rewrites the source port and two address bytes, so the flow table always misses), then
//! tail-calls the program under test. The harness alone (`lb_reset_only`) is measured too and
//! subtracted. `bpf_fib_lookup` needs routes, so everything runs in a private network namespace
//! (a veth pair, a permanent next-hop neighbour) that ends with the bench thread.
//!
//! Flow table: new-flow cases insert one flow per repetition into the LRU flow table (4 Mi
//! entries, one shared LRU list: the map has no `BPF_F_NO_COMMON_LRU`). One case runs while the
//! table still has room (an insert without eviction: a balancer whose table is sized for its
//! load); then the table is filled, so every other new-flow case measures the same worst steady
//! state: each insert also evicts, as in a balancer under a flood of new connections.
//!
//! Then Katran side by side (`lb_bench::side_by_side`): its `balancer.bpf.o`, built from the
//! sources at `--katran` (default `../shared/katran` from the workspace root) into
//! `target/katran/`, in the same jump slot, on the same frames and paths, interleaved with lb.
//! Without Katran (no sources, a failed build or load) it says why and reports lb alone. The
//! table goes to stdout and, with the bar chart, to `docs/bench/xdp.md` and `xdp.svg`.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use lb_bench::{
    fixture::{Frame, TABLE_SIZE, put_backends, put_service, serve, tcp_v4, tcp_v6},
    harness::{BenchRun, BenchTarget, XdpBench},
    katran::{self, Katran},
    report::{self, LbRow, Method},
    side_by_side::{self, KatranContender, LbContender},
};
use lb_common::{Counter, LbConfig, Scheduler, addr::to_words, limits::Capacity};
use lb_tests::xdp::{
    CLIENT4, CLIENT6, IFACE, SRC4, SRC6, VIP4, VIP6, XDP_PASS, XDP_TX, XdpLab,
    frames::{ACK, SYN},
    with_xdp_lab,
};
use lb_userspace::dataplane::{Dataplane, LoadOptions};

const BACKEND_COUNTS: [u32; 3] = [3, 64, 1024];
const FLOW_TABLE_SIZE: u32 = 1 << 22;

#[derive(Parser)]
#[command(about = "Nanoseconds per packet of the XDP balancer (BPF_PROG_TEST_RUN, needs root)")]
struct Args {
    /// Repetitions per measurement.
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// Measurements per case; the median is reported.
    #[arg(long, default_value_t = 15)]
    rounds: u32,
    /// Katran's BPF sources (default: `../shared/katran` from the workspace root).
    #[arg(long, env = "LB_BENCH_KATRAN")]
    katran: Option<PathBuf>,
    /// Where the Markdown table and the SVG chart go.
    #[arg(long, default_value_os_t = workspace_root().join("docs/bench"))]
    docs: PathBuf,
    /// Only the side-by-side paths whose name contains this text (e.g. `established`): lb's own
    /// table is skipped and nothing is written to `--docs` (for quick comparisons while working
    /// on one path).
    #[arg(long)]
    paths: Option<String>,
}

/// The workspace this binary was built from (`bench/..`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.rounds > 0 && args.repeat > 0,
        "--rounds and --repeat must be at least 1"
    );
    with_xdp_lab(|lab| add_backend_routes(lab).and_then(|()| run(&args, lab.ifindex)))?
}

/// The bench's backends (198.18.8.0/21, 2001:db8:2::/64) are behind the lab's next hop.
fn add_backend_routes(lab: &XdpLab) -> anyhow::Result<()> {
    lab.ip_script(&[&format!(
        "route add 198.18.8.0/21 via 198.18.3.1 dev {IFACE}"
    )])
}

fn run(args: &Args, ifindex: u32) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let capacity = Capacity {
        max_services: 4,
        max_backends: 2048,
        table_size: TABLE_SIZE,
        flow_table_size: FLOW_TABLE_SIZE,
        persist_table_size: 1024,
    };
    let mut dp = Dataplane::load(&LoadOptions {
        capacity,
        pin_dir: None,
        kernel_log: false,
        ..Default::default()
    })
    .context("loading the data plane")?;
    dp.set_config(&LbConfig {
        src_v6: to_words(IpAddr::V6(SRC6)).0,
        src_v4: to_words(IpAddr::V4(SRC4)).0[0],
        hash_seed: 0x1234_5678,
        ..Default::default()
    })?;
    // As `lb run` does: established flows read the daemon's clock, not the kernel's.
    dp.start_clock()?;
    let mut bench = XdpBench::load(&mut dp)?;
    if let Some(only) = &args.paths {
        return side_by_side_only(args, &mut bench, ifindex, only);
    }
    let mut m = Measure {
        bench: &mut bench,
        args,
        repeat: args.repeat,
        ifindex,
    };
    let mut rows = Vec::new();

    let syn4 = tcp_v4(CLIENT4, VIP4, 40000, SYN);
    let harness = m.harness(&syn4)?;
    m.bench.set_target(BenchTarget::Floor)?;
    let floor = m.case(&syn4, false, XDP_TX)?;
    rows.push(LbRow {
        case: "floor: parse + IPIP + XDP_TX (lb_floor)".into(),
        per_packet: floor,
    });
    m.bench.set_target(BenchTarget::Balancer)?;

    // While the table has room: an insert without eviction. At most repeat × (rounds + 1) + 1
    // flows go in, so the runs are shortened to stay under half the table.
    serve(m.bench.dataplane(), 64, IpAddr::V4(VIP4), Scheduler::Maglev)?;
    m.repeat = args
        .repeat
        .min((FLOW_TABLE_SIZE / 2 - 1) / (args.rounds + 1));
    let inserts = u64::from(m.repeat) * (u64::from(args.rounds) + 1) + 1;
    ensure!(
        m.repeat > 0 && inserts < u64::from(FLOW_TABLE_SIZE) / 2,
        "--rounds {} leaves no room in the flow table for its new-flow case",
        args.rounds
    );
    let t = m.case(&syn4, true, XDP_TX)?;
    rows.push(LbRow {
        case: format!(
            "new flow, maglev, 64 backends, flow table with room (no eviction; {} repetitions)",
            m.repeat
        ),
        per_packet: t,
    });
    m.repeat = args.repeat;

    // Then fill the flow table, so every other new-flow case measures the same steady state: a
    // full table where each insert also evicts.
    serve(
        m.bench.dataplane(),
        3,
        IpAddr::V4(VIP4),
        Scheduler::RoundRobin,
    )?;
    // Every way of every bucket taken: twice the ways in inserts (see side_by_side::fill_flows).
    m.fill_flow_table(
        &syn4,
        2 * lb_common::flow::flow_buckets(capacity.flow_table_size)
            * lb_common::flow::FLOW_WAYS as u32,
    )?;

    for n in BACKEND_COUNTS {
        let ids = put_backends(m.bench.dataplane(), n, false)?;
        for scheduler in Scheduler::ALL {
            put_service(m.bench.dataplane(), IpAddr::V4(VIP4), scheduler, &ids)?;
            let t = m.case(&syn4, true, XDP_TX)?;
            rows.push(LbRow {
                case: format!("new flow, {}, {n} backends", scheduler.name()),
                per_packet: t,
            });
        }
    }

    serve(m.bench.dataplane(), 64, IpAddr::V4(VIP4), Scheduler::Maglev)?;
    let ack4 = tcp_v4(CLIENT4, VIP4, 40001, ACK);
    let t = m.established(&tcp_v4(CLIENT4, VIP4, 40001, SYN), &ack4)?;
    rows.push(LbRow {
        case: "established flow (flow table hit), IPv4".into(),
        per_packet: t,
    });
    // The same with the kernel's clock (no `lb run` clock thread), for what the clock saves.
    m.bench.dataplane().stop_clock();
    let t = m.established(&tcp_v4(CLIENT4, VIP4, 40001, SYN), &ack4)?;
    m.bench.dataplane().start_clock()?;
    rows.push(LbRow {
        case: "established flow, IPv4, kernel clock (no daemon clock)".into(),
        per_packet: t,
    });
    let other = tcp_v4(CLIENT4, Ipv4Addr::new(198, 18, 100, 9), 40002, SYN);
    let t = m.case(&other, false, XDP_PASS)?;
    rows.push(LbRow {
        case: "not a VIP (XDP_PASS)".into(),
        per_packet: t,
    });

    serve(m.bench.dataplane(), 64, IpAddr::V6(VIP6), Scheduler::Maglev)?;
    let syn6 = tcp_v6(CLIENT6, VIP6, 40003, SYN);
    let t = m.case(&syn6, true, XDP_TX)?;
    rows.push(LbRow {
        case: "new flow, maglev, 64 backends, IPv6".into(),
        per_packet: t,
    });
    let ack6 = tcp_v6(CLIENT6, VIP6, 40004, ACK);
    let t = m.established(&tcp_v6(CLIENT6, VIP6, 40004, SYN), &ack6)?;
    rows.push(LbRow {
        case: "established flow (flow table hit), IPv6".into(),
        per_packet: t,
    });

    let counters = m.bench.dataplane().maps().counters()?;
    let unexpected: Vec<String> = counters
        .iter()
        .filter(|(c, v)| *v != 0 && c.name().starts_with("drop_"))
        .map(|(c, v)| format!("{}={v}", c.name()))
        .collect();
    ensure!(
        unexpected.is_empty(),
        "the balancer dropped packets during the bench: {}",
        unexpected.join(" ")
    );

    let flows = |c: Counter| {
        counters
            .iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, v)| *v)
    };
    let lb_rows = report::lb_rows(
        args.repeat,
        args.rounds,
        harness,
        floor,
        &rows,
        FLOW_TABLE_SIZE,
        (flows(Counter::FlowNew), flows(Counter::FlowHit)),
    );
    println!("## XDP balancer, ns per packet (BPF_PROG_TEST_RUN)\n\n{lb_rows}");

    // Katran side by side, in the same jump slot.
    let (mut katran, katran_missing) = match prepare_katran(args) {
        Ok(k) => (Some(k), None),
        Err(e) => {
            eprintln!("lb-xdp-bench: Katran not measured, lb alone: {e:#}");
            (None, Some(format!("{e:#}")))
        }
    };
    let results = side_by_side(args, m.bench, katran.as_mut(), ifindex, None)?;
    println!("## Katran and lb, ns per packet (BPF_PROG_TEST_RUN)\n");
    println!("{}", report::table(&results));
    let method = Method {
        rounds: args.rounds,
        katran_missing,
        command,
        machine: report::machine(),
    };
    write_docs(&args.docs, &results, &method, &lb_rows)
}

/// lb (a fresh pair of data planes) and Katran, if loaded, on the paths `paths` picks (all: `None`).
fn side_by_side(
    args: &Args,
    bench: &mut XdpBench<'_>,
    katran: Option<&mut KatranContender>,
    ifindex: u32,
    paths: Option<&str>,
) -> anyhow::Result<Vec<side_by_side::PathResult>> {
    let mut lb = LbContender::load()?;
    side_by_side::run(
        bench,
        &mut lb,
        katran,
        ifindex,
        side_by_side::Plan {
            rounds: args.rounds,
            repeat: args.repeat,
            paths,
        },
    )
}

/// `--paths`: the side-by-side table of the matching paths alone, to stdout.
fn side_by_side_only(
    args: &Args,
    bench: &mut XdpBench<'_>,
    ifindex: u32,
    only: &str,
) -> anyhow::Result<()> {
    let mut katran = prepare_katran(args)
        .inspect_err(|e| eprintln!("lb-xdp-bench: Katran not measured, lb alone: {e:#}"))
        .ok();
    let results = side_by_side(args, bench, katran.as_mut(), ifindex, Some(only))?;
    ensure!(!results.is_empty(), "--paths {only:?} matches no path");
    println!("{}", report::table(&results));
    Ok(())
}

/// Builds Katran from `--katran` into `target/katran/`, loads it for this thread's CPU and
/// writes the fixture into its maps.
fn prepare_katran(args: &Args) -> anyhow::Result<KatranContender> {
    let root = workspace_root();
    let sources = args
        .katran
        .clone()
        .unwrap_or_else(|| root.join("../shared/katran"));
    let object = katran::build::build(&sources, &root.join("target/katran"))?;
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = u32::try_from(unsafe { libc::sched_getcpu() })
        .context("sched_getcpu failed: cannot tell which CPU's LRU Katran uses")?;
    KatranContender::new(Katran::load(&object, cpu)?)
}

fn write_docs(
    dir: &Path,
    results: &[side_by_side::PathResult],
    method: &Method,
    lb_rows: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = dir.join("xdp.md");
    std::fs::write(&md, report::markdown(results, method, lb_rows))
        .with_context(|| format!("writing {}", md.display()))?;
    let svg = dir.join("xdp.svg");
    std::fs::write(&svg, report::svg(results)?)
        .with_context(|| format!("writing {}", svg.display()))?;
    println!("wrote {} and {}", md.display(), svg.display());
    Ok(())
}

struct Measure<'a, 'b> {
    bench: &'a mut XdpBench<'b>,
    args: &'a Args,
    /// Repetitions per run (`--repeat`, shortened where a case needs fewer).
    repeat: u32,
    ifindex: u32,
}

impl Measure<'_, '_> {
    /// The restore-only cost, subtracted from every case.
    fn harness(&mut self, frame: &Frame) -> anyhow::Result<Duration> {
        self.set(frame, false)?;
        self.median(
            |b, ifindex, repeat| b.run_reset_only(ifindex, repeat),
            XDP_TX,
        )
    }

    /// Median time per packet of restore + target, minus nothing (see `report::lb_rows`).
    fn case(&mut self, frame: &Frame, vary_flow: bool, verdict: u32) -> anyhow::Result<Duration> {
        self.set(frame, vary_flow)?;
        // One warm-up repetition: creates the flow of established-flow cases.
        self.bench.run(self.ifindex, 1)?;
        self.median(|b, ifindex, repeat| b.run(ifindex, repeat), verdict)
    }

    /// Median time per packet of an established flow's ACK: the flow's SYN first creates its
    /// entry (an ACK without one is forwarded statelessly and creates none), and every measured
    /// packet must be a flow-table hit.
    fn established(&mut self, syn: &Frame, ack: &Frame) -> anyhow::Result<Duration> {
        self.set(syn, false)?;
        let r = self.bench.run(self.ifindex, 1)?;
        ensure!(r.verdict == XDP_TX, "the flow's SYN: verdict {}", r.verdict);
        let hits = |m: &mut Self| -> anyhow::Result<u64> {
            let counters = m.bench.dataplane().maps().counters()?;
            Ok(counters
                .iter()
                .find(|(c, _)| *c == Counter::FlowHit)
                .map_or(0, |(_, v)| *v))
        };
        let before = hits(self)?;
        let t = self.case(ack, false, XDP_TX)?;
        let measured = u64::from(self.repeat) * u64::from(self.args.rounds) + 1;
        let got = hits(self)? - before;
        ensure!(
            got >= measured,
            "an established flow's packets missed the flow table: {got} hits of {measured}"
        );
        Ok(t)
    }

    /// Runs `flows` new flows through the balancer (not measured).
    fn fill_flow_table(&mut self, frame: &Frame, flows: u32) -> anyhow::Result<()> {
        self.set(frame, true)?;
        let r = self.bench.run(self.ifindex, flows)?;
        ensure!(
            r.verdict == XDP_TX,
            "filling the flow table: verdict {}",
            r.verdict
        );
        Ok(())
    }

    fn set(&mut self, frame: &Frame, vary_flow: bool) -> anyhow::Result<()> {
        self.bench.set_frame(&frame.bench_frame(vary_flow))?;
        Ok(())
    }

    fn median(
        &mut self,
        mut run: impl FnMut(&mut XdpBench<'_>, u32, u32) -> anyhow::Result<BenchRun>,
        verdict: u32,
    ) -> anyhow::Result<Duration> {
        let mut times = Vec::with_capacity(self.args.rounds as usize);
        for _ in 0..self.args.rounds {
            let r = run(self.bench, self.ifindex, self.repeat)?;
            if r.verdict != verdict {
                let counters = self.bench.dataplane().maps().counters()?;
                let nonzero: Vec<String> = counters
                    .iter()
                    .filter(|(_, v)| *v != 0)
                    .map(|(c, v)| format!("{}={v}", c.name()))
                    .collect();
                bail!(
                    "verdict {} instead of {verdict}; counters: {}",
                    r.verdict,
                    nonzero.join(" ")
                );
            }
            times.push(r.per_packet);
        }
        times.sort();
        Ok(times[times.len() / 2])
    }
}
