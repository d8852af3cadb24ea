//! `lb-flowtable-bench`: the flow-table operation alone, on each table the issue names — the
//! kernel's LRU hash (shared LRU lists), the same with `BPF_F_NO_COMMON_LRU`, Katran's per-CPU
//! LRU hashes in an array of maps, and the set-associative table of `lb_ebpf::flow_table` — at
//! each size, empty / with room / full, SYN (insert) and ACK (hit), on 1 and 2 CPUs.
//!
//! The programs (`lb-bench-ebpf`'s `flowtable`) run through the harness's reset wrapper, each run
//! net of the wrapper alone measured in the same round, the tables interleaved round by round
//! (order alternating); every run's outcome counters are checked. New flows come from the
//! wrapper's `vary_flow` (per-CPU `LB_BENCH_SEQ`): userspace sets each CPU's sequence before a
//! run, so CPUs use disjoint flows and a hit run replays exactly the flows an insert run created.

use std::{sync::Barrier, time::Duration};

use anyhow::{Context as _, ensure};
use aya::{
    EbpfLoader,
    maps::{ArrayOfMaps, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH;
use lb_common::{
    FlowEntry, FlowKey,
    bench::{
        FtOutcome, GLOBAL_FT_BUCKETS, MAP_FT_KATRAN, MAP_FT_LRU, MAP_FT_LRU_PERCPU,
        MAP_FT_SETASSOC, MAP_FT_STATS, MAP_SEQ, PROG_FT_KATRAN, PROG_FT_LRU, PROG_FT_LRU_PERCPU,
        PROG_FT_SETASSOC,
    },
    flow::{FLOW_WAYS, flow_buckets},
};
use lb_tests::xdp::{
    CLIENT4, VIP4, XDP_TX,
    frames::{ACK, SYN},
};

use crate::{
    fixture::{self, Frame},
    harness::XdpBench,
};

/// A flow table under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Lru,
    LruPerCpu,
    Katran,
    SetAssoc,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Lru, Table::LruPerCpu, Table::Katran, Table::SetAssoc];

    pub fn name(self) -> &'static str {
        match self {
            Table::Lru => "LRU hash (shared lists)",
            Table::LruPerCpu => "LRU hash, BPF_F_NO_COMMON_LRU",
            Table::Katran => "per-CPU LRU hashes (Katran)",
            Table::SetAssoc => "set-associative (lb)",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Table::Lru => PROG_FT_LRU,
            Table::LruPerCpu => PROG_FT_LRU_PERCPU,
            Table::Katran => PROG_FT_KATRAN,
            Table::SetAssoc => PROG_FT_SETASSOC,
        }
    }

    /// New flows that make a table rated for `entries` flows full, so that every later insert
    /// evicts: 1.5 × for an LRU; for the set-associative table every way of both buckets of any
    /// flow must be taken, which takes about twice its ways (see `side_by_side`).
    pub fn fill_flows(self, entries: u32) -> u64 {
        match self {
            Table::SetAssoc => 2 * u64::from(flow_buckets(entries)) * FLOW_WAYS as u64,
            _ => u64::from(entries) + u64::from(entries) / 2,
        }
    }
}

/// How full the table is when a row is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A fresh table (the row's inserts take at most `EMPTY_SHARE` of it).
    Empty,
    /// Half full (and the row's inserts add at most `ROOM_SHARE`).
    Room,
    /// Filled so that every insert evicts.
    Full,
}

impl State {
    pub const ALL: [State; 3] = [State::Empty, State::Room, State::Full];

    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "empty",
            State::Room => "with room (½ full)",
            State::Full => "full",
        }
    }
}

