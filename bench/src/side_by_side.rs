//! Katran and lb side by side: the same frames through the same reset wrapper (`lb_reset`, one
//! jump slot `LB_BENCH_JMP[0]` that takes either program), on the same VIP, backends, Maglev
//! ring and next hop, interleaved round by round (the order alternates), each run net of the
//! wrapper measured next to it. Every run's verdict, output frame and counters are checked: a
//! figure is reported only for packets that took the path its row names.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, bail, ensure};
use lb_common::{
    Counter, LbConfig, Scheduler,
    addr::to_words,
    flow::{FLOW_WAYS, flow_buckets},
    limits::Capacity,
};
use lb_tests::xdp::{
    CLIENT4, NEXT_HOP_MAC, SRC4, SRC6, VIP4, XDP_PASS, XDP_TX,
    frames::{ACK, ETH_HLEN, SYN},
    maps::PORT,
};
use lb_userspace::dataplane::{Dataplane, LoadOptions};

use crate::{
    fixture::{self, Frame, TABLE_SIZE},
    harness::{BenchRun, XdpBench},
    katran::{self, Katran, MAX_CONN_RATE, Stat},
};

/// The two connection-table sizes compared.
pub const SMALL_TABLE: u32 = 1_000;
pub const LARGE_TABLE: u32 = 1 << 20;
/// Backends behind the VIP.
pub const BACKENDS: u32 = 64;
/// Repetitions of a run: new flows must stay under Katran's `MAX_CONN_RATE` per run (the
/// window is reset before each run), so every SYN is really inserted.
pub const MAX_REPEAT: u32 = 100_000;
const _: () = assert!((MAX_REPEAT as u64) < MAX_CONN_RATE);

/// What the measured packets do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An ACK of a flow whose SYN went first: a connection-table hit.
    Established,
    /// A SYN of a new flow per repetition: schedule + insert.
    NewFlow,
    /// TCP to an address that is no VIP: `XDP_PASS`.
    NotVip,
}

/// One row: a path and its median ns per packet (net of the wrapper) per program.
pub struct PathResult {
    pub path: &'static str,
    pub katran: Option<Duration>,
    pub lb: Duration,
    /// Repetitions per run.
    pub repeat: u32,
}

/// Counters a run must move, as each program names them.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    tx: u64,
    pass: u64,
    hits: u64,
    new_flows: u64,
    /// Katran: packets without a per-CPU LRU (must stay 0).
    fallback: u64,
    /// lb: flows that lost their way to a new one (`None`: the program does not count them).
    evicted: Option<u64>,
}

/// A program under test.
trait Contender {
    fn name(&self) -> &'static str;
    /// Puts the program, on a connection table of `entries` flows, into the jump slot.
    fn select(&mut self, bench: &mut XdpBench<'_>, entries: u32) -> anyhow::Result<()>;
    /// Just before a measured run.
    fn before_run(&mut self) -> anyhow::Result<()>;
    /// After a run of `n` new flows: were they all inserted?
    fn check_new_flows(&mut self, n: u32) -> anyhow::Result<()>;
    /// New flows that make a table of `entries` full, so that every later insert evicts.
    fn fill_flows(&self, entries: u32) -> u32 {
        entries + entries / 2
    }
    fn counts(&mut self) -> anyhow::Result<Counts>;
}

/// lb: one data plane per table size (the size is a map definition, set at load).
pub struct LbContender {
    small: Dataplane,
    large: Dataplane,
    selected: u32,
}

impl LbContender {
    /// Loads both data planes, each serving `VIP4`:80 with `BACKENDS` Maglev backends and the
    /// daemon's clock running, as under `lb run`.
    pub fn load() -> anyhow::Result<Self> {
        Ok(LbContender {
            small: lb_dataplane(SMALL_TABLE)?,
            large: lb_dataplane(LARGE_TABLE)?,
            selected: LARGE_TABLE,
        })
    }

