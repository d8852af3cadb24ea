//! The demo (`cargo xtask demo`): builds the lab with three backends, starts its own ZooKeeper in the
//! router namespace and runs `lb run --zk` on it. The service is created with the admin CLI
//! (`lb service put`, `lb backend put`); for every scheduler real connections go through the XDP
//! program and the demo prints where they went. Then a backend joins with `lb register`, takes
//! traffic, drains on SIGTERM and leaves. Ends with an IPv6 VIP and `lb status`. Exits non-zero
//! unless every connection succeeded and every backend with a weight got traffic.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use clap::Parser;
use lb_tests::client::held_per_backend;
use lb_tests::config::ServiceConfig;
use lb_tests::eventually::Eventually;
use lb_tests::scenario::{
    SCHEDULERS, Tolerance, backend_state, compare, expected_shares, is_weighted, render, service,
    vip,
};
use lb_tests::zk_lab::{APPLY_TIMEOUT, ZkLab};
use lb_tests::{Lab, LabOptions, Spread, hold, spread};

#[derive(Parser)]
#[command(about = "Drive real connections through the XDP load balancer in a namespace lab")]
struct Args {
    /// New connections per scheduler.
    #[arg(long, default_value_t = 600)]
    connections: usize,
    /// Connections open at the same time.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

const WEIGHTS: [u32; 3] = [1, 2, 3];
const EQUAL: [u32; 3] = [1, 1, 1];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    println!(
        "Starting the lab: client -> router -> lb0 (XDP) -> b0, b1, b2 (direct server return), \
         ZooKeeper in the router namespace"
    );
    let mut demo = ZkLab::start(LabOptions::default())?;
    demo.echo = true;
    let mut failures = Vec::new();

    let first = demo_service(SCHEDULERS[0], false);
    demo.put(&first)?;
    println!(
        "$ lb run --iface eth0 --zk {}   (in lb0)",
        demo.lb_connect()
    );
    demo.start_lb(0, &[]).context("starting lb run --zk")?;
    for scheduler in SCHEDULERS {
        let svc = demo_service(scheduler, false);
        if scheduler != first.scheduler {
            demo.put(&svc)?;
        }
        demo.wait_serves(0, &svc)?;
        run_one(&demo.lab, &svc, &args, &mut failures)?;
    }

    register_drain_leave(&mut demo, &args, &mut failures)?;

    let v6 = ServiceConfig {
        name: "demo-v6".into(),
        ..demo_service("wrr", true)
    };
    demo.put(&v6)?;
    demo.wait_serves(0, &v6)?;
    run_one(&demo.lab, &v6, &args, &mut failures)?;

    println!(
        "\n== lb status ==\n{}",
        demo.lab.lb_status_text(0).context("lb status")?
    );
    drop(demo);
    println!("demo took {:.1} s", started.elapsed().as_secs_f64());
    if failures.is_empty() {
        println!("demo: every connection succeeded and every weighted backend got traffic");
        Ok(())
    } else {
        anyhow::bail!("demo failed:\n  {}", failures.join("\n  "))
    }
}