/// Divisors of the table size: inserts measured in the empty state (all CPU counts together)
/// stay under 1/20 of it, those with room under 1/4 (so the table stays under ¾ full, inside
/// the set-associative table's rated capacity).
const EMPTY_SHARE: u32 = 20;
const ROOM_SHARE: u32 = 4;
/// Repetitions of one `BPF_PROG_TEST_RUN` while filling (bounds each call's time).
const FILL_CHUNK: u32 = 1 << 20;
/// Each CPU's flows start at `cpu << CPU_SHIFT` of the wrapper's sequence (disjoint flows).
const CPU_SHIFT: u32 = 28;

/// Repetitions per run in `state`: the row's inserts (rounds × runs on 1 CPU, then on 2) must
/// fit the share of the table the state allows.
pub fn repeat_for(state: State, entries: u32, rounds: u32, repeat: u32) -> u32 {
    // One warm-up run and `rounds` measured runs, on 1 CPU then on 2: 3 × (rounds + 1) runs.
    let runs = 3 * (rounds + 1);
    let cap = match state {
        State::Empty => entries / EMPTY_SHARE / runs,
        State::Room => entries / ROOM_SHARE / runs,
        State::Full => u32::MAX,
    };
    repeat.min(cap).max(1)
}

/// What a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A SYN of a new flow: insert.
    Insert,
    /// An ACK of a flow inserted before: lookup, hit.
    Hit,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert (SYN)",
            Op::Hit => "hit (ACK)",
        }
    }
}

/// The outcome counters of a run, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes([u64; FtOutcome::ALL.len()]);

impl Outcomes {
    pub fn get(&self, o: FtOutcome) -> u64 {
        self.0[o as usize]
    }

    fn minus(&self, before: &Outcomes) -> Outcomes {
        let mut d = *self;
        for (a, b) in d.0.iter_mut().zip(before.0) {
            *a -= b;
        }
        d
    }

    fn add(&mut self, other: &Outcomes) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

/// Whether a run of `n` operations of `op` on `table` in `state` did what its row says; the
/// reason if not. `cpus` > 1 allows lost claims of the set-associative table (two CPUs changing
/// one pair of tags at once: the flow is not stored), which are reported; a hit run may miss the
/// `lost` flows of the insert run it replays, no others.
pub fn check(
    table: Table,
    state: State,
    op: Op,
    n: u64,
    cpus: usize,
    lost: u64,
    o: &Outcomes,
) -> Result<(), String> {
    use FtOutcome::*;
    let failed_ok = if cpus > 1 && table == Table::SetAssoc {
        o.get(Failed)
    } else {
        0
    };
    let expect = |what: FtOutcome, want: u64| {
        if o.get(what) == want {
            Ok(())
        } else {
            Err(format!("{what:?} = {} of {n} ({o:?})", o.get(what)))
        }
    };
    match op {
        Op::Hit => {
            // A flow whose insert lost its claim was never stored: its ACK misses.
            if o.get(Miss) > lost {
                return Err(format!(
                    "Miss = {} of {n}, {lost} of those flows not stored ({o:?})",
                    o.get(Miss)
                ));
            }
            expect(Hit, n - o.get(Miss))
        }
        Op::Insert => {
            expect(Existed, 0)?;
            expect(Hit, 0)?;
            if o.get(Failed) > failed_ok {
                return Err(format!("{} failed inserts of {n}", o.get(Failed)));
            }
            let (inserted, evicted) = match (table, state) {
                (Table::SetAssoc, State::Full) => (0, n - failed_ok),
                _ => (n - failed_ok, 0),
            };
            expect(Inserted, inserted)?;
            expect(Evicted, evicted)
        }
    }
}

/// One row's result for one table.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    /// Median over rounds of ns per operation, net of the wrapper.
    pub net_ns: f64,
    /// Median over rounds of the wrapper alone (ns per repetition).
    pub wrapper_ns: f64,
    /// Outcomes of the measured runs, summed.
    pub outcomes: Outcomes,
    /// Checks that failed (empty: every run did what the row says).
    pub problems: Vec<String>,
}

/// One row: a size, CPU count, state and operation, with a cell per table (`Table::ALL` order).
#[derive(Clone, Debug)]
pub struct Row {
    pub entries: u32,
    pub cpus: usize,
    pub state: State,
    pub op: Op,
    pub repeat: u32,
    pub cells: Vec<Cell>,
}

