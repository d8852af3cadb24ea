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

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use lb_bench::harness::{BenchFrame, BenchRun, BenchTarget, XdpBench};
use lb_common::{
    BACKEND_F_VALID, BackendEntry, Counter, IPPROTO_TCP, LbConfig, Scheduler, ServiceEntry, VipKey,
    addr::to_words, limits::Capacity,
};
use lb_userspace::{
    dataplane::{Dataplane, LoadOptions},
    netif,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const IFACE: &str = "lbb0";
const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 0x10);
const TABLE_SIZE: u32 = 65_537;
const BACKEND_COUNTS: [u32; 3] = [3, 64, 1024];
const FLOW_TABLE_SIZE: u32 = 1 << 22;

#[derive(Parser)]
#[command(about = "Nanoseconds per packet of the XDP balancer (BPF_PROG_TEST_RUN, needs root)")]
struct Args {
    /// Repetitions per measurement.
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// Measurements per case; the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.rounds > 0 && args.repeat > 0,
        "--rounds and --repeat must be at least 1"
    );
    let result = std::thread::scope(|s| {
        s.spawn(|| enter_lab().and_then(|ifindex| run(&args, ifindex)))
            .join()
    });
    match result {
        Ok(r) => r,
        Err(_) => bail!("the bench thread panicked"),
    }
}

/// One row of the report.
struct Row {
    case: String,
    per_packet: Duration,
}