/// b2 leaves the configuration, then joins again with `lb register`, takes traffic, drains on
/// SIGTERM and leaves.
fn register_drain_leave(
    demo: &mut ZkLab,
    args: &Args,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let b2 = Lab::backend_addr(2, false);
    let two = service("demo", vip(1, false), "wrr", &[1, 2]);
    println!("\n== a backend registers itself, takes traffic, drains and leaves ==");
    demo.put(&two)?;
    demo.admin(&["backend", "rm", "demo", &b2.to_string()])?;
    demo.wait_serves(0, &two)?;
    let connect = demo.backend_connect();
    println!(
        "$ lb register --zk {connect} --service demo --addr {b2} --weight 3 --check tcp --drain-s 2   (in b2)"
    );
    demo.lab
        .start_register(
            2,
            &connect,
            "demo",
            false,
            &["--weight", "3", "--check", "tcp", "--drain-s", "2"],
        )
        .context("starting lb register")?;
    let three = service("demo", vip(1, false), "wrr", &WEIGHTS);
    demo.wait_serves(0, &three)?;
    println!("b2 registered:");
    run_one(&demo.lab, &three, args, failures)?;

    println!(
        "$ kill -TERM <lb register>   (b2 drains: no new connections, then its node is deleted)"
    );
    demo.lab.signal_register(2, libc::SIGTERM)?;
    Eventually::new("b2 to show as draining", APPLY_TIMEOUT).poll(|| {
        let status = demo.status(0).map_err(|e| format!("{e:#}"))?;
        match backend_state(&status, "demo", b2) {
            Some((state, _)) if state == "draining" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })?;
    println!("b2 draining:");
    // b2 is shown with weight 0: it must get no new connection.
    let without_b2 = service("demo", vip(1, false), "wrr", &[1, 2, 0]);
    let s = run_one(&demo.lab, &without_b2, args, failures)?;
    if s.count("b2") > 0 {
        failures.push(format!("draining b2 got {} new connections", s.count("b2")));
    }
    let exit = demo
        .lab
        .wait_register_exit(2, Duration::from_secs(15))
        .context("lb register did not finish draining")?;
    ensure!(exit.success(), "lb register exited with {exit}");
    demo.wait_serves(0, &two)?;
    println!("b2 left (its node deleted):");
    let s = run_one(&demo.lab, &without_b2, args, failures)?;
    if s.count("b2") > 0 {
        failures.push(format!("b2 left but got {} new connections", s.count("b2")));
    }
    Ok(())
}

fn demo_service(scheduler: &str, v6: bool) -> ServiceConfig {
    let weights = if is_weighted(scheduler) {
        &WEIGHTS
    } else {
        &EQUAL
    };
    service("demo", vip(1, v6), scheduler, weights)
}

fn weights(svc: &ServiceConfig) -> Vec<u32> {
    svc.backends.iter().map(|b| b.weight).collect()
}

fn run_one(
    lab: &Lab,
    svc: &ServiceConfig,
    args: &Args,
    failures: &mut Vec<String>,
) -> anyhow::Result<Spread> {
    let weights = weights(svc);
    let vip = svc.vip;
    let (connections, concurrency) = (args.connections, args.concurrency);
    let least_conn = svc.scheduler == "least-conn";
    let (spread, tolerance) = if least_conn {
        // least-conn weighs open connections, so keep them all open while they are counted.
        println!(
            "\n== {} on {} (weights {:?}), {} connections held open ==",
            svc.scheduler, svc.vip, weights, connections
        );
        let held = lab.in_client(move || hold(vip, connections))?;
        let spread = match held {
            Ok(held) => Spread {
                per_backend: held_per_backend(&held),
                ..Spread::default()
            },
            Err(e) => Spread {
                failures: 1,
                failure_samples: vec![format!("{e:#}")],
                ..Spread::default()
            },
        };
        (
            spread,
            Tolerance::Deterministic {
                slack: 1.0,
                frac: 0.0,
            },
        )
    } else {
        println!(
            "\n== {} on {} (weights {:?}), {} connections ==",
            svc.scheduler, svc.vip, weights, connections
        );
        let spread = lab.in_client(move || spread(vip, connections, concurrency))?;
        (spread, Tolerance::for_scheduler(&svc.scheduler))
    };
    let rows = compare(
        &spread,
        &expected_shares(&svc.scheduler, &weights),
        tolerance,
    );
    print!("{}", render(&rows));
    if spread.failures > 0 {
        println!(
            "failed connections: {} (first: {:?})",
            spread.failures, spread.failure_samples
        );
        failures.push(format!(
            "{}: {} failed connections",
            svc.scheduler, spread.failures
        ));
    }
    for (row, w) in rows.iter().zip(&weights) {
        if *w > 0 && row.observed == 0 {
            failures.push(format!(
                "{} on {}: {} got no traffic",
                svc.scheduler, svc.vip, row.backend
            ));
        }
    }
    Ok(spread)
}
