//! The next-hop benchmark: how long `lb run` takes to resolve and keep the next hops of many backends
//! through its one netlink socket, in a thread's own namespace (gone with the thread):
//!
//! 1. route lookups (`RTM_GETROUTE`) of `--backends` addresses behind a /16 gateway route;
//! 2. a keeper refresh of those backends (lookups, one neighbour dump, one managed entry);
//! 3. the same number of directly connected backends (a /16 on the link): one managed entry each,
//!    created, then refreshed unchanged, then released;
//! 4. for comparison, `ip -j route get` forked per backend (what lb did before), over `--forks`.
//!
//! Prints a markdown table. Needs root.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use clap::Parser;
use lb_tests::lab::{PrivateNetns, with_private_netns};
use lb_userspace::nexthop::{NextHopKeeper, resolve};

#[derive(Parser, Debug)]
#[command(about = "Benchmark lb's next-hop resolution (netlink) in a private namespace")]
struct Args {
    /// Backend addresses resolved.
    #[arg(long, default_value_t = 10_000)]
    backends: u32,
    /// `ip route get` forks timed for the comparison row (0: skip).
    #[arg(long, default_value_t = 500)]
    forks: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        (1..=60_000).contains(&args.backends),
        "--backends must be 1..=60000 (a /16 holds them)"
    );
    with_private_netns(|ns| run(ns, &args)).context("private namespace")?
}

/// Backend `i` in 198.18.0.0/16 (routed) or 198.19.0.0/16 (on the link), from .1.0 up.
fn backend(second: u8, i: u32) -> IpAddr {
    let host = 256 + i;
    IpAddr::V4(Ipv4Addr::new(198, second, (host >> 8) as u8, host as u8))
}

fn run(ns: &PrivateNetns, args: &Args) -> anyhow::Result<()> {
    ns.ip_script(&[
        "link add nh0 type veth peer name nh1",
        "link set nh0 up",
        "link set nh1 up",
        "addr add 198.18.0.2/24 dev nh0",
        "route add 198.18.0.0/16 via 198.18.0.1",
        "addr add 198.19.0.2/16 dev nh0",
    ])?;
    let n = args.backends;
    let routed: Vec<IpAddr> = (0..n).map(|i| backend(18, i)).collect();
    let direct: Vec<IpAddr> = (0..n).map(|i| backend(19, i)).collect();
    let mut rows = Vec::new();

    let t = Instant::now();
    let hops = resolve(&routed)?;
    let took = t.elapsed();
    let ok = hops.iter().filter(|h| h.is_ok()).count();
    ensure!(ok == n as usize, "{ok} of {n} routed backends resolved");
    rows.push(("route lookups, /16 via a gateway", n, took));

    let mut keeper = NextHopKeeper::open(false)?;
    let t = Instant::now();
    let r = keeper.refresh(&routed);
    rows.push((
        "keeper refresh, /16 via a gateway (1 entry)",
        n,
        t.elapsed(),
    ));
    ensure!(r.created.len() == 1, "gateway: {r:?}");
    keeper.release();

    let t = Instant::now();
    let r = keeper.refresh(&direct);
    rows.push((
        "keeper refresh, directly connected (creates 1 entry each)",
        n,
        t.elapsed(),
    ));
    ensure!(
        r.created.len() == n as usize,
        "direct: created {} of {n}",
        r.created.len()
    );
    let t = Instant::now();
    let r = keeper.refresh(&direct);
    rows.push((
        "keeper refresh, directly connected, unchanged",
        n,
        t.elapsed(),
    ));
    ensure!(
        r.created.is_empty() && r.removed.is_empty(),
        "unchanged refresh changed something"
    );
    let t = Instant::now();
    let released = keeper.release();
    rows.push(("release (delete lb's entries)", n, t.elapsed()));
    ensure!(
        released.len() == n as usize,
        "released {} of {n}",
        released.len()
    );

    if args.forks > 0 {
        let t = Instant::now();
        for dst in routed.iter().take(args.forks as usize) {
            ns.ip(&["-j", "-4", "route", "get", &dst.to_string()])?;
        }
        let per = t.elapsed() / args.forks;
        rows.push(("`ip -j route get` forks (before), extrapolated", n, per * n));
    }

    println!("| next hops | backends | total | per backend |");
    println!("|---|---:|---:|---:|");
    for (what, count, took) in rows {
        println!(
            "| {what} | {count} | {} | {:.1} µs |",
            ms(took),
            took.as_secs_f64() * 1e6 / f64::from(count)
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
