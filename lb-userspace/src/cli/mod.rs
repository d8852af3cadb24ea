//! The command line: clap argument types, turned into the plain options the domain modules take
//! (`lb_userspace` itself does not depend on clap).

mod admin;
mod register;
mod run;
mod zk;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::dataplane::AttachMode;
use lb_userspace::{daemon, decap, detach, status, top};

#[derive(Parser, Debug)]
#[command(
    name = "lb",
    version,
    about = "XDP layer-4 load balancer (DSR, IPIP / ip6ip6)"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        default_value = "plain",
        global = true,
        env = "LB_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpMode {
    /// Native (driver) mode, falling back to generic mode with a warning when the driver refuses.
    Auto,
    Native,
    Generic,
}

impl From<XdpMode> for AttachMode {
    fn from(m: XdpMode) -> Self {
        match m {
            XdpMode::Auto => AttachMode::Auto,
            XdpMode::Native => AttachMode::Native,
            XdpMode::Generic => AttachMode::Generic,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the balancer on an interface, with a static TOML configuration or following ZooKeeper.
    Run(run::RunArgs),
    /// Backend side: strip IPIP / ip6ip6 from packets addressed to this host (for kernels without ipip).
    Decap(DecapArgs),
    /// Remove the balancer from an interface, and everything `lb run` created for its pin directory.
    Detach(DetachArgs),
    /// Print services, backends, connections and counters from the pinned maps.
    Status(StatusArgs),
    /// Refresh the status table every second with per-second rates (like `ipvsadm -L --rate`).
    Top(TopArgs),
    /// Backend side: keep this backend registered in ZooKeeper while it runs (drains on SIGTERM).
    Register(register::RegisterArgs),
    /// Services in ZooKeeper: put, rm, ls.
    #[command(subcommand)]
    Service(admin::ServiceCommand),
    /// Backends in ZooKeeper: put, rm, weight, ls.
    #[command(subcommand)]
    Backend(admin::BackendCommand),
}

#[derive(clap::Args, Debug)]
struct DecapArgs {
    #[arg(long)]
    iface: String,
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpMode,
    /// Where the decap maps are pinned (so `lb status --decap` can read them).
    #[arg(long, default_value = "/sys/fs/bpf/lb-decap")]
    pin_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct DetachArgs {
    /// The interface `lb run --iface` attached to.
    #[arg(long)]
    iface: String,
    #[arg(long, default_value = lb_common::maps::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    #[arg(long, default_value = lb_common::maps::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct TopArgs {
    #[arg(long, default_value = lb_common::maps::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Time between frames (milliseconds).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
    interval_ms: u64,
    /// Stop after this many frames (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

impl Cli {
    /// Sets up logging on stderr in the chosen format.
    pub fn init_logging(&self) {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Plain => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }

    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(a) => daemon::run(a.options()?),
            Command::Decap(a) => decap::run(&a.iface, a.xdp_mode.into(), &a.pin_dir),
            Command::Detach(a) => detach::run(&a.iface, &a.pin_dir),
            Command::Status(a) => status::run(&a.pin_dir, a.json),
            Command::Top(a) => top::run(&a.pin_dir, Duration::from_millis(a.interval_ms), a.count),
            Command::Register(a) => lb_userspace::register::run(a.registration()?),
            Command::Service(c) => admin::run_service(c),
            Command::Backend(c) => admin::run_backend(c),
        }
    }
}
