//! `lb`: the load balancer daemon (`lb run`), the backend-side decapsulator (`lb decap`) and the
//! operator's view of the pinned maps (`lb status`). Parsing and dispatch only: see `cli`.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli.init_logging();
    let fatal = cli.fatal();
    cli.run().unwrap_or_else(|e| {
        fatal.report(&e);
        ExitCode::FAILURE
    })
}
