//! `lb-flowtable-bench`: ns per flow-table operation of each candidate table, alone (needs root).
//!
//! The tables: the kernel's LRU hash with shared LRU lists, the same with
//! `BPF_F_NO_COMMON_LRU`, Katran's per-CPU LRU hashes in an array of maps (one of size / CPUs per
//! CPU), and lb's set-associative table (`lb_ebpf::flow_table`), each in a bench program that does
//! only what the balancer does with its table (`lb_bench::flowtable`). Per size (loaded one at a
//! time, dropped before the next): empty, with room (½ full), full (every insert evicts); a SYN
//! inserting a new flow and an ACK hitting one inserted before; on 1 CPU and on 2 (a pinned
//! thread per CPU, disjoint flows, the per-packet time as each thread measured it, averaged).
//! Prints the Markdown table and writes it to `docs/bench/flowtable.md`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, ensure};
use clap::Parser;
use lb_bench::{
    flowtable::{self, FlowTableBench, Row, State, Table},
    report,
};
use lb_common::bench::FtOutcome;

#[derive(Parser)]
#[command(
    about = "ns per flow-table operation: kernel LRU hashes, Katran's per-CPU LRUs, lb's set-associative table (BPF_PROG_TEST_RUN, needs root)"
)]
struct Args {
    /// Operations per CPU and run (fewer where a state must stay under its share of the table).
    #[arg(long, default_value_t = 50_000)]
    repeat: u32,
    /// Measured rounds per row (after one warm-up round); the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Table sizes in Mi (2^20) entries, e.g. `--sizes 1` for a quick run.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 16])]
    sizes: Vec<u32>,
    /// Skip counting the LRU maps' entries after the full state (one syscall per entry).
    #[arg(long)]
    no_count: bool,
    /// Where `flowtable.md` goes.
    #[arg(long, default_value_os_t = workspace_root().join("docs/bench"))]
    docs: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    ensure!(
        args.rounds > 0 && args.repeat > 0 && !args.sizes.is_empty(),
        "--rounds, --repeat and --sizes need at least 1"
    );
    ensure!(
        args.sizes.iter().all(|s| (1..=64).contains(s)),
        "--sizes are 1..=64 Mi entries"
    );
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let date = utc_now();
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for mi in &args.sizes {
        let entries = mi << 20;
        eprintln!(
            "lb-flowtable-bench: {} entries",
            flowtable::size_name(entries)
        );
        run_size(&args, entries, &mut rows, &mut notes)?;
    }
    let table = flowtable::markdown_table(&rows);
    let checks = flowtable::checks_table(&rows);
    println!(
        "## Flow-table operation, ns (BPF_PROG_TEST_RUN)\n\n{table}\n{}",
        notes.join("\n")
    );
    // (table, what failed): the kernel LRUs' failed checks are findings about them (an LRU
    // evicts entries it inserted a moment ago); only lb's own table failing one is an error.
    let problems: Vec<(Table, String)> = rows
        .iter()
        .flat_map(|r| {
            Table::ALL.iter().zip(&r.cells).flat_map(move |(t, c)| {
                c.problems.iter().map(move |p| {
                    (
                        *t,
                        format!(
                            "{} {} CPU {} {}, {}: {p}",
                            flowtable::size_name(r.entries),
                            r.cpus,
                            r.state.name(),
                            r.op.name(),
                            t.name()
                        ),
                    )
                })
            })
        })
        .collect();
    for (_, p) in &problems {
        eprintln!("lb-flowtable-bench: check failed: {p}");
    }
    let md = markdown(&args, &command, &date, &table, &checks, &notes, &rows);
    std::fs::create_dir_all(&args.docs)
        .with_context(|| format!("creating {}", args.docs.display()))?;
    let path = args.docs.join("flowtable.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(if problems.iter().all(|(t, _)| *t != Table::SetAssoc) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every state and CPU count at one size, on a freshly loaded object.
fn run_size(
    args: &Args,
    entries: u32,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut b = FlowTableBench::load(entries, args.rounds)?;
    let cpus: Vec<usize> = if available_cpus() >= 2 {
        vec![1, 2]
    } else {
        vec![1]
    };
    let mut inserted = 0u64;
    for state in State::ALL {
        let fills = b.prepare(state, inserted)?;
        let size = flowtable::size_name(entries);
        for (t, o) in Table::ALL.iter().zip(&fills) {
            let evicted = o.get(FtOutcome::Evicted);
            if state == State::Room && *t == Table::SetAssoc {
                ensure!(
                    evicted == 0,
                    "{size}: filling the set-associative table to half its rated capacity evicted {evicted} flows"
                );
            }
            if state != State::Empty {
                notes.push(format!(
                    "- {size}, {}: filled {} with {} new flows ({} evicting, {} failed).",
                    state.name(),
                    t.name(),
                    o.get(FtOutcome::Inserted)
                        + o.get(FtOutcome::Evicted)
                        + o.get(FtOutcome::Failed),
                    evicted,
                    o.get(FtOutcome::Failed)
                ));
            }
        }
        let repeat = flowtable::repeat_for(state, entries, args.rounds, args.repeat);
        for &n in &cpus {
            eprintln!(
                "lb-flowtable-bench: {size} {} on {n} CPU(s), {repeat} per run",
                state.name()
            );
            rows.extend(b.measure(state, n, repeat)?);
        }
        if state == State::Empty {
            inserted = 3 * u64::from(args.rounds + 1) * u64::from(repeat);
        }
    }
    if !args.no_count {
        for (name, n, max) in b.lru_entries()? {
            notes.push(format!(
                "- {}, after the full rows: {name} holds {n} flows (max_entries {max}).",
                flowtable::size_name(entries)
            ));
        }
    }
    Ok(())
}

/// CPUs this process may run on.
fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown date".to_owned(), |s| s.trim().to_owned())
}

/// Rows where each table is fastest, for the summary.
fn wins(rows: &[Row]) -> String {
    Table::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = rows
                .iter()
                .filter(|r| {
                    r.cells
                        .iter()
                        .enumerate()
                        .min_by(|a, b| a.1.net_ns.total_cmp(&b.1.net_ns))
                        .is_some_and(|(j, _)| j == i)
                })
                .count();
            format!("{}: {n}", t.name())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn markdown(
    args: &Args,
    command: &str,
    date: &str,
    table: &str,
    checks: &str,
    notes: &[String],
    rows: &[Row],
) -> String {
    let mut s = String::from("# Flow table: the alternatives, ns per operation\n\n");
    s += "Generated by `lb-flowtable-bench` (`cargo xtask bench`); do not edit by hand.\n\n";
    s += table;
    s += &format!(
        "\nns per operation (median of {} rounds), net of the reset wrapper (`lb_reset_only`, \
         measured in the same round; its ns in the last column); **bold**: the fastest of the row; \
         ⚠: a check failed (see below). Fastest in how many of the {} rows: {}.\n",
        args.rounds,
        rows.len(),
        wins(rows)
    );
    s += &format!(
        "\n- Command: `{command}`\n- Date: {date}\n- Machine: {}\n",
        report::machine()
    );
    s += "- Each program (`lb-bench-ebpf`, `flowtable.rs`) reads the flow key of the bench's IPv4/TCP \
          frame at fixed offsets and builds the balancer's `FlowKey`; a SYN inserts (kernel maps: \
          `BPF_NOEXIST` update, lookup on failure; set-associative: `flow_table::insert`), an ACK \
          looks up. Insert rows: a new flow per repetition (the wrapper's `vary_flow`); hit rows: \
          in each round a table first inserts that round's flows, then looks up the flows it \
          inserted the round before (replayed from the same per-CPU sequence), so every hit is a \
          different flow, inserted one run earlier. Tables interleaved round by round (order \
          alternating), after one warm-up round of inserts.\n";
    s += "- States: empty = a fresh table (the rows insert at most 1/20 of it); with room = filled \
          to half its size first (the rows add at most 1/4); full = then filled with 1.5 × its size \
          (LRUs) or 2 × its ways (set-associative: every way of both buckets taken), so every \
          insert evicts. Fills run on both CPUs. Katran's per-CPU LRU and `BPF_F_NO_COMMON_LRU` \
          split the capacity by CPU: on 1 CPU only that CPU's half is used.\n";
    s += "- 2 CPUs: one thread pinned to each, running `BPF_PROG_TEST_RUN` at the same time on \
          disjoint flows (each CPU's sequence starts at `cpu << 28`); the figure is the mean of \
          the two threads' per-operation times.\n";
    s += "- The machine is shared with other builds and benches: compare ratios within this run, \
          not absolute figures across runs.\n";
    s += "\n## Fills and table sizes\n\n";
    s += &notes.join("\n");
    s += "\n\n## Checks: what every measured run counted (`LB_BENCH_FT_STATS`)\n\n";
    s += "Insert rows: every SYN inserted (the full set-associative table: every SYN evicted); \
          hit rows: every ACK found its flow. Sums over the measured rounds; `failed` on the \
          set-associative table with 2 CPUs: claims lost to the other CPU (the flow is not \
          stored and would be forwarded without state; reported, and a hit row may miss exactly \
          those flows).\n\n";
    s += checks;
    s
}
