//! `lb run`: load the data plane, apply the configuration, attach, then follow the configuration
//! source (the TOML file: SIGHUP and file changes; or ZooKeeper), sweep idle flows, and detach
//! cleanly on SIGINT/SIGTERM.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use lb_common::LbConfig;
use lb_common::limits::Capacity;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::apply::Applier;
use crate::config;
use crate::daemon_status::{self, DaemonStatus};
use crate::dataplane::{AttachMode, Dataplane, LoadOptions};
use crate::health::HealthChecker;
use crate::metrics::{self, DaemonMetrics};
use crate::model::DesiredState;
use crate::netif;
use crate::nexthop::NextHopKeeper;
use crate::sweeper::{self, FlowTimeouts};
use crate::zk::source::{ZkSource, ZkSourceConfig};

/// How often the configuration file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);
/// A backend that left the configuration keeps its id at least this long after its last flow.
const RETIRED_GRACE: Duration = Duration::from_secs(10);
/// How often next hops are re-resolved (routes may change under us).
const NEXTHOP_REFRESH: Duration = Duration::from_secs(30);
/// How often the status file for `lb status` is rewritten (it is also written after each apply).
const STATUS_WRITE: Duration = Duration::from_secs(5);
/// How long start-up waits for ZooKeeper's first state before attaching with none (it is applied
/// whenever it arrives).
const FIRST_ZK_STATE_WAIT: Duration = Duration::from_secs(15);

/// Where desired states come from: exactly one of `--config` and `--zk`.
pub enum SourceSpec {
    File(PathBuf),
    ZooKeeper(ZkSourceConfig),
}

/// Picks the source from `--config` and `--zk`, refusing both or neither.
pub fn choose_source(
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

pub struct RunOptions {
    pub iface: String,
    pub source: SourceSpec,
    pub attach_mode: AttachMode,
    pub pin_dir: PathBuf,
    pub capacity: Capacity,
    pub src_v4: Option<Ipv4Addr>,
    pub src_v6: Option<Ipv6Addr>,
    pub hash_seed: u32,
    pub kernel_log: bool,
    pub timeouts: FlowTimeouts,
    pub sweep_interval: Duration,
    /// Where `/metrics` is served; `None`: not at all.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Checks we run as root (loading XDP programs needs CAP_BPF + CAP_NET_ADMIN; we do not try to be clever).
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} must run as root (it loads XDP programs and pins maps); try `sudo`");
    }
    Ok(())
}

/// A fingerprint of the configuration file, to notice edits (including atomic rename-over).
fn fingerprint(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    require_root("lb run")?;
    opts.capacity
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid capacity: {e}"))?;
    netif::ifindex(&opts.iface)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signals = Signals::install(&runtime)?;
    let mut source = Source::open(&opts.source, &runtime);
    let outer = outer_sources(&opts)?;
    let desired: DesiredState = match &mut source {
        Source::File { path, .. } => {
            let desired = config::load_config_file(path)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("the configuration is invalid; nothing was loaded")?;
            check_families(&desired, &outer)?;
            desired
        }
        Source::Zk(zk) => {
            let first = runtime.block_on(first_zk_state(zk));
            forwardable(first.as_deref().cloned().unwrap_or_default(), &outer)
        }
    };

    let mut dp = Dataplane::load(&LoadOptions {
        capacity: opts.capacity,
        pin_dir: Some(opts.pin_dir.clone()),
        kernel_log: opts.kernel_log,
    })?;
    // From here on the maps are pinned: every way out, error or not, unpins them.
    let result = serve(
        &opts,
        &runtime,
        &mut dp,
        &mut source,
        signals,
        &desired,
        &outer,
    );
    let _ = std::fs::remove_file(daemon_status::status_file_path(&opts.pin_dir));
    drop(source);
    dp.remove_pins();
    drop(dp);
    info!("detached and unpinned; bye");
    result
}

