//! `lb config check` and `lb version`.

use std::path::PathBuf;
use std::process::ExitCode;

use lb_userspace::check;

use super::run::{ZkFormat, registry_args};
use super::zk::OptionalZkArgs;

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a configuration file, or the tree in ZooKeeper, as `lb run` would; print every error.
    /// Exit status 0: valid; 1: errors. Needs no root and no interface.
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["file", "zk"])))]
pub struct CheckArgs {
    /// The TOML file `lb run --config` would read.
    file: Option<PathBuf>,
    #[command(flatten)]
    zk: OptionalZkArgs,
    /// The tree under --zk-root, as `lb run --zk-format` reads it: ours (`native`), Apache
    /// Curator's service discovery (`curator`) or Finagle serversets (`serverset`).
    #[arg(long, value_enum, default_value = "native", requires = "zk")]
    zk_format: ZkFormat,
    /// The service mapping for --zk-format curator|serverset (checked first: every error of it).
    #[arg(long, requires = "zk")]
    zk_services: Option<PathBuf>,
}

pub fn run(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    let ConfigCommand::Check(args) = command;
    let (report, what) = match (&args.file, args.zk.given()) {
        (Some(file), _) => (check::file(file), file.display().to_string()),
        (None, Some(zk)) => {
            let registry = registry_args(args.zk_format, args.zk_services.as_deref())?;
            let target = zk.target()?;
            let what = match &registry {
                None => format!("{}{}", zk.zk, target.schema.services_dir()),
                Some(r) => format!("{}{} ({})", zk.zk, target.schema.root(), r.format().name()),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(check::zookeeper(
                &target,
                zk.session_timeout(),
                registry.as_ref(),
            ))?;
            (report, what)
        }
        (None, None) => anyhow::bail!("give a FILE or --zk HOSTS"),
    };
    print!("{}", report.render(&what));
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `lb version`: the release, the git commit it was built from, and the data-plane layout version
/// (pins of another layout are refused at start-up).
pub fn version_text() -> String {
    format!("lb {}", version())
}

/// The version as `--version` shows it after the program's name.
pub fn version() -> String {
    format!(
        "{} (commit {}, data-plane layout {})",
        env!("CARGO_PKG_VERSION"),
        env!("LB_GIT_COMMIT"),
        lb_common::layout::LAYOUT_VERSION
    )
}