    fn dp(&mut self) -> &mut Dataplane {
        if self.selected == SMALL_TABLE {
            &mut self.small
        } else {
            &mut self.large
        }
    }
}

fn lb_dataplane(flows: u32) -> anyhow::Result<Dataplane> {
    let mut dp = Dataplane::load(&LoadOptions {
        capacity: Capacity {
            max_services: 4,
            max_backends: 2048,
            table_size: TABLE_SIZE,
            flow_table_size: flows,
            persist_table_size: 1024,
        },
        pin_dir: None,
        kernel_log: false,
        ..Default::default()
    })
    .with_context(|| format!("loading lb's data plane with a {flows}-flow table"))?;
    dp.set_config(&LbConfig {
        src_v6: to_words(IpAddr::V6(SRC6)).0,
        src_v4: to_words(IpAddr::V4(SRC4)).0[0],
        hash_seed: 0x1234_5678,
        ..Default::default()
    })?;
    dp.start_clock()?;
    fixture::serve(&mut dp, BACKENDS, IpAddr::V4(VIP4), Scheduler::Maglev)?;
    Ok(dp)
}

impl Contender for LbContender {
    fn name(&self) -> &'static str {
        "lb"
    }

    fn select(&mut self, bench: &mut XdpBench<'_>, entries: u32) -> anyhow::Result<()> {
        ensure!(
            entries == SMALL_TABLE || entries == LARGE_TABLE,
            "lb has no data plane with a {entries}-flow table"
        );
        self.selected = entries;
        bench.set_program("lb_balancer", self.dp().balancer_program())
    }

    fn before_run(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn check_new_flows(&mut self, _n: u32) -> anyhow::Result<()> {
        // `counts().new_flows` is flow_new: inserted flows, checked by the caller.
        let failed = counter(self.dp(), Counter::FlowInsertFailed)?;
        ensure!(failed == 0, "lb failed {failed} flow inserts");
        Ok(())
    }

    fn counts(&mut self) -> anyhow::Result<Counts> {
        let dp = self.dp();
        Ok(Counts {
            tx: counter(dp, Counter::TxPackets)?,
            pass: counter(dp, Counter::PassNotVip)?,
            hits: counter(dp, Counter::FlowHit)?,
            new_flows: counter(dp, Counter::FlowNew)?,
            fallback: 0,
            evicted: Some(counter(dp, Counter::FlowEvicted)?),
        })
    }

    /// Every way of both buckets of a new flow must be taken: with two choices per flow that
    /// takes twice the ways in inserts (simulated: the last free ways fill like coupons).
    fn fill_flows(&self, entries: u32) -> u32 {
        2 * flow_buckets(entries) * FLOW_WAYS as u32
    }
}

fn counter(dp: &Dataplane, c: Counter) -> anyhow::Result<u64> {
    Ok(dp
        .maps()
        .counters()?
        .iter()
        .find(|(k, _)| *k == c)
        .map_or(0, |(_, v)| *v))
}

/// Katran with the same VIP, reals, ring and next hop as lb's fixture.
pub struct KatranContender {
    katran: Katran,
}

impl KatranContender {
    pub fn new(mut katran: Katran) -> anyhow::Result<Self> {
        let ids: Vec<u32> = (1..=BACKENDS).collect();
        let reals: Vec<IpAddr> = ids
            .iter()
            .map(|id| fixture::backend_addr(*id, false))
            .collect();
        katran.put_vip(IpAddr::V4(VIP4), PORT, 0)?;
        katran.put_reals(&reals)?;
        katran.put_ring(0, &fixture::maglev_table(&ids))?;
        katran.set_next_hop_mac(NEXT_HOP_MAC)?;
        Ok(KatranContender { katran })
    }
}

impl Contender for KatranContender {
    fn name(&self) -> &'static str {
        "Katran"
    }

