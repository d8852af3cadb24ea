//! `lb config check` and `lb version`.

use std::path::PathBuf;
use std::process::ExitCode;

use lb_userspace::check;

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
}

pub fn run(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    let ConfigCommand::Check(args) = command;
    let (report, what) = match (&args.file, args.zk.given()) {
        (Some(file), _) => (check::file(file), file.display().to_string()),
        (None, Some(zk)) => {
            let target = zk.target()?;
            let what = format!("{}{}", zk.zk, target.schema.services_dir());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(check::zookeeper(&target, zk.session_timeout()))?;
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