/// The median of `v` (0 when empty).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `entries` as "1 Mi" / "16 Mi" when a whole number of Mi, else the number.
pub fn size_name(entries: u32) -> String {
    if entries >= 1 << 20 && entries.is_multiple_of(1 << 20) {
        format!("{} Mi", entries >> 20)
    } else {
        entries.to_string()
    }
}

/// The Markdown table: one line per row, ns per table, the fastest marked.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut s = String::from("| size | CPUs | state | operation |");
    for t in Table::ALL {
        s += &format!(" {} |", t.name());
    }
    s += " wrapper |\n|---|---:|---|---|";
    for _ in Table::ALL {
        s += "---:|";
    }
    s += "---:|\n";
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} |",
            size_name(r.entries),
            r.cpus,
            r.state.name(),
            r.op.name()
        );
        let best = r
            .cells
            .iter()
            .map(|c| c.net_ns)
            .fold(f64::INFINITY, f64::min);
        for c in &r.cells {
            let mark = if c.net_ns == best { "**" } else { "" };
            let bad = if c.problems.is_empty() { "" } else { " ⚠" };
            s += &format!(" {mark}{:.1}{mark}{bad} |", c.net_ns);
        }
        let wrapper =
            r.cells.iter().map(|c| c.wrapper_ns).sum::<f64>() / r.cells.len().max(1) as f64;
        s += &format!(" {wrapper:.1} |\n");
    }
    s
}

/// What the checks counted, per row and table: evictions, misses, failed inserts.
pub fn checks_table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| size | CPUs | state | operation | table | repetitions × rounds | inserted | evicted | hit | miss | failed | check |\n|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        for (t, c) in Table::ALL.iter().zip(&r.cells) {
            let o = &c.outcomes;
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                size_name(r.entries),
                r.cpus,
                r.state.name(),
                r.op.name(),
                t.name(),
                r.repeat,
                o.get(FtOutcome::Inserted),
                o.get(FtOutcome::Evicted),
                o.get(FtOutcome::Hit),
                o.get(FtOutcome::Miss),
                o.get(FtOutcome::Failed),
                if c.problems.is_empty() {
                    "ok".to_owned()
                } else {
                    c.problems.join("; ")
                }
            );
        }
    }
    s
}

/// One CPU's share of a run.
struct CpuRun {
    /// Time per operation, wrapper included.
    measured: Duration,
    /// Time per repetition of the wrapper alone, measured right after.
    wrapper: Duration,
    /// The verdict of the last operation (`XDP_TX`: it did what the row expects).
    verdict: u32,
}

/// The bench object loaded with every table at one size, and the flows used so far.
pub struct FlowTableBench {
    bench: XdpBench<'static>,
    entries: u32,
    /// Katran's per-CPU LRUs (slot = CPU), kept alive while the outer map refers to them.
    katran: Vec<Map>,
    /// CPUs of the machine (`possible`): the width of per-CPU values.
    ncpus: usize,
    /// Offset in every CPU's sequence of the next unused flow.
    cursor: u32,
    rounds: u32,
    syn: Frame,
    ack: Frame,
}