    fn select(&mut self, bench: &mut XdpBench<'_>, entries: u32) -> anyhow::Result<()> {
        self.katran.use_lru(entries)?;
        bench.set_program(katran::PROGRAM, self.katran.program()?)
    }

    fn before_run(&mut self) -> anyhow::Result<()> {
        self.katran.reset_conn_rate()
    }

    fn check_new_flows(&mut self, n: u32) -> anyhow::Result<()> {
        let rate = self.katran.conn_rate()?;
        ensure!(
            rate <= MAX_CONN_RATE && rate <= u64::from(n),
            "Katran's new-connection window counts {rate} after a run of {n} SYNs: over \
             MAX_CONN_RATE ({MAX_CONN_RATE}) it skips the LRU insert, so the run measured no insert"
        );
        Ok(())
    }

    fn counts(&mut self) -> anyhow::Result<Counts> {
        let lru = self.katran.stat(Stat::Lru)?;
        Ok(Counts {
            tx: self.katran.stat(Stat::XdpTx)?.v1,
            pass: self.katran.stat(Stat::XdpPass)?.v1,
            hits: lru.v1 - lru.v2,
            new_flows: self.katran.stat(Stat::LruMiss)?.v1,
            fallback: self.katran.stat(Stat::FallbackLru)?.v1,
            evicted: None,
        })
    }
}

/// One path: its frames, table and the checks of its runs.
struct PathSpec {
    name: &'static str,
    kind: Kind,
    table: u32,
    /// The measured frame (for `Established`, after `setup`, its flow's SYN).
    frame: Frame,
    setup: Option<Frame>,
    repeat: u32,
    /// The table is full: every new flow evicts one (checked where the program counts evictions).
    full: bool,
}

/// How much to measure.
pub struct Plan<'a> {
    /// Measurements per path and contender; the median is reported.
    pub rounds: u32,
    /// Repetitions per measurement.
    pub repeat: u32,
    /// Only the paths whose name contains this (tables are still filled as for every path).
    pub paths: Option<&'a str>,
}

/// Runs every path of `plan`; `katran` is `None` when Katran could not be built or loaded.
pub fn run(
    bench: &mut XdpBench<'_>,
    lb: &mut LbContender,
    katran: Option<&mut KatranContender>,
    ifindex: u32,
    plan: Plan<'_>,
) -> anyhow::Result<Vec<PathResult>> {
    let Plan {
        rounds,
        repeat,
        paths,
    } = plan;
    let wanted = |spec: &PathSpec| paths.is_none_or(|p| spec.name.contains(p));
    let repeat = repeat.min(MAX_REPEAT);
    // Flows inserted into the large table before it is filled: less than half of it.
    let room_repeat = repeat.min(LARGE_TABLE / 2 / (rounds + 1));
    let mut m = Runner {
        bench,
        ifindex,
        rounds,
    };
    let mut contenders: Vec<&mut dyn Contender> = vec![lb];
    if let Some(k) = katran {
        contenders.insert(0, k);
    }
    let syn = |sport| fixture::tcp_v4(CLIENT4, VIP4, sport, SYN);
    let ack = |sport| fixture::tcp_v4(CLIENT4, VIP4, sport, ACK);
    let mut results = Vec::new();

    // The large table is still empty: inserts without eviction.
    let spec = PathSpec {
        name: "new flow (SYN), 1 Mi table with room",
        kind: Kind::NewFlow,
        table: LARGE_TABLE,
        frame: syn(41000),
        setup: None,
        repeat: room_repeat,
        full: false,
    };
    if wanted(&spec) {
        results.push(m.path(&mut contenders, &spec)?);
    }

    for (table, full, established) in [
        (
            LARGE_TABLE,
            "new flow (SYN), 1 Mi table full (every insert evicts)",
            "established flow, 1 Mi table",
        ),
        (
            SMALL_TABLE,
            "new flow (SYN), 1,000 table full",
            "established flow, 1,000 table",
        ),
    ] {
        for c in contenders.iter_mut() {
            m.fill(&mut **c, table, &syn(42000), MAX_REPEAT)?;
        }
        let spec = PathSpec {
            name: full,
            kind: Kind::NewFlow,
            table,
            frame: syn(42000),
            setup: None,
            repeat,
            full: true,
        };
        if wanted(&spec) {
            results.push(m.path(&mut contenders, &spec)?);
        }
        let spec = PathSpec {
            name: established,
            kind: Kind::Established,
            table,
            frame: ack(43000),
            setup: Some(syn(43000)),
            repeat,
            full: false,
        };
        if wanted(&spec) {
            results.push(m.path(&mut contenders, &spec)?);
        }
    }

    let not_vip = lb_tests::xdp::frames::Tcp::v4(
        CLIENT4,
        std::net::Ipv4Addr::new(198, 18, 100, 9),
        44000,
        PORT,
        SYN,
    )
    .frame();
    let spec = PathSpec {
        name: "TCP to a non-VIP (XDP_PASS)",
        kind: Kind::NotVip,
        table: LARGE_TABLE,
        frame: Frame {
            bytes: not_vip,
            sport_off: 0,
            src_low_off: 0,
        },
        setup: None,
        repeat,
        full: false,
    };
    if wanted(&spec) {
        results.push(m.path(&mut contenders, &spec)?);
    }

    const ORDER: [&str; 6] = [
        "established flow, 1 Mi table",
        "established flow, 1,000 table",
        "new flow (SYN), 1,000 table full",
        "new flow (SYN), 1 Mi table with room",
        "new flow (SYN), 1 Mi table full (every insert evicts)",
        "TCP to a non-VIP (XDP_PASS)",
    ];
    results.sort_by_key(|r| ORDER.iter().position(|p| *p == r.path));
    Ok(results)
}

