//! The end-to-end bench (`cargo xtask bench --e2e`): `wrk` through each mode of [`lb_bench::e2e`]
//! in turn, over `--rounds` interleaved rounds; writes `e2e.md` and `e2e.svg` into `--out-dir`.
//! Fails (after writing them) when a run did not take its mode's path. Needs root, bpffs, and what
//! `cargo xtask setup` installs (nginx, haproxy, wrk, nftables, ZooKeeper); `LB_BIN` names `lb`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use lb_bench::e2e::lab::E2eLab;
use lb_bench::e2e::measure::{Measurement, measure, problems};
use lb_bench::e2e::mode::Mode;
use lb_bench::e2e::report::{RunSetup, markdown, svg};
use lb_bench::e2e::summary::{figures, goals};
use lb_bench::e2e::wrk::WrkRun;

#[derive(Parser, Debug)]
#[command(about = "End-to-end bench: real TCP through lb, the floor, nftables and HAProxy")]
struct Args {
    /// Rounds; each runs every mode once, in the same order.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds of each measured wrk run.
    #[arg(long, default_value_t = 5)]
    duration_s: u64,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Seconds of the unrecorded warm-up run before each mode's measurements (0: none).
    #[arg(long, default_value_t = 1)]
    warmup_s: u64,
    /// Only these modes (repeatable: direct, direct-ecmp, floor, lb-rr, lb-maglev,
    /// lb-rr-1-backend, nftables, haproxy).
    #[arg(long = "mode")]
    modes: Vec<String>,
    /// Where e2e.md and e2e.svg are written.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/bench"))]
    out_dir: PathBuf,
}

fn parse_mode(name: &str) -> anyhow::Result<Mode> {
    Mode::ALL
        .into_iter()
        .find(|m| m.name().replace(' ', "-") == name)
        .with_context(|| {
            let names: Vec<String> = Mode::ALL
                .iter()
                .map(|m| m.name().replace(' ', "-"))
                .collect();
            format!("--mode {name:?}: one of {}", names.join(", "))
        })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        (1..=20).contains(&args.rounds) && (1..=60).contains(&args.duration_s),
        "--rounds is 1..=20 and --duration-s 1..=60 (got {} and {})",
        args.rounds,
        args.duration_s
    );
    let modes: Vec<Mode> = if args.modes.is_empty() {
        Mode::ALL.to_vec()
    } else {
        args.modes
            .iter()
            .map(|m| parse_mode(m))
            .collect::<anyhow::Result<_>>()?
    };
    let setup = RunSetup {
        command: "cargo xtask bench --e2e".to_owned() + &extra_args(&args),
        rounds: args.rounds,
        duration_s: args.duration_s,
        threads: args.threads,
        connections: args.connections,
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        load_before: read_trimmed("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        date: utc_now(),
    };

    let mut lab = E2eLab::start().context("starting the e2e lab")?;
    let url = format!("http://{}/", E2eLab::vip());
    let run = |close: bool, secs: u64| WrkRun {
        url: url.clone(),
        threads: args.threads,
        connections: args.connections,
        duration: Duration::from_secs(secs),
        close,
    };
    let mut all: Vec<Measurement> = Vec::new();
    for round in 1..=args.rounds {
        for &mode in &modes {
            eprintln!(
                "lb-e2e-bench: round {round}/{}: {}",
                args.rounds,
                mode.name()
            );
            let active = lab
                .enter(mode)
                .with_context(|| format!("setting up {}", mode.name()))?;
            if args.warmup_s > 0 {
                run(true, args.warmup_s).run_in(&lab.lab().client_netns())?;
            }
            for close in [true, false] {
                let m = measure(&lab, mode, &active, &run(close, args.duration_s))
                    .with_context(|| format!("measuring {}", mode.name()))?;
                eprintln!(
                    "lb-e2e-bench:   {} {:.0}/s ({} requests, {} errors)",
                    if close { "conn" } else { "req " },
                    m.wrk.per_second,
                    m.wrk.requests,
                    m.wrk.errors
                );
                all.push(m);
            }
            lab.leave(active)
                .with_context(|| format!("leaving {}", mode.name()))?;
        }
    }
    drop(lab);

    let figs = figures(&all);
    let goals = goals(&figs);
    let problems: Vec<String> = all.iter().flat_map(problems).collect();
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let md = args.out_dir.join("e2e.md");
    let page = markdown(&setup, &figs, &goals, &problems);
    std::fs::write(&md, &page).with_context(|| format!("cannot write {}", md.display()))?;
    svg(&args.out_dir.join("e2e.svg"), &figs)?;
    println!("{page}");
    eprintln!("lb-e2e-bench: wrote {} and e2e.svg", md.display());
    if !problems.is_empty() {
        bail!(
            "{} run(s) did not take their mode's path:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    Ok(())
}

/// The arguments that differ from the defaults, as typed.
fn extra_args(args: &Args) -> String {
    let mut s = String::new();
    let defaults = Args::parse_from(["lb-e2e-bench"]);
    if args.rounds != defaults.rounds {
        s += &format!(" --rounds {}", args.rounds);
    }
    if args.duration_s != defaults.duration_s {
        s += &format!(" --duration-s {}", args.duration_s);
    }
    if args.threads != defaults.threads {
        s += &format!(" --threads {}", args.threads);
    }
    if args.connections != defaults.connections {
        s += &format!(" --connections {}", args.connections);
    }
    for m in &args.modes {
        s += &format!(" --mode {m}");
    }
    s
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("<{path}: {e}>"))
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC` (from `date`, no clock crate for one line).
fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn every_mode_is_named_in_the_help_and_parsed() {
        let cmd = Args::command();
        let help = cmd
            .get_arguments()
            .find(|a| a.get_id() == "modes")
            .and_then(|a| a.get_help())
            .expect("--mode has help")
            .to_string()
            .replace('\n', " ");
        let listed: Vec<&str> = help
            .split_once('(')
            .and_then(|(_, l)| l.strip_prefix("repeatable: "))
            .and_then(|l| l.trim_end_matches('.').strip_suffix(')'))
            .unwrap_or_else(|| panic!("no \"(repeatable: …)\" in {help:?}"))
            .split(", ")
            .collect();
        let names: Vec<String> = Mode::ALL
            .iter()
            .map(|m| m.name().replace(' ', "-"))
            .collect();
        assert_eq!(listed, names);
        for (name, mode) in names.iter().zip(Mode::ALL) {
            assert_eq!(parse_mode(name).expect("parses"), mode);
        }
        assert!(parse_mode("lb rr 1 backend").is_err());
    }
}
