//! `lb run` options, turned into the daemon's plain [`RunOptions`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use lb_userspace::announce::AnnounceOptions;
use lb_userspace::config::check_mapping_file;
use lb_userspace::daemon::RunOptions;
use lb_userspace::source::SourceSpec;
use lb_userspace::sweeper::FlowTimeouts;
use lb_userspace::zk::auth::DigestAuth;
use lb_userspace::zk::client::ZkTarget;
use lb_userspace::zk::guard::{DEFAULT_GRACE, DEFAULT_MAX_REMOVAL_SHARE, GuardConfig};
use lb_userspace::zk::registry::{Registry, RegistryFormat, RegistryService};
use lb_userspace::zk::schema::DEFAULT_ROOT;
use lb_userspace::zk::source::ZkSourceConfig;

use super::XdpMode;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Interface that receives VIP traffic (and sends encapsulated packets back out: one-arm).
    #[arg(long)]
    iface: String,
    /// Static configuration (TOML). Reloaded on SIGHUP and when the file changes. Or use --zk.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    zk: ZkRunArgs,
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
    /// Idle timeout of half-open flows (a SYN seen, not the client's first ACK): a SYN flood's
    /// residue, so short (seconds).
    #[arg(long, default_value_t = 5)]
    half_open_timeout_s: u64,
    /// New flows per second per CPU above which a SYN creates no flow or persistence entry and is
    /// forwarded by the service's consistent hash (the new-flow guard, as Katran bypasses its LRU
    /// above ~125k/s per core). 0 turns the guard off.
    #[arg(long, default_value_t = lb_common::limits::DEFAULT_MAX_NEW_FLOWS_PER_CPU)]
    max_new_flows_per_cpu: u32,
    /// How long a closed flow (client FIN/RST seen) is kept for its last packets (seconds).
    #[arg(long, default_value_t = 10)]
    closed_timeout_s: u64,
    /// How often idle flows are expired and connection counters reconciled (seconds).
    #[arg(long, default_value_t = 5)]
    sweep_interval_s: u64,
    /// Serve Prometheus metrics on ADDR (`/metrics`), or `off`. Loopback by default.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR|off")]
    metrics: String,
    /// On SIGINT/SIGTERM remove the program and everything this run created (like `lb detach`).
    /// Without it the program keeps forwarding after the daemon ends.
    #[arg(long)]
    detach_on_exit: bool,
    /// Where the last good state is kept, for a restart while the source is unreachable or the
    /// configuration file broken [default: /var/lib/lb/<pin dir with / as _>.state.json].
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// The root-only control socket for `lb backend weight|drain` and `lb stats zero`, or `off`
    /// [default: /run/lb/<pin dir with / as _>.sock].
    #[arg(long, value_name = "PATH|off")]
    control_socket: Option<PathBuf>,
    /// Announce the VIPs with BIRD: write them to this include file (static protocols lb_vips4
    /// and lb_vips6) and reload BIRD when they change. Without it nothing is announced.
    #[arg(long, value_name = "FILE")]
    announce_bird_include: Option<PathBuf>,
    /// BIRD's control socket (with --announce-bird-include).
    #[arg(long, default_value = lb_userspace::announce::DEFAULT_BIRD_SOCKET, value_name = "PATH")]
    birdc_socket: PathBuf,
    /// On SIGINT/SIGTERM, how long to keep forwarding after the VIPs are withdrawn, so the routers
    /// move the traffic first (seconds; with --announce-bird-include).
    #[arg(long, default_value_t = lb_userspace::announce::DEFAULT_WITHDRAW_GRACE.as_secs())]
    withdraw_grace_s: u64,
}