struct Runner<'a, 'b> {
    bench: &'a mut XdpBench<'b>,
    ifindex: u32,
    rounds: u32,
}

impl Runner<'_, '_> {
    /// Medians of `spec` for every contender (Katran first when present).
    fn path(
        &mut self,
        contenders: &mut [&mut dyn Contender],
        spec: &PathSpec,
    ) -> anyhow::Result<PathResult> {
        let vary = spec.kind == Kind::NewFlow;
        for c in contenders.iter_mut() {
            c.select(self.bench, spec.table)?;
            if let Some(setup) = &spec.setup {
                c.before_run()?;
                self.set(setup, false)?;
                let r = self.bench.run(self.ifindex, 1)?;
                ensure!(
                    r.verdict == XDP_TX,
                    "{}: the flow's SYN got verdict {}",
                    c.name(),
                    r.verdict
                );
            }
            // Warm-up: one repetition, checked like the rest.
            self.set(&spec.frame, vary)?;
            self.measured(&mut **c, spec, 1)?;
        }
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
        for round in 0..self.rounds {
            let mut order: Vec<usize> = (0..contenders.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let c = &mut *contenders[i];
                c.select(self.bench, spec.table)?;
                self.set(&spec.frame, vary)?;
                let wrapper = self.bench.run_reset_only(self.ifindex, spec.repeat)?;
                ensure!(
                    wrapper.verdict == XDP_TX,
                    "the reset wrapper alone returned {}",
                    wrapper.verdict
                );
                let t = self.measured(c, spec, spec.repeat)?;
                times[i].push(t.saturating_sub(wrapper.per_packet));
            }
        }
        let medians: Vec<Duration> = times
            .iter_mut()
            .map(|t| {
                t.sort();
                t[t.len() / 2]
            })
            .collect();
        let (katran, lb) = match medians.as_slice() {
            [lb] => (None, *lb),
            [katran, lb] => (Some(*katran), *lb),
            _ => bail!(
                "{} contenders, expected lb and at most Katran",
                medians.len()
            ),
        };
        Ok(PathResult {
            path: spec.name,
            katran,
            lb,
            repeat: spec.repeat,
        })
    }