/// Applies the first state, attaches, then follows the source until SIGINT/SIGTERM.
fn serve(
    opts: &RunOptions,
    runtime: &tokio::runtime::Runtime,
    dp: &mut Dataplane,
    source: &mut Source,
    signals: Signals,
    desired: &DesiredState,
    outer: &LbConfig,
) -> anyhow::Result<()> {
    let mut applied = AppliedTimes::default();
    dp.set_config(outer)?;
    let apply_started = Instant::now();
    let mut applier = Applier::new(opts.capacity, opts.hash_seed);
    let report = applier
        .apply(dp, desired)
        .context("applying the configuration")?;
    info!(
        services = desired.services.len(),
        generation = report.generation,
        "configuration applied"
    );
    applied.synced(true);
    applied.last_apply = Some(apply_started.elapsed());
    let mut nexthops = NextHopKeeper::default();
    nexthops.refresh(applier.backend_addrs().iter().map(|a| a.ip()));

    let mode = dp.attach_balancer(&opts.iface, opts.attach_mode)?;
    info!(iface = %opts.iface, mode = ?mode, pin_dir = %opts.pin_dir.display(), "forwarding");

    let mut ctx = Ctx {
        opts,
        dp,
        applier: &mut applier,
        nexthops: &mut nexthops,
        outer,
        applied,
        desired: desired.clone(),
        checker: None,
        metrics: watch::channel(DaemonMetrics::default()).0,
        flows: 0,
        swept_total: 0,
        evictions: 0,
    };
    let result = runtime.block_on(follow(&mut ctx, source, signals));
    nexthops.release();
    result
}

fn outer_sources(opts: &RunOptions) -> anyhow::Result<LbConfig> {
    let (dv4, dv6) = netif::default_sources(&opts.iface)?;
    let v4 = opts.src_v4.or(dv4);
    let v6 = opts.src_v6.or(dv6);
    let mut cfg = LbConfig {
        hash_seed: opts.hash_seed,
        ..Default::default()
    };
    if let Some(v4) = v4 {
        cfg.src_v4 = lb_common::addr::to_words(IpAddr::V4(v4)).0[0];
    }
    if let Some(v6) = v6 {
        cfg.src_v6 = lb_common::addr::to_words(IpAddr::V6(v6)).0;
    }
    info!(src_v4 = ?v4, src_v6 = ?v6, "outer source addresses");
    Ok(cfg)
}

/// IPv4 services need an IPv4 outer source, IPv6 services an IPv6 one.
fn check_families(desired: &DesiredState, outer: &LbConfig) -> anyhow::Result<()> {
    for s in desired.services.values() {
        if s.vip.is_ipv4() && outer.src_v4 == 0 {
            bail!(
                "service {} has an IPv4 VIP but the interface has no IPv4 address: pass --src-v4",
                s.name
            );
        }
        if s.vip.is_ipv6() && outer.src_v6 == [0; 4] {
            bail!(
                "service {} has an IPv6 VIP but the interface has no global IPv6 address: pass --src-v6",
                s.name
            );
        }
    }
    Ok(())
}

/// What the follow loop works on.
struct Ctx<'a> {
    opts: &'a RunOptions,
    dp: &'a mut Dataplane,
    applier: &'a mut Applier,
    nexthops: &'a mut NextHopKeeper,
    outer: &'a LbConfig,
    applied: AppliedTimes,
    /// The last state the source delivered (and this host can forward); health changes re-apply it.
    desired: DesiredState,
    /// The health checks (started inside the runtime by `follow`).
    checker: Option<HealthChecker>,
    /// What the metrics server shows besides the maps.
    metrics: watch::Sender<DaemonMetrics>,
    /// Flows in the table at the last sweep.
    flows: usize,
    /// Flows the sweeper deleted since start.
    swept_total: u64,
    /// Flows the LRU table evicted since start (inferred; see `sweeper::estimate_evictions`).
    evictions: u64,
}

/// When the source last delivered a state, and when the data plane last changed (for `lb status`).
#[derive(Clone, Copy, Debug, Default)]
struct AppliedTimes {
    last_sync: Option<SystemTime>,
    last_change: Option<SystemTime>,
    /// How long the last change to the data plane took.
    last_apply: Option<Duration>,
}

impl AppliedTimes {
    fn synced(&mut self, changed: bool) {
        let now = SystemTime::now();
        self.last_sync = Some(now);
        if changed {
            self.last_change = Some(now);
        }
    }
}

/// The configuration source being followed.
enum Source {
    File {
        path: PathBuf,
        poll: tokio::time::Interval,
        last_seen: Option<(SystemTime, u64, u64)>,
    },
    Zk(ZkSource),
}

impl Source {
    fn open(spec: &SourceSpec, runtime: &tokio::runtime::Runtime) -> Source {
        match spec {
            SourceSpec::File(path) => {
                let _enter = runtime.enter();
                Source::File {
                    path: path.clone(),
                    poll: tokio::time::interval(FILE_POLL),
                    last_seen: fingerprint(path),
                }
            }
            SourceSpec::ZooKeeper(config) => {
                let _enter = runtime.enter();
                info!(zk = %config.target.connect, root = %config.target.schema.root(), "following ZooKeeper");
                Source::Zk(ZkSource::spawn(config.clone()))
            }
        }
    }

