//! `lb`: the load balancer daemon (`lb run`), the backend-side decapsulator (`lb decap`) and the
//! operator's view of the pinned maps (`lb status`). Parsing and dispatch only: see `cli`.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli.init_logging();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