/// The ZooKeeper options of `lb run` (`--zk` is optional there: `--config` is the other source).
#[derive(clap::Args, Clone, Debug)]
pub struct ZkRunArgs {
    /// Follow this ZooKeeper ensemble, HOST:PORT[,HOST:PORT...][/chroot] (instead of --config).
    #[arg(long)]
    pub zk: Option<String>,
    /// Root of the balancer's nodes in ZooKeeper.
    #[arg(long, default_value = DEFAULT_ROOT)]
    pub zk_root: String,
    /// File holding `user:password` for ZooKeeper digest auth (default: $LB_ZK_AUTH if set). The
    /// daemon only reads, so read access is enough.
    #[arg(long)]
    pub zk_auth_file: Option<PathBuf>,
    /// ZooKeeper session timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub zk_session_timeout_ms: u64,
    /// Debounce: a full read happens once no change came for this long (ms)...
    #[arg(long, default_value_t = 100)]
    pub zk_debounce_ms: u64,
    /// ...or this long after the first change of a burst (ms), whichever comes first.
    #[arg(long, default_value_t = 1000)]
    pub zk_debounce_max_ms: u64,
    /// Mass-removal guard: the share (0 to 1) of a service's backends one update may remove
    /// without the removal being held.
    #[arg(long, default_value_t = DEFAULT_MAX_REMOVAL_SHARE)]
    pub zk_guard_share: f64,
    /// Mass-removal guard: how long backends that vanished in a mass removal keep forwarding (s).
    #[arg(long, default_value_t = DEFAULT_GRACE.as_secs())]
    pub zk_guard_grace_s: u64,
    /// The tree under --zk-root: ours (`native`), Apache Curator's service discovery (`curator`)
    /// or Finagle serversets (`serverset`); the last two need --zk-services.
    #[arg(long, value_enum, default_value = "native")]
    pub zk_format: ZkFormat,
    /// The service mapping (TOML: name, vip, scheduler, health check, registry_name, endpoint per
    /// service) for --zk-format curator|serverset: the registry gives only the backends.
    #[arg(long)]
    pub zk_services: Option<PathBuf>,
}

/// `--zk-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZkFormat {
    Native,
    Curator,
    Serverset,
}

impl ZkFormat {
    fn registry(self) -> Option<RegistryFormat> {
        match self {
            ZkFormat::Native => None,
            ZkFormat::Curator => Some(RegistryFormat::Curator),
            ZkFormat::Serverset => Some(RegistryFormat::Serverset),
        }
    }
}