impl FlowTableBench {
    /// Loads the bench object with every table rated for `entries` flows (Katran's: one LRU of
    /// `entries / CPUs` per CPU).
    pub fn load(entries: u32, rounds: u32) -> anyhow::Result<Self> {
        let ncpus = nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?;
        let buckets = flow_buckets(entries);
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(MAP_FT_LRU, entries)
            .map_max_entries(MAP_FT_LRU_PERCPU, entries)
            .map_max_entries(MAP_FT_KATRAN, u32::try_from(ncpus)?)
            .map_max_entries(MAP_FT_SETASSOC, buckets)
            .override_global(GLOBAL_FT_BUCKETS, &buckets, true);
        let programs: Vec<&'static str> = Table::ALL.iter().map(|t| t.program()).collect();
        let mut bench = XdpBench::load_alone(&mut loader, &programs)
            .with_context(|| format!("loading the flow-table programs at {entries} entries"))?;
        let per_cpu = entries / u32::try_from(ncpus)?;
        let mut katran = Vec::with_capacity(ncpus);
        for cpu in 0..ncpus {
            let def = aya_obj::Map::new_from_params(
                BPF_MAP_TYPE_LRU_HASH as u32,
                size_of::<FlowKey>() as u32,
                size_of::<FlowEntry>() as u32,
                per_cpu,
                0,
            );
            let data = MapData::create(def, "lb_ft_katran_lru", None)
                .with_context(|| format!("creating CPU {cpu}'s {per_cpu}-entry LRU"))?;
            let map = bench
                .object()
                .map_mut(MAP_FT_KATRAN)
                .with_context(|| format!("the bench object has no map {MAP_FT_KATRAN}"))?;
            let mut outer: ArrayOfMaps<_, MapData> = ArrayOfMaps::try_from(map)
                .with_context(|| format!("{MAP_FT_KATRAN} is not an array of maps"))?;
            outer
                .set(u32::try_from(cpu)?, &data, 0)
                .with_context(|| format!("putting CPU {cpu}'s LRU into {MAP_FT_KATRAN}"))?;
            katran.push(Map::LruHashMap(data));
        }
        Ok(FlowTableBench {
            bench,
            entries,
            katran,
            ncpus,
            cursor: 0,
            rounds,
            syn: fixture::tcp_v4(CLIENT4, VIP4, 40000, SYN),
            ack: fixture::tcp_v4(CLIENT4, VIP4, 40000, ACK),
        })
    }

    /// `n` unused flows on every CPU: their offset in each CPU's sequence.
    fn take_flows(&mut self, n: u64) -> anyhow::Result<u32> {
        let start = self.cursor;
        let end = u64::from(start) + n + 1;
        ensure!(
            end < 1 << CPU_SHIFT,
            "{end} flows per CPU: over the {} a CPU's sequence holds",
            1u32 << CPU_SHIFT
        );
        self.cursor = end as u32;
        Ok(start)
    }

    fn outcomes(&mut self) -> anyhow::Result<Outcomes> {
        let map = self
            .bench
            .object()
            .map(MAP_FT_STATS)
            .with_context(|| format!("the bench object has no map {MAP_FT_STATS}"))?;
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let mut o = Outcomes::default();
        for what in FtOutcome::ALL {
            let v = stats
                .get(&(what as u32), 0)
                .with_context(|| format!("reading {MAP_FT_STATS}"))?;
            o.0[what as usize] = v.iter().sum();
        }
        Ok(o)
    }

    /// Each CPU's next flow will be its `start`-th after `cpu << CPU_SHIFT`.
    fn set_seq(&mut self, start: u32) -> anyhow::Result<()> {
        let values: Vec<u32> = (0..self.ncpus)
            .map(|cpu| ((cpu as u32) << CPU_SHIFT) + start)
            .collect();
        let map = self
            .bench
            .object()
            .map_mut(MAP_SEQ)
            .with_context(|| format!("the bench object has no map {MAP_SEQ}"))?;
        let mut seq: PerCpuArray<_, u32> = PerCpuArray::try_from(map)?;
        seq.set(0, PerCpuValues::try_from(values)?, 0)
            .with_context(|| format!("writing {MAP_SEQ}"))
    }

