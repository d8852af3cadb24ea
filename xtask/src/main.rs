//! `cargo xtask`: set up the machine, build, run, test, demo and benchmark the load balancer.
//!
//! Depends on nothing that needs the eBPF toolchain, so `cargo xtask setup` works on a fresh machine
//! (it is what installs that toolchain).

mod cargo;
mod clean;
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
    /// Build, then run `target/release/lb` with the given arguments (root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, build, then run every host test (unit and namespace-lab integration tests).
    Test {
        /// Passed on to `cargo test` (e.g. a test name filter, or `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build, then run the demo: a lab with three backends, every scheduler, real connections.
    Demo,
    /// Remove namespaces and directories left by lab tests that were killed before cleaning up.
    CleanLabs,
    /// Build, then run the XDP benchmark binary.
    Bench {
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
        Command::Run { args } => {
            build(&root)?;
            cargo::exec(&cargo::release_bin(&root, "lb"), &args)
        }
        Command::Test { args } => {
            build(&root)?;
            cargo::test(&root, &args)
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
        Command::Bench { args } => {
            build(&root)?;
            let bench = cargo::release_bin(&root, "lb-xdp-bench");
            if !bench.exists() {
                println!(
                    "{} is missing: lb-userspace does not build a benchmark binary yet",
                    bench.display()
                );
                return Ok(());
            }
            cargo::exec(&bench, &args)
        }
    }
}

fn build(root: &std::path::Path) -> anyhow::Result<()> {
    setup::run()?;
    cargo::cargo(root, &["build", "--release", "-p", "lb-userspace"])?;
    cargo::cargo(root, &["build", "--release", "-p", "lb-tests", "--bins"])
}