/// Reads `--zk-services` for `format` (every error of the file at once).
pub fn load_registry(format: RegistryFormat, path: &Path) -> anyhow::Result<Registry> {
    let mapped = check_mapping_file(path).map_err(|errors| {
        anyhow::anyhow!(
            "the service mapping {} is invalid:\n{errors}",
            path.display()
        )
    })?;
    let services = mapped
        .into_iter()
        .map(|m| RegistryService {
            spec: m.spec,
            registry_name: m.registry_name,
            endpoint: m.endpoint,
        })
        .collect();
    Registry::new(format, services).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `--zk-format` and `--zk-services` together: the registry, `None` for our own schema.
pub fn registry_args(
    format: ZkFormat,
    services: Option<&Path>,
) -> anyhow::Result<Option<Registry>> {
    match (format.registry(), services) {
        (None, None) => Ok(None),
        (None, Some(path)) => bail!(
            "--zk-services {} is for --zk-format curator or serverset: with our own schema the \
             services are ZooKeeper nodes; drop --zk-services or give --zk-format",
            path.display()
        ),
        (Some(format), None) => bail!(
            "--zk-format {} needs --zk-services FILE: the registry holds only instances, so the \
             services (VIP, scheduler, health check) come from that TOML mapping",
            format.name()
        ),
        (Some(format), Some(path)) => load_registry(format, path).map(Some),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("--zk-guard-share {0} is outside 0..=1; give the share of backends, e.g. 0.5 for half")]
pub struct GuardShareError(f64);

impl ZkRunArgs {
    /// The source configuration, or `None` without `--zk`.
    pub fn source_config(&self) -> anyhow::Result<Option<ZkSourceConfig>> {
        let Some(connect) = &self.zk else {
            if self.zk_format != ZkFormat::Native || self.zk_services.is_some() {
                bail!(
                    "--zk-format and --zk-services describe a ZooKeeper tree; give --zk HOSTS too"
                );
            }
            return Ok(None);
        };
        if !(0.0..=1.0).contains(&self.zk_guard_share) {
            return Err(GuardShareError(self.zk_guard_share).into());
        }
        let auth = DigestAuth::load(self.zk_auth_file.as_deref())?;
        let mut config = ZkSourceConfig::new(ZkTarget::new(connect, &self.zk_root, auth)?);
        config.session_timeout = Duration::from_millis(self.zk_session_timeout_ms);
        config.debounce_quiet = Duration::from_millis(self.zk_debounce_ms);
        config.debounce_max =
            Duration::from_millis(self.zk_debounce_max_ms.max(self.zk_debounce_ms));
        config.guard = GuardConfig {
            max_removal_share: self.zk_guard_share,
            grace: Duration::from_secs(self.zk_guard_grace_s),
        };
        config.registry = registry_args(self.zk_format, self.zk_services.as_deref())?.map(Arc::new);
        Ok(Some(config))
    }
}

/// Picks the source from `--config` and `--zk`, refusing both or neither.
fn choose_source(
    config: Option<PathBuf>,
    zk: Option<ZkSourceConfig>,
) -> anyhow::Result<SourceSpec> {
    match (config, zk) {
        (Some(file), None) => Ok(SourceSpec::File(file)),
        (None, Some(zk)) => Ok(SourceSpec::ZooKeeper(zk)),
        (Some(file), Some(zk)) => bail!(
            "both --config {} and --zk {} were given: the services come either from a static TOML file \
             or from ZooKeeper, so give only one",
            file.display(),
            zk.target.connect
        ),
        (None, None) => bail!(
            "no configuration source: give --config FILE (a static TOML file) or \
             --zk HOST:PORT[,HOST:PORT...][/chroot] (follow ZooKeeper)"
        ),
    }
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

impl RunArgs {
    pub fn options(self) -> anyhow::Result<RunOptions> {
        let source = choose_source(self.config, self.zk.source_config()?)?;
        Ok(RunOptions {
            iface: self.iface,
            source,
            attach_mode: self.xdp_mode.into(),
            pin_dir: self.pin_dir.clone(),
            capacity: lb_common::limits::Capacity {
                max_services: self.max_services,
                max_backends: self.max_backends,
                table_size: self.table_size,
                flow_table_size: self.flow_table_size,
                persist_table_size: self.persist_table_size,
            },
            src_v4: self.src_v4,
            src_v6: self.src_v6,
            hash_seed: self.hash_seed,
            max_new_flows_per_cpu: self.max_new_flows_per_cpu,
            kernel_log: self.kernel_log,
            timeouts: FlowTimeouts {
                established: Duration::from_secs(self.idle_timeout_s),
                half_open: Duration::from_secs(self.half_open_timeout_s),
                closed: Duration::from_secs(self.closed_timeout_s),
            },
            sweep_interval: Duration::from_secs(self.sweep_interval_s.max(1)),
            metrics: metrics_addr(&self.metrics)?,
            detach_on_exit: self.detach_on_exit,
            state_file: self
                .state_file
                .unwrap_or_else(|| lb_userspace::state_file::default_path(&self.pin_dir)),
            control_socket: match self.control_socket {
                Some(p) if p.as_os_str() == "off" => None,
                Some(p) => Some(p),
                None => Some(lb_userspace::control::default_socket_path(&self.pin_dir)),
            },
            announce: self.announce_bird_include.map(|include| AnnounceOptions {
                include,
                socket: self.birdc_socket,
                withdraw_grace: Duration::from_secs(self.withdraw_grace_s),
            }),
        })
    }
}