    /// `n` operations on each of `cpus` at once (a thread pinned to each), from flow `start` of
    /// each CPU's sequence; then the wrapper alone as often.
    fn run_on(&mut self, cpus: usize, op: Op, start: u32, n: u32) -> anyhow::Result<Vec<CpuRun>> {
        let frame = match op {
            Op::Insert => &self.syn,
            Op::Hit => &self.ack,
        };
        self.bench.set_frame(&frame.bench_frame(true))?;
        self.set_seq(start)?;
        let bench = &self.bench;
        let barrier = Barrier::new(cpus);
        let results: Vec<anyhow::Result<CpuRun>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..cpus)
                .map(|cpu| {
                    let barrier = &barrier;
                    s.spawn(move || -> anyhow::Result<CpuRun> {
                        pin_to(cpu)?;
                        barrier.wait();
                        let r = bench.run_shared(false, 0, n)?;
                        barrier.wait();
                        let w = bench.run_shared(true, 0, n)?;
                        ensure!(
                            w.verdict == XDP_TX,
                            "the wrapper alone: verdict {}",
                            w.verdict
                        );
                        Ok(CpuRun {
                            measured: r.per_packet,
                            wrapper: w.per_packet,
                            verdict: r.verdict,
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a bench thread panicked")))
                })
                .collect()
        });
        results.into_iter().collect()
    }

    /// Fills `table` with `n` new flows from `start`, spread over `cpus` CPUs (unmeasured,
    /// checked: every one inserted, or evicting when the table is full).
    fn fill(&mut self, table: Table, start: u32, n: u64, cpus: usize) -> anyhow::Result<Outcomes> {
        self.bench.set_bench_program(table.program())?;
        let before = self.outcomes()?;
        let per_cpu = n.div_ceil(cpus as u64);
        let mut done = 0u64;
        while done < per_cpu {
            let chunk = (per_cpu - done).min(u64::from(FILL_CHUNK)) as u32;
            for r in self.run_on(cpus, Op::Insert, start + done as u32, chunk)? {
                ensure!(
                    r.verdict == XDP_TX,
                    "{}: filling: verdict {}",
                    table.name(),
                    r.verdict
                );
            }
            done += u64::from(chunk);
        }
        let got = self.outcomes()?.minus(&before);
        let new = got.get(FtOutcome::Inserted) + got.get(FtOutcome::Evicted);
        ensure!(
            new + got.get(FtOutcome::Failed) == per_cpu * cpus as u64
                && got.get(FtOutcome::Existed) == 0,
            "{}: filling with {n} flows: {got:?}",
            table.name()
        );
        Ok(got)
    }

    /// Brings every table from the previous state to `state` (`inserted`: flows each table holds
    /// at most so far). Returns the fill's outcomes per table.
    pub fn prepare(&mut self, state: State, inserted: u64) -> anyhow::Result<Vec<Outcomes>> {
        let entries = self.entries;
        let fill = |t: Table| match state {
            State::Empty => 0,
            State::Room => (u64::from(entries) / 2).saturating_sub(inserted),
            State::Full => t.fill_flows(entries),
        };
        let most = Table::ALL.iter().map(|t| fill(*t)).max().unwrap_or(0);
        let cpus = self.ncpus.min(2);
        let start = self.take_flows(most.div_ceil(cpus as u64))?;
        let mut out = Vec::new();
        for t in Table::ALL {
            let n = fill(t);
            out.push(if n == 0 {
                Outcomes::default()
            } else {
                self.fill(t, start, n, cpus)?
            });
        }
        Ok(out)
    }

    /// The insert row and the hit row of `state` on `cpus` CPUs, `repeat` operations per CPU and
    /// run: tables interleaved round by round (order alternating); in each round a table inserts
    /// new flows, then hits the flows it inserted the round before (so every hit is a flow
    /// inserted and `repeat` inserts later looked up again). Round 0 is the warm-up: its inserts
    /// are checked, not counted.
    pub fn measure(&mut self, state: State, cpus: usize, repeat: u32) -> anyhow::Result<[Row; 2]> {
        let rounds = self.rounds;
        let mut starts = Vec::new();
        let mut rows = [Op::Insert, Op::Hit].map(|op| Row {
            entries: self.entries,
            cpus,
            state,
            op,
            repeat,
            cells: vec![Cell::default(); Table::ALL.len()],
        });
        let mut times = vec![vec![(Vec::new(), Vec::new()); Table::ALL.len()]; 2];
        // Per table and round: inserts that lost their claim (those flows are not stored).
        let mut lost = vec![vec![0u64; rounds as usize + 1]; Table::ALL.len()];
        for round in 0..=rounds {
            starts.push(self.take_flows(u64::from(repeat))?);
            let mut order: Vec<usize> = (0..Table::ALL.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let table = Table::ALL[i];
                self.bench.set_bench_program(table.program())?;
                for (o, op) in [Op::Insert, Op::Hit].into_iter().enumerate() {
                    // The round whose flows this run uses.
                    let of = match op {
                        Op::Insert => round as usize,
                        Op::Hit if round > 0 => round as usize - 1,
                        Op::Hit => continue,
                    };
                    let start = starts[of];
                    let not_stored = if op == Op::Hit { lost[i][of] } else { 0 };
                    let before = self.outcomes()?;
                    let per_cpu = self.run_on(cpus, op, start, repeat)?;
                    let got = self.outcomes()?.minus(&before);
                    let cell = &mut rows[o].cells[i];
                    for (cpu, r) in per_cpu.iter().enumerate() {
                        if r.verdict != XDP_TX && not_stored == 0 {
                            cell.problems.push(format!(
                                "round {round}, CPU {cpu}: verdict {} of the last operation",
                                r.verdict
                            ));
                        }
                    }
                    let n = u64::from(repeat) * cpus as u64;
                    if let Err(e) = check(table, state, op, n, cpus, not_stored, &got) {
                        cell.problems.push(format!("round {round}: {e}"));
                    }
                    if op == Op::Insert {
                        lost[i][of] = got.get(FtOutcome::Failed);
                        if round == 0 {
                            continue;
                        }
                    }
                    cell.outcomes.add(&got);
                    let mean = |f: fn(&CpuRun) -> Duration| {
                        per_cpu
                            .iter()
                            .map(|t| f(t).as_secs_f64() * 1e9)
                            .sum::<f64>()
                            / per_cpu.len() as f64
                    };
                    let (measured, wrapper) = (mean(|t| t.measured), mean(|t| t.wrapper));
                    times[o][i].0.push(measured - wrapper);
                    times[o][i].1.push(wrapper);
                }
            }
        }
        for (row, t) in rows.iter_mut().zip(&mut times) {
            for (cell, (net, wrapper)) in row.cells.iter_mut().zip(t.iter_mut()) {
                cell.net_ns = median(net);
                cell.wrapper_ns = median(wrapper);
            }
        }
        Ok(rows)
    }

    /// Flows the kernel's LRU tables hold (each Katran per-CPU map separately): one
    /// `BPF_MAP_GET_NEXT_KEY` per entry.
    pub fn lru_entries(&mut self) -> anyhow::Result<Vec<(String, u64, u64)>> {
        let mut out = Vec::new();
        for (name, max) in [
            (MAP_FT_LRU, self.entries),
            (MAP_FT_LRU_PERCPU, self.entries),
        ] {
            let map = self
                .bench
                .object()
                .map(name)
                .with_context(|| format!("the bench object has no map {name}"))?;
            out.push((name.to_owned(), count_keys(map)?, u64::from(max)));
        }
        let per_cpu = self.entries / self.ncpus as u32;
        for (cpu, map) in self.katran.iter().enumerate() {
            out.push((
                format!("Katran CPU {cpu}"),
                count_keys(map)?,
                u64::from(per_cpu),
            ));
        }
        Ok(out)
    }
}

fn count_keys(map: &Map) -> anyhow::Result<u64> {
    let h: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(map)?;
    let mut n = 0;
    for k in h.keys() {
        k?;
        n += 1;
    }
    Ok(n)
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only read
    // and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        ensure!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0,
            "pinning a bench thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_keep_the_states_inside_their_share() {
        let mi = 1 << 20;
        let r = repeat_for(State::Empty, mi, 5, 50_000);
        assert!(u64::from(r) * 3 * 6 <= u64::from(mi) / 20, "{r}");
        let r = repeat_for(State::Room, mi, 5, 50_000);
        assert!(u64::from(r) * 3 * 6 <= u64::from(mi) / 4, "{r}");
        assert_eq!(repeat_for(State::Full, mi, 5, 50_000), 50_000);
        assert_eq!(repeat_for(State::Room, 16 * mi, 5, 50_000), 50_000);
        assert_eq!(repeat_for(State::Empty, 10, 5, 50_000), 1);
    }

