//! The demo (`cargo xtask demo`): builds the lab with three backends, starts its own ZooKeeper in the
//! router namespace and runs `lb run --zk` on it. The service is created with the admin CLI
//! (`lb service put`, `lb backend put`); for every scheduler real connections go through the XDP
//! program and the demo prints where they went. Then a backend joins with `lb register`, takes
//! traffic, drains on SIGTERM and leaves. Ends with an IPv6 VIP and `lb status`. Exits non-zero
//! unless every connection succeeded and every backend with a weight got traffic.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use clap::Parser;
use lb_tests::client::held_per_backend;
use lb_tests::config::ServiceConfig;
use lb_tests::eventually::wait_until;
use lb_tests::lab::topology::{ROUTER_BACKENDS_V4, ROUTER_LBS_V4};
use lb_tests::scenario::{
    SCHEDULERS, Tolerance, backend_state, compare, expected_shares, is_weighted, render, service,
    status_serves, vip,
};
use lb_tests::zk_server::{ZkServer, ZkServerOptions};
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
/// How long a change in ZooKeeper may take to reach the data plane.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The lab and its ZooKeeper; the lab's processes stop first.
struct Demo {
    lab: Lab,
    zk: ZkServer,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    println!(
        "Starting the lab: client -> router -> lb0 (XDP) -> b0, b1, b2 (direct server return)"
    );
    let lab = Lab::start(LabOptions::default()).context("starting the lab")?;
    println!("Starting ZooKeeper in the router namespace");
    let zk = ZkServer::start_with(ZkServerOptions {
        netns: Some(lab.router_netns()),
        bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    })
    .context("starting ZooKeeper")?;
    let mut demo = Demo { lab, zk };
    let mut failures = Vec::new();

    let first = demo_service(SCHEDULERS[0], false);
    demo.put(&first)?;
    let lb_zk = format!("{ROUTER_LBS_V4}:{}", demo.zk.port());
    println!("$ lb run --iface eth0 --zk {lb_zk}   (in lb0)");
    demo.lab
        .start_lb_zk(0, &lb_zk, &[])
        .context("starting lb run --zk")?;
    for scheduler in SCHEDULERS {
        let svc = demo_service(scheduler, false);
        if scheduler != first.scheduler {
            demo.put(&svc)?;
        }
        demo.wait_serves(&svc)?;
        run_one(&demo.lab, &svc, &args, &mut failures)?;
    }

    register_drain_leave(&mut demo, &args, &mut failures)?;

    let v6 = ServiceConfig {
        name: "demo-v6".into(),
        ..demo_service("wrr", true)
    };
    demo.put(&v6)?;
    demo.wait_serves(&v6)?;
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

impl Demo {
    /// `lb ARGS --zk 127.0.0.1:PORT` next to ZooKeeper, echoed as the operator would type it.
    fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let connect = self.zk.connect_string();
        println!("$ lb {} --zk {connect}", args.join(" "));
        let mut all = args.to_vec();
        all.extend(["--zk", &connect]);
        self.lab.run_lb_in(&self.lab.router_netns(), &all)
    }

    /// Creates or updates the service and its backends with the admin CLI.
    fn put(&self, svc: &ServiceConfig) -> anyhow::Result<()> {
        let vip = svc.vip.to_string();
        self.admin(&[
            "service",
            "put",
            &svc.name,
            "--vip",
            &vip,
            "--scheduler",
            &svc.scheduler,
        ])?;
        for b in &svc.backends {
            self.admin(&[
                "backend",
                "put",
                &svc.name,
                &b.addr.to_string(),
                "--weight",
                &b.weight.to_string(),
            ])?;
        }
        Ok(())
    }

    /// Waits until `lb status` shows the daemon serving exactly `svc`.
    fn wait_serves(&self, svc: &ServiceConfig) -> anyhow::Result<()> {
        let applied = wait_until(APPLY_TIMEOUT, || {
            self.lab
                .lb_status_json(0)
                .is_ok_and(|s| status_serves(&s, svc))
        });
        ensure!(
            applied,
            "lb did not apply {} from ZooKeeper within {APPLY_TIMEOUT:?}\n{}",
            svc.name,
            self.lab.lb_log(0).unwrap_or_default()
        );
        Ok(())
    }
}

/// b2 leaves the configuration, then joins again with `lb register`, takes traffic, drains on
/// SIGTERM and leaves.
fn register_drain_leave(
    demo: &mut Demo,
    args: &Args,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let b2 = Lab::backend_addr(2, false);
    let two = service("demo", vip(1, false), "wrr", &[1, 2]);
    println!("\n== a backend registers itself, takes traffic, drains and leaves ==");
    demo.put(&two)?;
    demo.admin(&["backend", "rm", "demo", &b2.to_string()])?;
    demo.wait_serves(&two)?;
    let connect = format!("{ROUTER_BACKENDS_V4}:{}", demo.zk.port());
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
    demo.wait_serves(&three)?;
    println!("b2 registered:");
    run_one(&demo.lab, &three, args, failures)?;

    println!(
        "$ kill -TERM <lb register>   (b2 drains: no new connections, then its node is deleted)"
    );
    demo.lab.signal_register(2, libc::SIGTERM)?;
    let draining = wait_until(APPLY_TIMEOUT, || {
        demo.lab.lb_status_json(0).is_ok_and(|s| {
            backend_state(&s, "demo", b2).is_some_and(|(state, _)| state == "draining")
        })
    });
    ensure!(draining, "b2 never showed as draining");
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
    demo.wait_serves(&two)?;
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