fn run(args: &Args, ifindex: u32) -> anyhow::Result<()> {
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
        src_v6: to_words(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x3, 0, 0, 0, 0, 2))).0,
        src_v4: to_words(IpAddr::V4(Ipv4Addr::new(198, 18, 3, 2))).0[0],
        hash_seed: 0x1234_5678,
        ..Default::default()
    })?;
    let mut bench = XdpBench::load(&mut dp)?;
    let mut m = Measure {
        bench: &mut bench,
        args,
        ifindex,
    };
    let mut rows = Vec::new();

    let syn4 = tcp_v4(CLIENT4, VIP4, 40000, 0x02);
    let harness = m.harness(&syn4)?;
    m.bench.set_target(BenchTarget::Floor)?;
    let floor = m.case(&syn4, false, XDP_TX)?;
    rows.push(Row {
        case: "floor: parse + IPIP + XDP_TX (lb_floor)".into(),
        per_packet: floor,
    });
    m.bench.set_target(BenchTarget::Balancer)?;

    // While the table has room (at most repeat × (rounds + 1) + 1 flows so far, checked): an
    // insert without eviction.
    let ids = put_backends(m.bench.dataplane(), 64, false)?;
    put_service(
        m.bench.dataplane(),
        IpAddr::V4(VIP4),
        Scheduler::Maglev,
        &ids,
    )?;
    let inserts = u64::from(args.repeat) * (u64::from(args.rounds) + 1) + 1;
    if inserts < u64::from(FLOW_TABLE_SIZE) / 2 {
        let t = m.case(&syn4, true, XDP_TX)?;
        rows.push(Row {
            case: "new flow, maglev, 64 backends, flow table with room (no eviction)".into(),
            per_packet: t,
        });
    }

    // Then fill the flow table, so every other new-flow case measures the same steady state: a
    // full LRU table where each insert also evicts.
    let ids = put_backends(m.bench.dataplane(), 3, false)?;
    put_service(
        m.bench.dataplane(),
        IpAddr::V4(VIP4),
        Scheduler::RoundRobin,
        &ids,
    )?;
    m.fill_flow_table(&syn4, capacity.flow_table_size)?;

    for n in BACKEND_COUNTS {
        let ids = put_backends(m.bench.dataplane(), n, false)?;
        for scheduler in Scheduler::ALL {
            put_service(m.bench.dataplane(), IpAddr::V4(VIP4), scheduler, &ids)?;
            let t = m.case(&syn4, true, XDP_TX)?;
            rows.push(Row {
                case: format!("new flow, {}, {n} backends", scheduler.name()),
                per_packet: t,
            });
        }
    }

    let ids = put_backends(m.bench.dataplane(), 64, false)?;
    put_service(
        m.bench.dataplane(),
        IpAddr::V4(VIP4),
        Scheduler::Maglev,
        &ids,
    )?;
    let ack4 = tcp_v4(CLIENT4, VIP4, 40001, 0x10);
    let t = m.case(&ack4, false, XDP_TX)?;
    rows.push(Row {
        case: "established flow (flow table hit), IPv4".into(),
        per_packet: t,
    });
    let other = tcp_v4(CLIENT4, Ipv4Addr::new(198, 18, 100, 9), 40002, 0x02);
    let t = m.case(&other, false, XDP_PASS)?;
    rows.push(Row {
        case: "not a VIP (XDP_PASS)".into(),
        per_packet: t,
    });

    let ids6 = put_backends(m.bench.dataplane(), 64, true)?;
    put_service(
        m.bench.dataplane(),
        IpAddr::V6(VIP6),
        Scheduler::Maglev,
        &ids6,
    )?;
    let syn6 = tcp_v6(CLIENT6, VIP6, 40003, 0x02);
    let t = m.case(&syn6, true, XDP_TX)?;
    rows.push(Row {
        case: "new flow, maglev, 64 backends, IPv6".into(),
        per_packet: t,
    });
    let ack6 = tcp_v6(CLIENT6, VIP6, 40004, 0x10);
    let t = m.case(&ack6, false, XDP_TX)?;
    rows.push(Row {
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

    print_report(args, harness, floor, &rows, &counters);
    Ok(())
}

struct Measure<'a, 'b> {
    bench: &'a mut XdpBench<'b>,
    args: &'a Args,
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

    /// Median time per packet of restore + target, minus nothing (see `print_report`).
    fn case(&mut self, frame: &Frame, vary_flow: bool, verdict: u32) -> anyhow::Result<Duration> {
        self.set(frame, vary_flow)?;
        // One warm-up repetition: creates the flow of established-flow cases.
        self.bench.run(self.ifindex, 1)?;
        self.median(|b, ifindex, repeat| b.run(ifindex, repeat), verdict)
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
        self.bench.set_frame(&BenchFrame {
            frame: &frame.bytes,
            sport_off: frame.sport_off,
            src_low_off: frame.src_low_off,
            vary_flow,
        })?;
        Ok(())
    }

    fn median(
        &mut self,
        mut run: impl FnMut(&mut XdpBench<'_>, u32, u32) -> anyhow::Result<BenchRun>,
        verdict: u32,
    ) -> anyhow::Result<Duration> {
        let mut times = Vec::with_capacity(self.args.rounds as usize);
        for _ in 0..self.args.rounds {
            let r = run(self.bench, self.ifindex, self.args.repeat)?;
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

fn print_report(
    args: &Args,
    harness: Duration,
    floor: Duration,
    rows: &[Row],
    counters: &[(Counter, u64)],
) {
    let floor_net = floor.saturating_sub(harness).as_nanos().max(1) as f64;
    println!("## XDP balancer, ns per packet (BPF_PROG_TEST_RUN)\n");
    println!(
        "{} repetitions × {} rounds (median), one CPU, harness (`lb_reset_only`) = {} ns subtracted.\n",
        args.repeat,
        args.rounds,
        harness.as_nanos()
    );
    println!("| case | ns/packet | × floor |");
    println!("|---|---:|---:|");
    for r in rows {
        let net = r.per_packet.saturating_sub(harness).as_nanos();
        println!("| {} | {} | {:.2} |", r.case, net, net as f64 / floor_net);
    }
    let flows_new = counters
        .iter()
        .find(|(c, _)| *c == Counter::FlowNew)
        .map_or(0, |(_, v)| *v);
    let flows_hit = counters
        .iter()
        .find(|(c, _)| *c == Counter::FlowHit)
        .map_or(0, |(_, v)| *v);
    println!(
        "\nflow_new = {flows_new}, flow_hit = {flows_hit} (flow table: LRU, {} Mi entries, shared LRU lists).",
        FLOW_TABLE_SIZE >> 20
    );
}

/// A frame and where its flow fields are.
struct Frame {
    bytes: Vec<u8>,
    sport_off: u32,
    src_low_off: u32,
}

fn tcp_header(sport: u16, flags: u8) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend(80u16.to_be_bytes());
    t.extend([
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        5 << 4,
        flags,
        0xff,
        0xff,
        0,
        0,
        0,
        0,
    ]);
    t
}

fn eth(ether_type: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 0xaa, 2, 0, 0, 0, 0, 0xcc];
    f.extend(ether_type.to_be_bytes());
    f
}

fn tcp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, flags: u8) -> Frame {
    let mut f = eth(0x0800);
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0];
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let csum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend(ip);
    f.extend(tcp_header(sport, flags));
    Frame {
        bytes: f,
        sport_off: 14 + 20,
        src_low_off: 14 + 12 + 2,
    }
}

fn tcp_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, flags: u8) -> Frame {
    let mut f = eth(0x86dd);
    f.extend([0x60, 0, 0, 0, 0, 20, IPPROTO_TCP, 64]);
    f.extend(src.octets());
    f.extend(dst.octets());
    f.extend(tcp_header(sport, flags));
    Frame {
        bytes: f,
        sport_off: 14 + 40,
        src_low_off: 14 + 8 + 14,
    }
}