    #[test]
    fn full_set_assoc_fills_twice_its_ways_and_lrus_one_and_a_half() {
        assert_eq!(Table::Lru.fill_flows(1000), 1500);
        assert_eq!(
            Table::SetAssoc.fill_flows(1000),
            2 * u64::from(flow_buckets(1000)) * 8
        );
    }

    fn outcomes(pairs: &[(FtOutcome, u64)]) -> Outcomes {
        let mut o = Outcomes::default();
        for (k, v) in pairs {
            o.0[*k as usize] = *v;
        }
        o
    }

    #[test]
    fn checks_say_what_each_row_must_count() {
        use FtOutcome::*;
        let ins = outcomes(&[(Inserted, 10)]);
        assert!(check(Table::Lru, State::Full, Op::Insert, 10, 1, 0, &ins).is_ok());
        assert!(check(Table::SetAssoc, State::Room, Op::Insert, 10, 1, 0, &ins).is_ok());
        // A full set-associative table must evict on every insert.
        assert!(check(Table::SetAssoc, State::Full, Op::Insert, 10, 1, 0, &ins).is_err());
        let ev = outcomes(&[(Evicted, 10)]);
        assert!(check(Table::SetAssoc, State::Full, Op::Insert, 10, 1, 0, &ev).is_ok());
        assert!(check(Table::SetAssoc, State::Room, Op::Insert, 10, 1, 0, &ev).is_err());
        // Lost claims: only with two CPUs, and reported.
        let lost = outcomes(&[(Evicted, 9), (Failed, 1)]);
        assert!(check(Table::SetAssoc, State::Full, Op::Insert, 10, 2, 0, &lost).is_ok());
        assert!(check(Table::SetAssoc, State::Full, Op::Insert, 10, 1, 0, &lost).is_err());
        let hits = outcomes(&[(Hit, 9), (Miss, 1)]);
        assert!(check(Table::Lru, State::Full, Op::Hit, 10, 1, 0, &hits).is_err());
        // The one flow whose insert lost its claim may miss.
        assert!(check(Table::SetAssoc, State::Full, Op::Hit, 10, 2, 1, &hits).is_ok());
        assert!(
            check(
                Table::Lru,
                State::Full,
                Op::Hit,
                9,
                1,
                0,
                &outcomes(&[(Hit, 9)])
            )
            .is_ok()
        );
    }

    #[test]
    fn the_table_marks_the_fastest_and_failed_checks() {
        let cell = |ns: f64, bad: bool| Cell {
            net_ns: ns,
            wrapper_ns: 10.0,
            problems: if bad { vec!["x".into()] } else { vec![] },
            ..Default::default()
        };
        let rows = [Row {
            entries: 1 << 20,
            cpus: 2,
            state: State::Full,
            op: Op::Insert,
            repeat: 5,
            cells: vec![
                cell(100.0, false),
                cell(80.0, false),
                cell(90.0, true),
                cell(40.0, false),
            ],
        }];
        let t = markdown_table(&rows);
        assert!(
            t.contains(
                "| 1 Mi | 2 | full | insert (SYN) | 100.0 | 80.0 | 90.0 ⚠ | **40.0** | 10.0 |"
            ),
            "{t}"
        );
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(size_name(16 << 20), "16 Mi");
        assert_eq!(size_name(1000), "1000");
    }
}
