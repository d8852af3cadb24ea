//! `cargo xtask`: set up the machine, build, run, test, demo and benchmark the load balancer.
//!
//! Depends on nothing that needs the eBPF toolchain, so `cargo xtask setup` works on a fresh machine
//! (it is what installs that toolchain).

mod cargo;
mod clean;
mod dist;
mod setup;

use std::ffi::OsString;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, set up, test, demo and benchmark the load balancer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (apt packages, nightly, bpf-linker, bpffs); idempotent.
    Setup,
    /// Set up, then build `lb` (with its XDP object) and the test binaries in release mode.
    Build,
    /// Build, then the Debian package `target/debian/lb_<version>_<arch>.deb` (binary, man pages,
    /// completions, systemd unit, example configuration); prints its path.
    Dist,
    /// Build, then run `target/release/lb` with the given arguments (root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, build (and the Debian package, for the `dist` tests: `LB_DEB`), then run every host
    /// test (unit and namespace-lab integration tests); without arguments, then the XDP fuzzer
    /// (`CI_FUZZ_PACKETS` frames).
    Test {
        /// Passed on to `cargo test` (e.g. a test name filter, or `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build, then run the demo: a lab with three backends and its own ZooKeeper, `lb run --zk`,
    /// every scheduler, a backend registering and draining, real connections.
    Demo,
    /// Build, then run `lb-xdp-fuzz`: mutated and random frames through the real `lb_balancer`
    /// (BPF_PROG_TEST_RUN), every verdict, output and counter checked; fails on any bad frame.
    Fuzz {
        /// Frames to run.
        #[arg(long, default_value_t = CI_FUZZ_PACKETS)]
        packets: u64,
        /// The run's seed (decimal or 0x hex); frame i of a seed is always the same frame.
        #[arg(long, default_value = "0x5eed")]
        seed: String,
        /// Index of the first frame (replaying a failure: --seed S --first I --packets 1).
        #[arg(long, default_value_t = 0)]
        first: u64,
    },
    /// Remove namespaces and directories left by lab tests that were killed before cleaning up.
    CleanLabs,
    /// Build, then run the benchmarks of the `lb-bench` crate (`bench/`): `lb-xdp-bench` (ns per
    /// packet of the XDP balancer, BPF_PROG_TEST_RUN, then side by side with Katran built from
    /// `--katran DIR` / `$LB_BENCH_KATRAN`, written to docs/bench/xdp.{md,svg}), then
    /// `lb-flowtable-bench` (the flow-table alternatives alone, docs/bench/flowtable.md), then
    /// `lb-zk-bench` (ZooKeeper control plane: write → map latency, cold start of 1,000 services)
    /// and `lb-nexthop-bench` (10,000 next hops through netlink). With `--e2e`, only `lb-e2e-bench`.
    Bench {
        /// Only the ZooKeeper benchmark.
        #[arg(long)]
        zk_only: bool,
        /// Only the XDP benchmark.
        #[arg(long, conflicts_with = "zk_only")]
        no_zk: bool,
        /// Only the end-to-end benchmark (`lb-e2e-bench`: wrk through lb, the floor, nftables and
        /// HAProxy in the lab; writes `docs/bench/e2e.md` and `e2e.svg`).
        #[arg(long, conflicts_with_all = ["zk_only", "no_zk"])]
        e2e: bool,
        /// Skip the flow-table benchmark (`lb-flowtable-bench`: 1 Mi and 16 Mi entries, a few
        /// GB of maps).
        #[arg(long)]
        no_flowtable: bool,
        /// Passed on to the XDP benchmark, or with `--e2e` to the end-to-end one (e.g. `--rounds 5`, or for the XDP one `--katran DIR`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = cargo::workspace_root()?;
    match cli.command {
        Command::Setup => setup::run(),
        Command::CleanLabs => clean::run(),
        Command::Build => build(&root),
        Command::Dist => {
            setup::run()?;
            cargo::cargo(&root, &["build", "--release", "-p", "lb-userspace"])?;
            println!("{}", dist::package(&root)?.display());
            Ok(())
        }
        Command::Run { args } => {
            build(&root)?;
            cargo::exec(&cargo::release_bin(&root, "lb"), &args)
        }
        Command::Test { args } => {
            build(&root)?;
            let deb = dist::package(&root)?;
            // The whole suite (no filter) also fuzzes; a filtered run is someone iterating.
            let fuzz_too = args.is_empty();
            // The fuzzer runs even when a test failed: its verdict is worth having either way.
            let tests = cargo::test(&root, &args, &deb);
            if fuzz_too {
                fuzz(&root, CI_FUZZ_PACKETS, "0x5eed", 0)?;
            }
            tests
        }
        Command::Fuzz {
            packets,
            seed,
            first,
        } => {
            build(&root)?;
            fuzz(&root, packets, &seed, first)
        }
        Command::Demo => {
            build(&root)?;
            let demo = cargo::release_bin(&root, "lb-demo");
            let status = cargo::command(&demo, &[])
                .env("LB_BIN", cargo::release_bin(&root, "lb"))
                .status()
                .with_context(|| format!("cannot start {}", demo.display()))?;
            if !status.success() {
                bail!("the demo failed ({status})");
            }
            Ok(())
        }
        Command::Bench {
            zk_only,
            no_zk,
            e2e,
            no_flowtable,
            args,
        } => {
            build(&root)?;
            cargo::cargo(&root, &["build", "--release", "-p", "lb-bench", "--bins"])?;
            if e2e {
                return run_bin(&cargo::release_bin(&root, "lb-e2e-bench"), &args, &root);
            }
            if !zk_only {
                run_bin(&cargo::release_bin(&root, "lb-xdp-bench"), &args, &root)?;
                if !no_flowtable {
                    run_bin(&cargo::release_bin(&root, "lb-flowtable-bench"), &[], &root)?;
                }
            }
            if !no_zk {
                run_bin(&cargo::release_bin(&root, "lb-zk-bench"), &[], &root)?;
                run_bin(&cargo::release_bin(&root, "lb-nexthop-bench"), &[], &root)?;
            }
            Ok(())
        }
    }
}

/// Frames `cargo xtask test` fuzzes (about 3 µs each: seconds, not minutes).
const CI_FUZZ_PACKETS: u64 = 1_000_000;

/// Runs the built fuzzer; fails when it finds anything.
fn fuzz(root: &std::path::Path, packets: u64, seed: &str, first: u64) -> anyhow::Result<()> {
    let args: Vec<OsString> = [
        "--packets".to_owned(),
        packets.to_string(),
        "--seed".to_owned(),
        seed.to_owned(),
        "--first".to_owned(),
        first.to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    println!(
        "xtask: lb-xdp-fuzz {}",
        args.join(" ".as_ref()).to_string_lossy()
    );
    run_bin(&cargo::release_bin(root, "lb-xdp-fuzz"), &args, root)
}

/// Runs a built benchmark with `LB_BIN` set; fails when it fails.
fn run_bin(bin: &std::path::Path, args: &[OsString], root: &std::path::Path) -> anyhow::Result<()> {
    let status = cargo::command(bin, args)
        .env("LB_BIN", cargo::release_bin(root, "lb"))
        .status()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", bin.display());
    }
    Ok(())
}

fn build(root: &std::path::Path) -> anyhow::Result<()> {
    setup::run()?;
    cargo::cargo(root, &["build", "--release", "-p", "lb-userspace"])?;
    cargo::cargo(root, &["build", "--release", "-p", "lb-tests", "--bins"])
}