    /// One run of `n` repetitions of the frame already set, checked; returns its time per packet.
    fn measured(
        &mut self,
        c: &mut dyn Contender,
        spec: &PathSpec,
        n: u32,
    ) -> anyhow::Result<Duration> {
        c.before_run()?;
        let before = c.counts()?;
        let r = self.bench.run(self.ifindex, n)?;
        let after = c.counts()?;
        let name = c.name();
        let what = || format!("{name} on \"{}\"", spec.name);
        check_run(spec, &r, n, &before, &after).with_context(what)?;
        if spec.kind == Kind::NewFlow {
            c.check_new_flows(n).with_context(what)?;
        }
        Ok(r.per_packet)
    }

    /// Fills `c`'s `table`-flow table with new flows (`Contender::fill_flows`), unmeasured.
    fn fill(
        &mut self,
        c: &mut dyn Contender,
        table: u32,
        frame: &Frame,
        chunk: u32,
    ) -> anyhow::Result<()> {
        c.select(self.bench, table)?;
        self.set(frame, true)?;
        let spec = PathSpec {
            name: "filling the flow table",
            kind: Kind::NewFlow,
            table,
            frame: Frame {
                bytes: frame.bytes.clone(),
                ..*frame
            },
            setup: None,
            repeat: chunk,
            full: false,
        };
        let mut left = c.fill_flows(table);
        while left > 0 {
            let n = left.min(chunk);
            self.measured(c, &spec, n)?;
            left -= n;
        }
        Ok(())
    }

    fn set(&mut self, frame: &Frame, vary_flow: bool) -> anyhow::Result<()> {
        self.bench.set_frame(&frame.bench_frame(vary_flow))
    }
}

/// The verdict, the last output frame and the counters' movement of a run of `n` packets.
fn check_run(
    spec: &PathSpec,
    r: &BenchRun,
    n: u32,
    before: &Counts,
    after: &Counts,
) -> anyhow::Result<()> {
    let n = u64::from(n);
    let moved = |f: fn(&Counts) -> u64| f(after) - f(before);
    ensure!(
        moved(|c| c.fallback) == 0,
        "{} packets found no per-CPU LRU (the bench thread left its CPU?)",
        moved(|c| c.fallback)
    );
    match spec.kind {
        Kind::NotVip => {
            ensure!(r.verdict == XDP_PASS, "verdict {}, not XDP_PASS", r.verdict);
            ensure!(r.output == spec.frame.bytes, "a passed frame was changed");
            ensure!(
                moved(|c| c.pass) == n,
                "{} of {n} counted as passed",
                moved(|c| c.pass)
            );
        }
        Kind::Established | Kind::NewFlow => {
            ensure!(r.verdict == XDP_TX, "verdict {}, not XDP_TX", r.verdict);
            check_encapsulated(&spec.frame, &r.output, spec.kind == Kind::NewFlow)?;
            ensure!(
                moved(|c| c.tx) == n,
                "{} of {n} counted as sent",
                moved(|c| c.tx)
            );
            if spec.kind == Kind::Established {
                ensure!(
                    moved(|c| c.hits) == n,
                    "{} of {n} packets hit the connection table",
                    moved(|c| c.hits)
                );
            } else {
                ensure!(
                    moved(|c| c.new_flows) == n,
                    "{} of {n} SYNs counted as new flows",
                    moved(|c| c.new_flows)
                );
                if let (true, Some(a), Some(b)) = (spec.full, after.evicted, before.evicted) {
                    ensure!(
                        a - b == n,
                        "{} of {n} SYNs into a full table evicted a flow",
                        a - b
                    );
                }
            }
        }
    }
    Ok(())
}

