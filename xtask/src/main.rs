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
    /// test (unit and namespace-lab integration tests).
    Test {
        /// Passed on to `cargo test` (e.g. a test name filter, or `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build, then run the demo: a lab with three backends and its own ZooKeeper, `lb run --zk`,
    /// every scheduler, a backend registering and draining, real connections.
    Demo,
    /// Remove namespaces and directories left by lab tests that were killed before cleaning up.
    CleanLabs,
    /// Build, then run the benchmarks of the `lb-bench` crate (`bench/`): `lb-xdp-bench` (ns per
    /// packet of the XDP balancer, BPF_PROG_TEST_RUN), then `lb-zk-bench` (ZooKeeper control plane:
    /// write → map latency, cold start of 1,000 services).
    Bench {
        /// Only the ZooKeeper benchmark.
        #[arg(long)]
        zk_only: bool,
        /// Only the XDP benchmark.
        #[arg(long, conflicts_with = "zk_only")]
        no_zk: bool,
        /// Passed on to the XDP benchmark (e.g. `--repeat 20000 --rounds 3`).
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
            cargo::test(&root, &args, &deb)
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
            args,
        } => {
            build(&root)?;
            cargo::cargo(&root, &["build", "--release", "-p", "lb-bench", "--bins"])?;
            if !zk_only {
                run_bin(&cargo::release_bin(&root, "lb-xdp-bench"), &args, &root)?;
            }
            if !no_zk {
                run_bin(&cargo::release_bin(&root, "lb-zk-bench"), &[], &root)?;
            }
            Ok(())
        }
    }
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
