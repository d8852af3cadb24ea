//! Commands that talk to the local daemon through its control socket: the options that find it,
//! and `lb stats zero`.

use std::path::PathBuf;

use lb_userspace::control::{self, Request, Response};

/// Which local daemon to ask.
#[derive(clap::Args, Clone, Debug)]
pub struct LocalArgs {
    /// The daemon's pin directory (it names the control socket).
    #[arg(long, default_value = lb_common::maps::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// The daemon's control socket [default: /run/lb/<pin dir with / as _>.sock].
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
}

impl LocalArgs {
    /// Sends `request` to the daemon; its refusal is this command's error.
    pub fn call(&self, request: &Request) -> anyhow::Result<String> {
        let socket = self
            .control_socket
            .clone()
            .unwrap_or_else(|| control::default_socket_path(&self.pin_dir));
        match control::call(&socket, request)? {
            Response::Done { message } => Ok(message),
            Response::Refused { reason } => Err(anyhow::anyhow!("refused: {reason}")),
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum StatsCommand {
    /// Zero the traffic counters of the running daemon (like `ipvsadm -Z`); flows stay.
    Zero(LocalArgs),
}

pub fn run_stats(command: StatsCommand) -> anyhow::Result<()> {
    match command {
        StatsCommand::Zero(local) => {
            println!("{}", local.call(&Request::StatsZero)?);
            Ok(())
        }
    }
}