    /// Waits for the next desired state. File errors are logged here (the last good configuration
    /// keeps forwarding) and waited past.
    async fn next(&mut self) -> DesiredState {
        match self {
            Source::File {
                path,
                poll,
                last_seen,
            } => loop {
                poll.tick().await;
                let now = fingerprint(path);
                if now != *last_seen {
                    *last_seen = now;
                    info!(file = %path.display(), "configuration file changed: reloading");
                    if let Some(desired) = load_file(path) {
                        return desired;
                    }
                }
            },
            Source::Zk(zk) => loop {
                if zk.states.changed().await.is_err() {
                    // The source task ended (it never does on its own): forward the last state.
                    error!(
                        "the ZooKeeper source stopped; forwarding continues with the last state"
                    );
                    std::future::pending::<()>().await;
                }
                let latest: Option<Arc<DesiredState>> = zk.states.borrow_and_update().clone();
                if let Some(state) = latest {
                    return (*state).clone();
                }
            },
        }
    }

    /// SIGHUP: re-read the file now, or ask ZooKeeper for a full resync.
    fn hangup(&mut self) -> Option<DesiredState> {
        match self {
            Source::File {
                path, last_seen, ..
            } => {
                info!(file = %path.display(), "SIGHUP: reloading");
                *last_seen = fingerprint(path);
                load_file(path)
            }
            Source::Zk(zk) => {
                info!("SIGHUP: full ZooKeeper resync");
                zk.resync();
                None
            }
        }
    }
}

/// Waits (bounded) for the first state from ZooKeeper, so a (re)started daemon attaches with it.
async fn first_zk_state(zk: &mut ZkSource) -> Option<Arc<DesiredState>> {
    let wait = async {
        loop {
            if let Some(state) = zk.states.borrow_and_update().clone() {
                return Some(state);
            }
            if zk.states.changed().await.is_err() {
                return None;
            }
        }
    };
    match tokio::time::timeout(FIRST_ZK_STATE_WAIT, wait).await {
        Ok(state) => state,
        Err(_) => {
            warn!(
                "no state from ZooKeeper within {FIRST_ZK_STATE_WAIT:?}; attaching with no services, \
                 they are applied as soon as ZooKeeper answers"
            );
            None
        }
    }
}

/// ZooKeeper states are validated per znode, so a service this host cannot tunnel (no outer address
/// of its family) is left out with an error instead of refusing the whole state.
fn forwardable(mut desired: DesiredState, outer: &LbConfig) -> DesiredState {
    desired.services.retain(|name, s| {
        let single = DesiredState {
            services: [(name.clone(), s.clone())].into(),
        };
        match check_families(&single, outer) {
            Ok(()) => true,
            Err(e) => {
                error!("service not applied: {e:#}");
                false
            }
        }
    });
    desired
}