/// Backends 1..=n (IPv4 198.18.8.0/21 or IPv6 2001:db8:2::/64), all in service 0.
fn put_backends(dp: &mut Dataplane, n: u32, v6: bool) -> anyhow::Result<Vec<u32>> {
    (1..=n)
        .map(|id| {
            let ip = if v6 {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0x2,
                    0,
                    0,
                    0,
                    0,
                    0x1000 + id as u16,
                ))
            } else {
                let [a, b] = (id as u16).to_be_bytes();
                IpAddr::V4(Ipv4Addr::new(198, 18, 8 + a, b))
            };
            let (addr, family) = to_words(ip);
            let entry = BackendEntry {
                addr,
                service_id: 0,
                weight: 1,
                flags: BACKEND_F_VALID,
                port_be: 80u16.to_be(),
                family,
                _pad: 0,
            };
            dp.put_backend(id, &entry)?;
            Ok(id)
        })
        .collect()
}

/// Service 0 at `vip`:80 with a plain list (or, for Maglev, a full-size table) of `ids`.
fn put_service(
    dp: &mut Dataplane,
    vip: IpAddr,
    scheduler: Scheduler,
    ids: &[u32],
) -> anyhow::Result<()> {
    let table: Vec<u32> = match scheduler {
        // Any spread of positions over backends costs the same to look up as a real Maglev table.
        Scheduler::Maglev => (0..TABLE_SIZE as usize)
            .map(|i| ids[(i * 7 + i / 5) % ids.len()])
            .collect(),
        _ => ids.to_vec(),
    };
    dp.write_table(0, &table)?;
    let (addr, family) = to_words(vip);
    let key = VipKey {
        addr,
        port_be: 80u16.to_be(),
        proto: IPPROTO_TCP,
        family,
    };
    let entry = ServiceEntry {
        id: 0,
        scheduler: scheduler as u32,
        table_offset: 0,
        table_len: table.len() as u32,
        ..Default::default()
    };
    dp.put_service(&key, &entry)?;
    Ok(())
}

/// Runs `ip` inside the namespace `ns` (the child joins it before exec).
fn ip(ns: &File, args: &[&str]) -> anyhow::Result<()> {
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("ip");
    cmd.args(args);
    // SAFETY: setns is async-signal-safe; `fd` stays open until the child has exec'd.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().context("running `ip` (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The bench namespace: `lbb0` is the balancer's interface; backends (198.18.8.0/21,
/// 2001:db8:2::/64) are behind the next hop 198.18.3.1 / 2001:db8:3::1.
const SETUP: &[&str] = &[
    "link add lbb0 type veth peer name lbb1",
    "link set lbb0 up",
    "link set lbb1 up",
    "addr add 198.18.3.2/24 dev lbb0",
    "-6 addr add 2001:db8:3::2/64 dev lbb0 nodad",
    "neigh add 198.18.3.1 lladdr 02:00:00:00:03:01 dev lbb0 nud permanent",
    "-6 neigh add 2001:db8:3::1 lladdr 02:00:00:00:03:01 dev lbb0 nud permanent",
    "route add 198.18.8.0/21 via 198.18.3.1 dev lbb0",
    "-6 route add 2001:db8:2::/64 via 2001:db8:3::1 dev lbb0",
];

/// Gives the calling thread a network namespace of its own (anonymous: it ends with the thread,
/// so nothing can leak) with a veth pair, a permanent next-hop neighbour and routes toward the
/// backends, and pins the thread to one CPU. Returns the ifindex of the LB interface.
fn enter_lab() -> anyhow::Result<u32> {
    // SAFETY: only this thread changes namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    ensure!(
        rc == 0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let ns = File::open("/proc/thread-self/ns/net").context("opening our namespace")?;
    for line in SETUP {
        ip(&ns, &line.split_whitespace().collect::<Vec<_>>())?;
    }
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{IFACE}/forwarding");
        std::fs::write(&path, "1").with_context(|| format!("writing {path}"))?;
    }
    // SAFETY: plain libc calls on a zeroed cpu_set_t.
    unsafe {
        let cpu = libc::sched_getcpu().max(0) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
    netif::ifindex(IFACE).with_context(|| format!("{IFACE} in the bench namespace"))
}
