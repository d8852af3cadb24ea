//! The command line: clap argument types, turned into the plain options the domain modules take
//! (`lb_userspace` itself does not depend on clap).

mod admin;
mod config;
mod generate;
mod local;
mod register;
mod run;
mod zk;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Subcommand, ValueEnum};
use lb_userspace::dataplane::AttachMode;
use lb_userspace::{daemon, decap, detach, status, top};

#[derive(clap::Parser, Debug)]
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

/// Reports the error that ends the program in the chosen log format.
#[derive(Clone, Copy, Debug)]
pub struct Fatal(LogFormat);

impl Fatal {
    pub fn report(self, error: &anyhow::Error) {
        match self.0 {
            LogFormat::Plain => eprintln!("lb: error: {error:#}"),
            LogFormat::Json => tracing::error!(error = %format!("{error:#}"), "lb: fatal error"),
        }
    }
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
    Run(Box<run::RunArgs>),
    /// Backend side: strip IPIP / ip6ip6 from packets addressed to this host and sent from an
    /// --allow-src prefix (for kernels without ipip); --status prints its counters.
    Decap(DecapArgs),
    /// Remove the balancer from an interface, and everything `lb run` created for its pin directory.
    Detach(DetachArgs),
    /// Print services, backends, connections and counters from the pinned maps.
    Status(StatusArgs),
    /// List the flow table: client, VIP, service, backend, state, idle time (like `ipvsadm -L -c`).
    Flows(FlowsArgs),
    /// Refresh the status table every second with per-second rates (like `ipvsadm -L --rate`).
    Top(TopArgs),
    /// Backend side: keep this backend registered in ZooKeeper while it runs (drains on SIGTERM).
    Register(register::RegisterArgs),
    /// Services in ZooKeeper: put, rm, ls.
    #[command(subcommand)]
    Service(admin::ServiceCommand),
    /// Backends in ZooKeeper (put, rm, weight, drain, ls), or of the local daemon's file (weight, drain).
    #[command(subcommand)]
    Backend(admin::BackendCommand),
    /// The local daemon's counters: zero.
    #[command(subcommand)]
    Stats(local::StatsCommand),
    /// Configuration: check a file or the ZooKeeper tree without running anything.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print the release, the git commit and the data-plane layout version.
    Version,
    /// Write the man pages and shell completions (packaging: `cargo xtask dist`).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("report").args(["check", "status"]))]
struct DecapArgs {
    #[arg(long, required_unless_present = "status")]
    iface: Option<String>,
    /// Decapsulate only tunnel packets whose outer source is in this prefix (repeat; IPv4 and IPv6:
    /// the load balancers' addresses, e.g. 198.18.3.0/24); the others are dropped and counted
    /// (`drop_src_not_allowed`). Required unless --allow-any-src.
    #[arg(long = "allow-src", value_name = "PREFIX")]
    allow_src: Vec<decap::SrcPrefix>,
    /// Decapsulate tunnel packets from every source: only where the network already drops IPIP /
    /// ip6ip6 from elsewhere (anyone who can reach this host could inject packets "from" a client).
    #[arg(long, conflicts_with = "allow_src")]
    allow_any_src: bool,
    /// Print the counters and accepted sources of the `lb decap` running with this --pin-dir.
    #[arg(long, conflicts_with = "check")]
    status: bool,
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpMode,
    /// Where the decap maps are pinned (so `lb decap --status` can read them).
    #[arg(long, default_value = "/sys/fs/bpf/lb-decap")]
    pin_dir: PathBuf,
    /// Check, read-only, that this host is set up as a backend (VIPs on lo, ARP, rp_filter, MSS,
    /// decapsulation) and say what to change; exit status 1 unless every check is ok.
    #[arg(long)]
    check: bool,
    /// With --check: a VIP this backend serves (repeat; default: the non-loopback addresses on lo).
    #[arg(long = "vip", value_name = "IP", requires = "check")]
    vips: Vec<std::net::IpAddr>,
    /// With --check: the largest packets clients send (bounds their segments whatever MSS is offered).
    #[arg(long, default_value_t = 1500, requires = "check")]
    client_mtu: u32,
    /// With --check or --status: print the report as JSON.
    #[arg(long, requires = "report")]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct DetachArgs {
    /// The interface `lb run --iface` attached to.
    #[arg(long)]
    iface: String,
    #[arg(long, default_value = lb_common::maps::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Also remove the state file (the last good state). Kept by default: a later `lb run` whose
    /// source is unreachable still starts from it.
    #[arg(long)]
    purge_state: bool,
    /// The state file `lb run --state-file` was given [default: the one of --pin-dir].
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// After withdrawing VIPs a stopped run left announced to BIRD (`kill -9`, a crash), forward
    /// on this long while the routers move their traffic, then detach.
    #[arg(long, default_value_t = lb_userspace::announce::DEFAULT_WITHDRAW_GRACE.as_secs(), value_name = "SECONDS")]
    withdraw_grace_s: u64,
    /// Leave BIRD alone: detach even if the last run's VIPs may still be announced.
    #[arg(long)]
    no_withdraw: bool,
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
struct FlowsArgs {
    #[arg(long, default_value = lb_common::maps::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Only the flows of this service.
    #[arg(long)]
    service: Option<String>,
    /// Only the flows to this backend (IP:PORT).
    #[arg(long)]
    backend: Option<std::net::SocketAddr>,
    /// Machine-readable output (an array of flows).
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
    /// Parses the command line; `--version` prints what `lb version` prints.
    pub fn parse() -> Cli {
        // Once per process: clap keeps the version text for the program's lifetime.
        let version: &'static str = Box::leak(config::version().into_boxed_str());
        let matches = Cli::command().version(version).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// How to report an error that ends the program (JSON logs stay JSON).
    pub fn fatal(&self) -> Fatal {
        Fatal(self.log_format)
    }

    /// Sets up logging on stderr in the chosen format.
    pub fn init_logging(&self) {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colour codes only for a terminal: a journal or a log file gets plain text.
            .with_ansi(std::io::stderr().is_terminal());
        match self.log_format {
            LogFormat::Plain => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }

    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
        match self.command {
            Command::Run(a) => done(daemon::run(a.options()?)),
            Command::Decap(a) if a.status => done(decap::status(&a.pin_dir, a.json)),
            Command::Decap(a) if a.check => {
                let opts = decap::check::CheckOptions {
                    iface: a.iface.context("lb decap --check needs --iface")?,
                    vips: a.vips,
                    client_mtu: a.client_mtu,
                    pin_dir: a.pin_dir,
                };
                let ok = decap::check::run(&opts, a.json)?;
                Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Command::Decap(a) => {
                let iface = a.iface.context("lb decap needs --iface")?;
                let sources = decap::SrcPolicy::from_flags(a.allow_src, a.allow_any_src)?;
                done(decap::run(&iface, a.xdp_mode.into(), &a.pin_dir, &sources))
            }
            Command::Detach(a) => {
                let purge = a.purge_state.then(|| {
                    (a.state_file.clone())
                        .unwrap_or_else(|| lb_userspace::state_file::default_path(&a.pin_dir))
                });
                let withdraw = (!a.no_withdraw).then(|| Duration::from_secs(a.withdraw_grace_s));
                done(detach::run(
                    &a.iface,
                    &a.pin_dir,
                    purge.as_deref(),
                    withdraw,
                ))
            }
            Command::Status(a) => done(status::run(&a.pin_dir, a.json)),
            Command::Flows(a) => done(lb_userspace::flows::run(
                &a.pin_dir,
                &lb_userspace::flows::FlowFilter {
                    service: a.service,
                    backend: a.backend,
                },
                a.json,
            )),
            Command::Top(a) => done(top::run(
                &a.pin_dir,
                Duration::from_millis(a.interval_ms),
                a.count,
            )),
            Command::Register(a) => done(lb_userspace::register::run(a.registration()?)),
            Command::Service(c) => done(admin::run_service(c)),
            Command::Backend(c) => done(admin::run_backend(c)),
            Command::Stats(c) => done(local::run_stats(c)),
            Command::Config(c) => config::run(c),
            Command::Generate(a) => done(generate::run(&a)),
            Command::Version => {
                println!("{}", config::version_text());
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