/// The signals the daemon acts on, installed before anything is loaded or pinned: a signal that
/// arrives while the data plane is being set up waits for the follow loop instead of killing the
/// process with its maps pinned.
struct Signals {
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install(runtime: &tokio::runtime::Runtime) -> anyhow::Result<Signals> {
        let _guard = runtime.enter();
        Ok(Signals {
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }
}

async fn follow(ctx: &mut Ctx<'_>, source: &mut Source, signals: Signals) -> anyhow::Result<()> {
    let Signals {
        mut hup,
        mut int,
        mut term,
    } = signals;
    let mut sweep = tokio::time::interval(ctx.opts.sweep_interval);
    let mut status_tick = tokio::time::interval(STATUS_WRITE);
    let mut last_nexthop = Instant::now();
    let mut status_warned = false;
    let mut checker = HealthChecker::default();
    checker.sync(&ctx.desired);
    ctx.checker = Some(checker);
    let _metrics_server = match ctx.opts.metrics {
        Some(addr) => match metrics::bind(addr).await {
            Some(listener) => {
                info!(%addr, "serving metrics on /metrics");
                let server =
                    metrics::serve(listener, ctx.opts.pin_dir.clone(), ctx.metrics.subscribe());
                Some(AbortOnDrop(tokio::spawn(server)))
            }
            None => None,
        },
        None => None,
    };
    publish_metrics(ctx, source);
    loop {
        tokio::select! {
            changed = health_changed(&mut ctx.checker) => {
                if changed {
                    apply_health(ctx);
                    write_status(ctx, source, &mut status_warned);
                }
            }
            _ = hup.recv() => {
                if let Some(desired) = source.hangup() {
                    apply_desired(ctx, source, desired);
                    write_status(ctx, source, &mut status_warned);
                }
            }
            desired = source.next() => {
                apply_desired(ctx, source, desired);
                write_status(ctx, source, &mut status_warned);
            }
            _ = sweep.tick() => {
                if let Some(report) = sweep_once(ctx.opts, ctx.dp, ctx.applier) {
                    ctx.flows = report.flows;
                    ctx.swept_total += report.expired as u64;
                    let evictions = sweeper::estimate_evictions(report.inserted_total, ctx.swept_total, report.flows as u64);
                    if evictions > ctx.evictions {
                        warn!(evicted = evictions - ctx.evictions, flows = report.flows, "the flow table evicted flows to make room: raise --flow-table-size");
                    }
                    ctx.evictions = ctx.evictions.max(evictions);
                }
                publish_metrics(ctx, source);
                if last_nexthop.elapsed() >= NEXTHOP_REFRESH {
                    last_nexthop = Instant::now();
                    ctx.nexthops.refresh(ctx.applier.backend_addrs().iter().map(|a| a.ip()));
                }
            }
            _ = status_tick.tick() => write_status(ctx, source, &mut status_warned),
            _ = int.recv() => { info!("SIGINT: detaching"); return Ok(()); }
            _ = term.recv() => { info!("SIGTERM: detaching"); return Ok(()); }
        }
    }
}

/// Reads the file; an invalid file is rejected with its line and field (the last good
/// configuration keeps forwarding).
fn load_file(path: &Path) -> Option<DesiredState> {
    match config::load_config_file(path) {
        Ok(d) => Some(d),
        Err(e) => {
            error!("configuration rejected, the last good configuration keeps forwarding: {e}");
            None
        }
    }
}

fn apply_desired(ctx: &mut Ctx<'_>, source: &Source, desired: DesiredState) {
    let desired = match source {
        Source::File { .. } => {
            if let Err(e) = check_families(&desired, ctx.outer) {
                error!(
                    "configuration rejected, the last good configuration keeps forwarding: {e:#}"
                );
                return;
            }
            desired
        }
        Source::Zk(_) => forwardable(desired, ctx.outer),
    };
    if let Some(checker) = &mut ctx.checker {
        checker.sync(&desired);
    }
    ctx.desired = desired;
    let health = ctx
        .checker
        .as_ref()
        .map(|c| c.view().clone())
        .unwrap_or_default();
    let started = Instant::now();
    match ctx.applier.apply_with_health(ctx.dp, &ctx.desired, &health) {
        Ok(r) if r.is_empty() => {
            ctx.applied.synced(false);
            info!("configuration unchanged");
        }
        Ok(r) => {
            ctx.applied.synced(true);
            ctx.applied.last_apply = Some(started.elapsed());
            info!(generation = r.generation, added = ?r.added, changed = ?r.changed, removed = ?r.removed, "configuration applied");
            ctx.nexthops
                .refresh(ctx.applier.backend_addrs().iter().map(|a| a.ip()));
        }
        Err(e) => error!(
            "applying the configuration failed part-way (services before the failing one are applied, the failing one keeps its last version): {e}"
        ),
    }
}

/// Waits for a health transition (forever without a checker).
async fn health_changed(checker: &mut Option<HealthChecker>) -> bool {
    match checker {
        Some(c) => c.changed().await,
        None => std::future::pending().await,
    }
}

/// A backend's health changed: re-apply the last desired state with the new health.
fn apply_health(ctx: &mut Ctx<'_>) {
    let health = ctx
        .checker
        .as_ref()
        .map(|c| c.view().clone())
        .unwrap_or_default();
    let started = Instant::now();
    match ctx.applier.apply_with_health(ctx.dp, &ctx.desired, &health) {
        Ok(r) if r.is_empty() => {}
        Ok(r) => {
            ctx.applied.synced(true);
            ctx.applied.last_apply = Some(started.elapsed());
            info!(generation = r.generation, services = ?r.health_changed, "backend health applied");
        }
        Err(e) => error!(
            "applying a health change failed (the services keep their last tables; retried on the next change): {e}"
        ),
    }
}

/// Aborts a spawned task when dropped (the metrics server ends with the follow loop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Backends of checked services that their checks report down: (service, backend).
fn down_backends(ctx: &Ctx<'_>) -> Vec<(String, std::net::SocketAddr)> {
    let Some(checker) = &ctx.checker else {
        return Vec::new();
    };
    ctx.desired
        .services
        .values()
        .flat_map(|s| {
            s.backends
                .keys()
                .filter(|addr| checker.view().is_down(**addr, s.health_check.as_ref()))
                .map(|addr| (s.name.clone(), *addr))
        })
        .collect()
}

fn panicking_services(ctx: &Ctx<'_>) -> Vec<String> {
    ctx.desired
        .services
        .keys()
        .filter(|name| ctx.applier.service_health(name).is_some_and(|h| h.panic))
        .cloned()
        .collect()
}

/// Hands the metrics server what only the daemon knows.
fn publish_metrics(ctx: &Ctx<'_>, source: &Source) {
    let zookeeper = match source {
        Source::File { .. } => None,
        Source::Zk(zk) => Some(zk.status.borrow().connection),
    };
    ctx.metrics.send_replace(DaemonMetrics {
        generation: ctx.applier.generation(),
        last_apply: ctx.applied.last_apply,
        zookeeper,
        down: down_backends(ctx),
        panic: panicking_services(ctx),
        flows: ctx.flows as u64,
        flow_evictions: ctx.evictions,
    });
}

/// Writes the status file `lb status` shows; a failure is logged once.
fn write_status(ctx: &Ctx<'_>, source: &Source, warned: &mut bool) {
    publish_metrics(ctx, source);
    let ms = |t: Option<SystemTime>| t.map(crate::zk::source::unix_ms);
    let (kind, config_file, zookeeper) = match source {
        Source::File { path, .. } => ("file", Some(path.clone()), None),
        Source::Zk(zk) => {
            let status = zk.status.borrow().clone();
            ("zookeeper", None, Some(status))
        }
    };
    // With ZooKeeper the state is current as of the last full read, even when nothing changed.
    let last_sync = match &zookeeper {
        Some(z) => z.last_sync_unix_ms.or(ms(ctx.applied.last_sync)),
        None => ms(ctx.applied.last_sync),
    };
    let status = DaemonStatus {
        pid: std::process::id(),
        iface: ctx.opts.iface.clone(),
        source: kind,
        config_file,
        generation: ctx.applier.generation(),
        services: ctx.applier.applied_state().services.len(),
        last_sync_unix_ms: last_sync,
        last_change_unix_ms: ms(ctx.applied.last_change),
        written_unix_ms: crate::zk::source::unix_ms(SystemTime::now()),
        zookeeper,
        health: daemon_status::HealthStatus {
            probes: ctx.checker.as_ref().map_or(0, HealthChecker::probes),
            down: down_backends(ctx)
                .into_iter()
                .map(|(service, backend)| format!("{service} {backend}"))
                .collect(),
            panic: panicking_services(ctx),
        },
        last_apply_ms: ctx.applied.last_apply.map(|d| d.as_secs_f64() * 1000.0),
        flow_evictions: ctx.evictions,
    };
    let path = daemon_status::status_file_path(&ctx.opts.pin_dir);
    match daemon_status::write(&path, &status) {
        Ok(()) => *warned = false,
        Err(e) if !*warned => {
            *warned = true;
            warn!(
                "writing the status file {} failed: {e}; `lb status` will not show the daemon's state",
                path.display()
            );
        }
        Err(_) => {}
    }
}

/// One sweep; returns the flows left in the table (`None` when the sweep failed).
fn sweep_once(
    opts: &RunOptions,
    dp: &mut Dataplane,
    applier: &mut Applier,
) -> Option<sweeper::SweepReport> {
    let ids = applier.all_backend_ids();
    match sweeper::sweep(dp, &opts.timeouts, &ids) {
        Ok(report) => {
            if report.expired > 0 || report.counters_corrected > 0 {
                info!(
                    flows = report.flows,
                    expired = report.expired,
                    corrected = report.counters_corrected,
                    "swept flows"
                );
            }
            match applier.release_retired(dp, &report.in_use, RETIRED_GRACE) {
                Ok(n) if n > 0 => info!(released = n, "retired backends released"),
                Ok(_) => {}
                Err(e) => warn!("releasing retired backends failed: {e}"),
            }
            Some(report)
        }
        Err(e) => {
            warn!("sweeping flows failed: {e}");
            None
        }
    }
}
