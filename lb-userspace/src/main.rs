//! `lb`: the load balancer daemon (`lb run`), the backend-side decapsulator (`lb decap`) and the
//! operator's view of the pinned maps (`lb status`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::daemon::{self, RunOptions};
use lb_userspace::dataplane::AttachMode;
use lb_userspace::{decap, status};

#[derive(Parser, Debug)]
#[command(
    name = "lb",
    version,
    about = "XDP layer-4 load balancer (DSR, IPIP / ip6ip6)"
)]
struct Cli {
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
    Run(RunArgs),
    /// Backend side: strip IPIP / ip6ip6 from packets addressed to this host (for kernels without ipip).
    Decap(DecapArgs),
    /// Print services, backends, connections and counters from the pinned maps.
    Status(StatusArgs),
    /// Refresh the status table every second with per-second rates (like `ipvsadm -L --rate`).
    Top(TopArgs),
    /// Backend side: keep this backend registered in ZooKeeper while it runs (drains on SIGTERM).
    Register(lb_userspace::register::RegisterArgs),
    /// Services in ZooKeeper: put, rm, ls.
    #[command(subcommand)]
    Service(lb_userspace::admin::ServiceCommand),
    /// Backends in ZooKeeper: put, rm, weight, ls.
    #[command(subcommand)]
    Backend(lb_userspace::admin::BackendCommand),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Interface that receives VIP traffic (and sends encapsulated packets back out: one-arm).
    #[arg(long)]
    iface: String,
    /// Static configuration (TOML). Reloaded on SIGHUP and when the file changes. Or use --zk.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    zk: lb_userspace::zk::source::ZkRunArgs,
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpMode,
    /// Where the maps are pinned (on bpffs).
    #[arg(long, default_value = lb_common::maps::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    #[arg(long, default_value_t = lb_common::limits::DEFAULT_MAX_SERVICES)]
    max_services: u32,
    #[arg(long, default_value_t = lb_common::limits::DEFAULT_MAX_BACKENDS)]
    max_backends: u32,
    /// Entries of each service's table (Maglev M; a prime).
    #[arg(long, default_value_t = lb_common::limits::DEFAULT_TABLE_SIZE)]
    table_size: u32,
    #[arg(long, default_value_t = lb_common::limits::DEFAULT_FLOW_TABLE_SIZE)]
    flow_table_size: u32,
    #[arg(long, default_value_t = lb_common::limits::DEFAULT_PERSIST_TABLE_SIZE)]
    persist_table_size: u32,
    /// Outer source address of IPIP packets (default: the interface's first IPv4 address).
    #[arg(long)]
    src_v4: Option<std::net::Ipv4Addr>,
    /// Outer source address of ip6ip6 packets (default: the interface's first global IPv6 address).
    #[arg(long)]
    src_v6: Option<std::net::Ipv6Addr>,
    /// Seed of the flow hash; every LB of a fleet must use the same one.
    #[arg(long, default_value_t = 0x4c42_5345)]
    hash_seed: u32,
    /// Forward the XDP program's debug log into this log (costs ~100 ns per packet).
    #[arg(long)]
    kernel_log: bool,
    /// Idle timeout of established flows (seconds).
    #[arg(long, default_value_t = 900)]
    idle_timeout_s: u64,
    /// Idle timeout of flows that never got past the SYN (seconds).
    #[arg(long, default_value_t = 30)]
    half_open_timeout_s: u64,
    /// How long a closed flow (client FIN/RST seen) is kept for its last packets (seconds).
    #[arg(long, default_value_t = 10)]
    closed_timeout_s: u64,
    /// How often idle flows are expired and connection counters reconciled (seconds).
    #[arg(long, default_value_t = 5)]
    sweep_interval_s: u64,
    /// Serve Prometheus metrics on ADDR (`/metrics`), or `off`. Loopback by default.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR|off")]
    metrics: String,
}

/// `--metrics`: an address, or `off`.
fn metrics_addr(arg: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if arg == "off" {
        return Ok(None);
    }
    arg.parse().map(Some).map_err(|_| {
        anyhow::anyhow!("--metrics {arg:?} is neither IP:PORT (e.g. 127.0.0.1:9464) nor `off`")
    })
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

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(a) => (|| {
            let source = daemon::choose_source(a.config, a.zk.source_config()?)?;
            let capacity = lb_common::limits::Capacity {
                max_services: a.max_services,
                max_backends: a.max_backends,
                table_size: a.table_size,
                flow_table_size: a.flow_table_size,
                persist_table_size: a.persist_table_size,
            };
            daemon::run(RunOptions {
                iface: a.iface,
                source,
                attach_mode: a.xdp_mode.into(),
                pin_dir: a.pin_dir,
                capacity,
                src_v4: a.src_v4,
                src_v6: a.src_v6,
                hash_seed: a.hash_seed,
                kernel_log: a.kernel_log,
                timeouts: lb_userspace::sweeper::FlowTimeouts {
                    established: std::time::Duration::from_secs(a.idle_timeout_s),
                    half_open: std::time::Duration::from_secs(a.half_open_timeout_s),
                    closed: std::time::Duration::from_secs(a.closed_timeout_s),
                },
                sweep_interval: std::time::Duration::from_secs(a.sweep_interval_s.max(1)),
                metrics: metrics_addr(&a.metrics)?,
            })
        })(),
        Command::Decap(a) => decap::run(&a.iface, a.xdp_mode.into(), &a.pin_dir),
        Command::Status(a) => status::run(&a.pin_dir, a.json),
        Command::Top(a) => lb_userspace::top::run(
            &a.pin_dir,
            std::time::Duration::from_millis(a.interval_ms),
            a.count,
        ),
        Command::Register(a) => lb_userspace::register::run(&a),
        Command::Service(c) => lb_userspace::admin::run_service(c),
        Command::Backend(c) => lb_userspace::admin::run_backend(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