/// `output` is `input` in IPv4-in-IPv4 toward one of the backends, to the next hop's MAC; the
/// flow fields the wrapper rewrites per repetition (`varied`) are not compared.
fn check_encapsulated(input: &Frame, output: &[u8], varied: bool) -> anyhow::Result<()> {
    const OUTER: usize = ETH_HLEN + 20;
    ensure!(
        output.len() == input.bytes.len() + 20,
        "output has {} bytes, expected {} (the input plus a 20-byte IPv4 header)",
        output.len(),
        input.bytes.len() + 20
    );
    ensure!(
        output[..6] == NEXT_HOP_MAC,
        "outer Ethernet destination {:02x?}, not the next hop",
        &output[..6]
    );
    ensure!(
        output[12..14] == [0x08, 0x00] && output[ETH_HLEN] == 0x45 && output[ETH_HLEN + 9] == 4,
        "output is not IPv4-in-IPv4: {:02x?}",
        &output[..OUTER]
    );
    let dst = std::net::Ipv4Addr::new(
        output[ETH_HLEN + 16],
        output[ETH_HLEN + 17],
        output[ETH_HLEN + 18],
        output[ETH_HLEN + 19],
    );
    ensure!(
        (1..=BACKENDS).any(|id| fixture::backend_addr(id, false) == IpAddr::V4(dst)),
        "outer destination {dst} is not a backend"
    );
    let mut inner = output[OUTER..].to_vec();
    let mut expected = input.bytes[ETH_HLEN..].to_vec();
    if varied {
        for off in [input.sport_off as usize, input.src_low_off as usize] {
            let at = off - ETH_HLEN;
            inner[at..at + 2].fill(0);
            expected[at..at + 2].fill(0);
        }
    }
    ensure!(
        inner == expected,
        "the inner packet differs from the original:\n  got      {inner:02x?}\n  expected {expected:02x?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_tests::xdp::frames::encapsulate_v4;

    use super::*;

    /// What a balancer should send for `frame`: IPIP toward backend 7, to the next hop.
    fn forwarded(frame: &Frame) -> Vec<u8> {
        let IpAddr::V4(backend) = fixture::backend_addr(7, false) else {
            panic!("backend 7 is IPv4");
        };
        let mut out = encapsulate_v4(&frame.bytes, Ipv4Addr::new(172, 16, 0, 1), backend);
        out[..6].copy_from_slice(&NEXT_HOP_MAC);
        out
    }

    #[test]
    fn a_packet_forwarded_to_a_backend_passes() {
        let syn = fixture::tcp_v4(CLIENT4, VIP4, 40000, SYN);
        check_encapsulated(&syn, &forwarded(&syn), false).expect("forwarded as expected");
    }

    #[test]
    fn a_wrong_destination_mac_or_backend_or_inner_packet_fails() {
        let syn = fixture::tcp_v4(CLIENT4, VIP4, 40000, SYN);
        let mut mac = forwarded(&syn);
        mac[0] ^= 1;
        assert!(check_encapsulated(&syn, &mac, false).is_err());
        let mut dst = forwarded(&syn);
        dst[ETH_HLEN + 19] = 200;
        assert!(check_encapsulated(&syn, &dst, false).is_err());
        let mut inner = forwarded(&syn);
        let last = inner.len() - 1;
        inner[last] ^= 0xff;
        assert!(check_encapsulated(&syn, &inner, false).is_err());
        assert!(check_encapsulated(&syn, &syn.bytes, false).is_err());
    }

    #[test]
    fn only_the_varied_flow_fields_may_differ_in_new_flows() {
        let syn = fixture::tcp_v4(CLIENT4, VIP4, 40000, SYN);
        let mut out = forwarded(&syn);
        let sport = 20 + syn.sport_off as usize;
        out[sport] ^= 0x55;
        out[20 + syn.src_low_off as usize + 1] ^= 0x55;
        assert!(check_encapsulated(&syn, &out, false).is_err());
        check_encapsulated(&syn, &out, true).expect("varied fields are not compared");
        // The destination port is not a varied field.
        out[sport + 2] ^= 0x55;
        assert!(check_encapsulated(&syn, &out, true).is_err());
    }
}
