//! The demo (`cargo xtask demo`): builds the lab with three backends, runs `lb` on it, and for every
//! scheduler drives real connections through the XDP program and prints where they went. Ends with
//! an IPv6 VIP and `lb status`. Exits non-zero unless every connection succeeded and every backend with
//! a weight got traffic.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use clap::Parser;
use lb_tests::client::held_per_backend;
use lb_tests::config::{ServiceConfig, to_toml};
use lb_tests::eventually::wait_until;
use lb_tests::scenario::{
    SCHEDULERS, Tolerance, compare, expected_shares, is_weighted, render, service, status_shows,
    vip,
};
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
    println!(
        "Starting the lab: client -> router -> lb0 (XDP) -> b0, b1, b2 (direct server return)"
    );
    let mut lab = Lab::start(LabOptions::default()).context("starting the lab")?;
    let mut failures = Vec::new();

    let first = demo_service(SCHEDULERS[0], false);
    lab.start_lb(0, &to_toml(std::slice::from_ref(&first)), &[])
        .context("starting lb")?;
    for scheduler in SCHEDULERS {
        let svc = demo_service(scheduler, false);
        apply(&mut lab, std::slice::from_ref(&svc))?;
        run_one(&lab, &svc, &args, &mut failures)?;
    }

    let v4 = demo_service("maglev", false);
    let v6 = ServiceConfig {
        name: "demo-v6".into(),
        ..demo_service("wrr", true)
    };
    apply(&mut lab, &[v4, v6.clone()])?;
    run_one(&lab, &v6, &args, &mut failures)?;

    println!(
        "\n== lb status ==\n{}",
        lab.lb_status_text(0).context("lb status")?
    );
    drop(lab);
    if failures.is_empty() {
        println!("demo: every connection succeeded and every weighted backend got traffic");
        Ok(())
    } else {
        anyhow::bail!("demo failed:\n  {}", failures.join("\n  "))
    }
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

/// Rewrites the configuration, sends SIGHUP and waits until `lb status` shows it.
fn apply(lab: &mut Lab, services: &[ServiceConfig]) -> anyhow::Result<()> {
    lab.rewrite_config(0, &to_toml(services))?;
    let applied = wait_until(Duration::from_secs(10), || {
        lab.lb_status_json(0)
            .is_ok_and(|s| services.iter().all(|svc| status_shows(&s, svc)))
    });
    ensure!(
        applied,
        "lb did not apply the new configuration within 10 s\n{}",
        lab.lb_log(0).unwrap_or_default()
    );
    Ok(())
}

fn run_one(
    lab: &Lab,
    svc: &ServiceConfig,
    args: &Args,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
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
    Ok(())
}
