//! `lb run`: load the data plane, apply the configuration, attach, then follow the configuration
//! source (any [`Source`]: the TOML file or ZooKeeper), sweep idle flows, report (one
//! [`DaemonReport`] for `/metrics` and `lb status`). The balancer's XDP link is pinned: on
//! SIGINT/SIGTERM (or a crash) the program keeps forwarding on the last applied state, and only
//! `--detach-on-exit` or `lb detach` remove it. One daemon per pin directory ([`PinDirLock`]).
//!
//! After every apply the desired state and the backends found down are written to the state file
//! ([`state_file`]); a start-up whose source cannot deliver its first state starts from it
//! ([`first_state`]).
//!
//! Every state from the source passes the one family rule ([`Families`]): a service this host
//! cannot tunnel is not applied and is reported per service; the others apply. At start-up a state
//! that names services of which none can be forwarded refuses to start (a misconfigured host:
//! wrong `--iface`, or `--src-v4`/`--src-v6` missing).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use lb_common::LbConfig;
use lb_common::limits::Capacity;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

mod control;
mod first_state;
mod tables_ahead;

use crate::announce::{AnnounceHandle, AnnounceOptions, Announcer, announce_set};
use crate::apply::{Applier, ApplyReport};
use crate::dataplane::{
    AttachMode, AttachedMode, Dataplane, DataplaneError, ExistingPins, LoadOptions, link_path,
};
use crate::detach;
use crate::health::{Health, HealthChecker, HealthView, ProbeTarget};
use crate::log_values::List;
use crate::metrics;
use crate::model::DesiredState;
use crate::netif;
use crate::nexthop::{NextHopKeeper, NextHopTask};
use crate::owner::{IfaceClaim, PinDirLock};
use crate::plan;
use crate::report::{
    self, AdoptionReport, AnnounceReport, BackendRef, DaemonReport, HealthStatus, SCHEMA_VERSION,
    ServiceNotApplied, StateFileStart, unix_ms,
};
use crate::source::{Families, Source, SourceSpec};
use crate::state_file::{self, SavedState, StateFileWriter};
use crate::sweeper::{self, FlowTimeouts};
use crate::tables::Prebuilt;
use crate::telemetry::{Reload, telemetry};

/// A backend that left the configuration keeps its id at least this long after its last flow.
const RETIRED_GRACE: Duration = Duration::from_secs(10);
/// How often next hops are re-resolved (routes may change under us).
const NEXTHOP_REFRESH: Duration = Duration::from_secs(30);
/// How often the status file for `lb status` is rewritten (it is also written after each apply).
const STATUS_WRITE: Duration = Duration::from_secs(5);

pub struct RunOptions {
    pub iface: String,
    pub source: SourceSpec,
    pub attach_mode: AttachMode,
    pub pin_dir: PathBuf,
    pub capacity: Capacity,
    pub src_v4: Option<Ipv4Addr>,
    pub src_v6: Option<Ipv6Addr>,
    pub hash_seed: u32,
    /// `--max-new-flows-per-cpu` (0: no guard).
    pub max_new_flows_per_cpu: u32,
    pub kernel_log: bool,
    pub timeouts: FlowTimeouts,
    pub sweep_interval: Duration,
    /// Where `/metrics` is served; `None`: not at all.
    pub metrics: Option<std::net::SocketAddr>,
    /// On SIGINT/SIGTERM remove everything this run created (as `lb detach`) instead of leaving
    /// the program forwarding.
    pub detach_on_exit: bool,
    /// Where the last good state is kept (see [`state_file`]).
    pub state_file: PathBuf,
    /// The local control socket ([`crate::control`]); `None`: none.
    pub control_socket: Option<PathBuf>,
    /// Announce the VIPs with BIRD (`--announce-bird-include`); `None`: no announcement.
    pub announce: Option<AnnounceOptions>,
}

pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    // A broken file says so first, even to a user who could not run the daemon, unless the state
    // file can stand in for it (then `first_state` starts from that and says so).
    if let Err(e) = opts.source.precheck() {
        match state_file::read(&opts.state_file) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(e),
            Err(saved) => {
                return Err(e.context(format!("and the state file cannot stand in: {saved}")));
            }
        }
    }
    crate::privilege::require("lb run", crate::privilege::LOAD_REQUIRED)?;
    // First of all: a second daemon on these pins is refused before it reads or changes anything.
    let lock = PinDirLock::acquire(&opts.pin_dir)?;
    // And one daemon per interface (whatever its pin dir).
    let _claim = match IfaceClaim::acquire(&opts.iface) {
        Ok(claim) => claim,
        Err(e) => {
            if !opts.pin_dir.exists() {
                // Nothing of ours is pinned: the lock file was made just now.
                lock.remove();
            }
            return Err(e.into());
        }
    };
    opts.capacity
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid capacity: {e}"))?;
    netif::ifindex(&opts.iface)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signals = Signals::install(&runtime)?;
    let outer = outer_sources(&opts)?;
    let families = Families::of(&outer);
    // ZooKeeper's services have their tables built as they are read, while the rest of the tree
    // still comes in (a fleet's 1,000 Maglev tables are ~1 s of CPU).
    let tables_ahead = opts.source.own_zk_schema().map(|schema| {
        tables_ahead::TablesAhead::start(schema.clone(), opts.capacity.table_size, opts.hash_seed)
    });
    let mut source = {
        let _enter = runtime.enter();
        opts.source
            .open(tables_ahead.as_ref().map(tables_ahead::TablesAhead::hook))
    };
    // The data plane (the program, and the maps: hundreds of MB at fleet size) loads on its own
    // thread while the source delivers its first state: neither needs the other.
    let started = Instant::now();
    let load_options = LoadOptions {
        capacity: opts.capacity,
        pin_dir: Some(opts.pin_dir.clone()),
        kernel_log: opts.kernel_log,
        existing_pins: ExistingPins::Adopt,
    };
    let load = || {
        let dp = Dataplane::load(&load_options);
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "data plane loaded"
        );
        dp
    };
    let (accepted, prebuilt, dp) = std::thread::scope(|scope| {
        let loading = std::thread::Builder::new()
            .name("lb-load".into())
            .spawn_scoped(scope, load);
        let first = runtime.block_on(source.first());
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "first state read from the source"
        );
        let accepted = first_state::choose(first, &opts.state_file).map(|first| {
            let (desired, not_applied) = families.split(first.desired);
            Accepted {
                desired,
                not_applied,
                restored_down: first.restored_down,
                from_state_file: first.from_state_file,
                waiting: first.waiting,
                prebuilt: BTreeMap::new(),
            }
        });
        let ahead = tables_ahead
            .map(tables_ahead::TablesAhead::finish)
            .unwrap_or_default();
        if !ahead.is_empty() {
            info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                tables = ahead.len(),
                "tables built while the state was read"
            );
        }
        // While the program still loads: the first state's tables not built yet, on every CPU.
        let prebuilt = accepted.as_ref().ok().map(|a| {
            let (prebuilt, kept) = plan::prebuild_for(
                &a.desired,
                &restored_health(&a.restored_down),
                opts.capacity.table_size,
                opts.hash_seed,
                ahead,
            );
            info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                tables = prebuilt.len(),
                built_while_reading = kept,
                "tables of the first state built"
            );
            prebuilt
        });
        let dp = match loading {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                Err(DataplaneError::Panicked {
                    what: "loading the data plane",
                })
            }),
            // No thread to spare: load here.
            Err(_) => load(),
        };
        (accepted, prebuilt, dp)
    });
    let mut dp = dp?;
    let first = match accepted {
        Ok(first) => first,
        Err(e) => return Err(refuse_start(dp, &opts.pin_dir, lock, e)),
    };
    if first.desired.services.is_empty() && !first.not_applied.is_empty() {
        let e = anyhow::anyhow!(
            "no service can be forwarded from this host, so nothing was loaded: {}",
            describe(&first.not_applied)
        );
        return Err(refuse_start(dp, &opts.pin_dir, lock, e));
    }
    log_not_applied(&first.not_applied);
    // From here on the maps are pinned: a way out before the link is pinned unpins them; after
    // that only --detach-on-exit does.
    let result = serve(
        &opts,
        &runtime,
        &mut dp,
        source.as_mut(),
        signals,
        Accepted {
            prebuilt: prebuilt.unwrap_or_default(),
            ..first
        },
        &outer,
    );
    drop(source);
    let forwarding = link_path(&opts.pin_dir, &opts.iface).exists();
    drop(dp);
    if forwarding && !opts.detach_on_exit {
        info!(iface = %opts.iface, pin_dir = %opts.pin_dir.display(), "exited; the XDP program keeps forwarding unmanaged");
    } else {
        detach::remove_all(&opts.pin_dir, lock);
        info!("detached and unpinned; bye");
    }
    result
}

/// The health the state file last knew: these backends start down.
fn restored_health(down: &[ProbeTarget]) -> HealthView {
    let mut restored = HealthView::default();
    for target in down {
        restored.set(target.clone(), Health::Down);
    }
    restored
}

/// A start-up refused after the data plane loaded: the maps it created (none were pinned before)
/// are removed again; adopted pins stay as they were, forwarding.
fn refuse_start(
    dp: Dataplane,
    pin_dir: &std::path::Path,
    lock: PinDirLock,
    e: anyhow::Error,
) -> anyhow::Error {
    let created = !dp.adopted();
    drop(dp);
    if created {
        detach::remove_all(pin_dir, lock);
    }
    e
}

/// The log line of a signal that ends the daemon: what happens to the forwarding.
fn exit_message(opts: &RunOptions, signal: &str) {
    if opts.detach_on_exit {
        info!("{signal}: detaching from {} (--detach-on-exit)", opts.iface);
    } else {
        info!(
            "{signal}: exiting; the XDP program stays attached to {} and keeps forwarding on the last applied state (remove it with `lb detach --iface {} --pin-dir {}`)",
            opts.iface,
            opts.iface,
            opts.pin_dir.display()
        );
    }
}

/// A state from the source after the family rule: what is applied, and what is not.
struct Accepted {
    desired: DesiredState,
    not_applied: Vec<ServiceNotApplied>,
    /// Backends that start down (the state file's last known health).
    restored_down: Vec<ProbeTarget>,
    /// Set when the state is the state file's.
    from_state_file: Option<StateFileStart>,
    /// No state at all yet (see `FirstState::waiting`).
    waiting: bool,
    /// The tables of `desired`, built while the data plane loaded.
    prebuilt: BTreeMap<String, Prebuilt>,
}

fn describe(not_applied: &[ServiceNotApplied]) -> String {
    not_applied
        .iter()
        .map(|n| format!("service {} is not applied: {}", n.service, n.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

fn log_not_applied(not_applied: &[ServiceNotApplied]) {
    for n in not_applied {
        error!(service = %n.service, "service not applied: {}", n.reason);
    }
}

/// Applies the first state, attaches, then follows the source until SIGINT/SIGTERM.
fn serve(
    opts: &RunOptions,
    runtime: &tokio::runtime::Runtime,
    dp: &mut Dataplane,
    source: &mut dyn Source,
    signals: Signals,
    first: Accepted,
    outer: &LbConfig,
) -> anyhow::Result<()> {
    let mut applied = AppliedTimes::default();
    dp.set_config(outer)?;
    // Without it the program reads the kernel's clock itself: slower, never wrong.
    if let Err(e) = dp.start_clock() {
        warn!(
            "the program's clock thread did not start; the XDP program reads the clock per packet: {e}"
        );
    }
    let apply_started = Instant::now();
    // Adopted maps keep the capacity they were created with.
    let mut applier = Applier::new(dp.maps().capacity(), opts.hash_seed);
    if !dp.adopted() {
        applier.on_fresh_maps();
    }
    // Used only where they fit (adopted maps keep the table size they were created with).
    applier.use_prebuilt(first.prebuilt);
    let restored = restored_health(&first.restored_down);
    // With nothing to go by yet, the pinned services keep forwarding untouched until the source
    // delivers; they are adopted then.
    let adopt_pending = dp.adopted() && first.waiting;
    let mut adoption = None;
    if dp.adopted() && !adopt_pending {
        adoption = Some(adopt(dp, &mut applier, &first.desired, &restored)?);
    }
    let report = applier.apply_with_health(dp, &first.desired, &restored);
    info!(
        services = first.desired.services.len(),
        generation = report.generation,
        added = %List(&report.added),
        changed = %List(&report.changed),
        removed = %List(&report.removed),
        "configuration applied"
    );
    applied.synced(true);
    applied.last_apply = Some(apply_started.elapsed());
    telemetry().applied(apply_started.elapsed());
    if !first.waiting && first.from_state_file.is_none() {
        telemetry().reload(Reload::Taken);
    }
    // A daemon that adopted the pins adopts the next hops the earlier one kept resolved.
    let mut keeper = NextHopKeeper::open(dp.adopted())?;
    keeper.refresh(&backend_ips(&applier));

    let mode = dp.attach_balancer(&opts.iface, opts.attach_mode)?;
    if let AttachedMode::Replaced {
        old_prog_id,
        new_prog_id,
    } = mode
    {
        info!(iface = %opts.iface, old_prog_id, new_prog_id, "replaced the program of the pinned XDP link (bpf_link_update: no packet without a program)");
        if let Some(a) = &mut adoption {
            a.replaced_prog_id = Some(old_prog_id);
            a.prog_id = Some(new_prog_id);
        }
    }
    info!(iface = %opts.iface, mode = ?mode, pin_dir = %opts.pin_dir.display(), "forwarding");
    crate::privilege::shed_after_attach();
    // From here on off the runtime, with only the capabilities kept.
    let nexthops = NextHopTask::spawn(keeper)?;

    let mut ctx = Ctx {
        opts,
        dp,
        applier: &mut applier,
        nexthops: &nexthops,
        families: Families::of(outer),
        applied,
        desired: first.desired,
        not_applied: first.not_applied,
        checker: None,
        restored_down: first.restored_down,
        from_state_file: first.from_state_file,
        adopt_pending,
        waiting: first.waiting,
        adoption,
        state_file: StateFileWriter::spawn(opts.state_file.clone())
            .context("starting the state file's writer thread")?,
        reports: None,
        flows: 0,
        swept_total: 0,
        evictions: 0,
        status_warned: false,
        announcer: None,
    };
    let result = runtime.block_on(follow(&mut ctx, source, signals));
    drop(ctx);
    // Without --detach-on-exit the program keeps forwarding and needs the next hops' MAC addresses.
    nexthops.finish(opts.detach_on_exit);
    result
}

/// The backends' addresses, whose next hops the keeper keeps resolved.
fn backend_ips(applier: &Applier) -> Vec<IpAddr> {
    applier.backend_addrs().iter().map(|a| a.ip()).collect()
}

fn outer_sources(opts: &RunOptions) -> anyhow::Result<LbConfig> {
    let (dv4, dv6) = netif::default_sources(&opts.iface)?;
    let v4 = opts.src_v4.or(dv4);
    let v6 = opts.src_v6.or(dv6);
    let mut cfg = LbConfig {
        hash_seed: opts.hash_seed,
        max_new_flows_per_cpu: opts.max_new_flows_per_cpu,
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

/// What the follow loop works on.
struct Ctx<'a> {
    opts: &'a RunOptions,
    dp: &'a mut Dataplane,
    applier: &'a mut Applier,
    nexthops: &'a NextHopTask,
    families: Families,
    applied: AppliedTimes,
    /// The last state the source delivered that this host can forward; health changes re-apply it.
    desired: DesiredState,
    /// The services of that state this host cannot forward.
    not_applied: Vec<ServiceNotApplied>,
    /// The health checks (started inside the runtime by `follow`).
    checker: Option<HealthChecker>,
    /// The last known health the checks start from (taken by `follow`).
    restored_down: Vec<ProbeTarget>,
    /// Set while the state forwarded is the state file's (until the source delivers).
    from_state_file: Option<StateFileStart>,
    /// The maps were adopted but not yet the planner's: no state to match them with yet.
    adopt_pending: bool,
    /// No state yet: neither the source nor the state file had one (`/healthz` answers 503).
    waiting: bool,
    /// What this run adopted from the pins (for `lb status`).
    adoption: Option<AdoptionReport>,
    /// Writes the state file off the runtime (the last state queued is written when it is dropped).
    state_file: StateFileWriter,
    /// The last report, for the metrics server (`None` until the first one is built).
    reports: Option<watch::Sender<DaemonReport>>,
    /// Flows in the table at the last sweep.
    flows: usize,
    /// Flows the sweeper deleted since start.
    swept_total: u64,
    /// Flows the flow table evicted (`flow_evicted`) as of the last sweep.
    evictions: u64,
    /// A failure to write the status file was logged (it is logged once until a write succeeds).
    status_warned: bool,
    /// The VIP announcement to BIRD; `None` without `--announce-bird-include`.
    announcer: Option<AnnounceHandle>,
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

async fn follow(
    ctx: &mut Ctx<'_>,
    source: &mut dyn Source,
    signals: Signals,
) -> anyhow::Result<()> {
    let Signals {
        mut hup,
        mut int,
        mut term,
    } = signals;
    let mut sweep = tokio::time::interval(ctx.opts.sweep_interval);
    let mut status_tick = tokio::time::interval(STATUS_WRITE);
    let mut last_nexthop = Instant::now();
    let mut sweeping: Option<Sweeping> = None;
    let mut checker = HealthChecker::default();
    checker.restore(std::mem::take(&mut ctx.restored_down));
    checker.sync(&ctx.desired);
    ctx.checker = Some(checker);
    save_state(ctx);
    publish(ctx, source);
    let reports = ctx.reports.as_ref().map(watch::Sender::subscribe);
    let _metrics_server = match (ctx.opts.metrics, reports) {
        (Some(addr), Some(reports)) => match metrics::bind(addr).await {
            Some(listener) => {
                info!(%addr, "serving metrics on /metrics");
                let server = metrics::serve(listener, ctx.opts.pin_dir.clone(), reports);
                Some(AbortOnDrop(tokio::spawn(server)))
            }
            None => None,
        },
        _ => None,
    };
    let (calls_tx, mut calls) = tokio::sync::mpsc::channel::<crate::control::server::Call>(8);
    let _control_server = match &ctx.opts.control_socket {
        Some(path) => match crate::control::server::bind(path) {
            Ok(socket) => Some(AbortOnDrop(tokio::spawn(socket.serve(calls_tx.clone())))),
            Err(e) => {
                warn!(socket = %path.display(), "no control socket ({e}): `lb backend weight|drain` and `lb stats zero` cannot reach this daemon");
                None
            }
        },
        None => None,
    };
    ctx.announcer = ctx
        .opts
        .announce
        .clone()
        .map(|o| AnnounceHandle::spawn(Announcer::new(o), announced_set(ctx)));
    loop {
        // Every event may change what is applied or healthy: the set follows (a no-op unless it changed).
        want_announced(ctx);
        tokio::select! {
            _ = announce_changed(&mut ctx.announcer) => write_report(ctx, source),
            Some((request, reply)) = calls.recv() => {
                let _ = reply.send(control::handle(ctx, source, request));
            }
            changed = health_changed(&mut ctx.checker) => {
                if changed {
                    apply_health(ctx);
                    write_report(ctx, source);
                }
            }
            _ = hup.recv() => {
                if let Some(desired) = source.hangup() {
                    apply_desired(ctx, desired);
                    write_report(ctx, source);
                }
            }
            desired = source.next() => {
                apply_desired(ctx, desired);
                write_report(ctx, source);
            }
            _ = sweep.tick() => {
                // One sweep at a time, on a blocking thread: at fleet size it reads millions of
                // flows, and ZooKeeper pings, probes and the control socket must not wait for it.
                if sweeping.is_none() {
                    sweeping = Some(start_sweep(ctx));
                }
                if last_nexthop.elapsed() >= NEXTHOP_REFRESH {
                    last_nexthop = Instant::now();
                    ctx.nexthops.refresh(backend_ips(ctx.applier));
                }
            }
            swept = finished(&mut sweeping) => {
                sweeping = None;
                if let Some(report) = sweep_done(ctx, swept) {
                    ctx.flows = report.flows;
                    ctx.swept_total += report.expired as u64;
                    let evictions = report.evicted_total;
                    if evictions > ctx.evictions {
                        warn!(evicted = evictions - ctx.evictions, flows = report.flows, "the flow table evicted flows to make room: raise --flow-table-size");
                    }
                    ctx.evictions = ctx.evictions.max(evictions);
                }
                publish(ctx, source);
            }
            _ = status_tick.tick() => write_report(ctx, source),
            _ = int.recv() => { exit_message(ctx.opts, "SIGINT"); break; }
            _ = term.recv() => { exit_message(ctx.opts, "SIGTERM"); break; }
        }
    }
    withdraw(ctx, source, &mut int, &mut term).await;
    Ok(())
}

/// Tells the announcer the VIPs the applied state can serve (it hands them to BIRD when they change).
fn want_announced(ctx: &Ctx<'_>) {
    let Some(announcer) = &ctx.announcer else {
        return;
    };
    announcer.want(announced_set(ctx));
}

/// The VIPs to announce now.
fn announced_set(ctx: &Ctx<'_>) -> std::collections::BTreeSet<IpAddr> {
    // The follow loop runs only once the program is attached.
    let applier = &*ctx.applier;
    announce_set(&applier.applied_state(), true, |name| {
        applier.service_health(name)
    })
}

/// Waits for the announcement to change (forever without one).
async fn announce_changed(announcer: &mut Option<AnnounceHandle>) {
    match announcer {
        Some(a) => a.changed().await,
        None => std::future::pending().await,
    }
}

/// The drain on SIGINT/SIGTERM: withdraw every VIP, then wait `--withdraw-grace-s` so the routers
/// move the traffic to the other balancers while this one still forwards (a second signal ends
/// the wait).
async fn withdraw(
    ctx: &mut Ctx<'_>,
    source: &dyn Source,
    int: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
) {
    let Some(announcer) = &mut ctx.announcer else {
        return;
    };
    let grace = announcer.options().withdraw_grace;
    let settled = announcer
        .settle(
            Default::default(),
            crate::announce::bird::TIMEOUT + Duration::from_secs(1),
        )
        .await;
    match settled {
        Ok(()) => info!(
            grace_s = grace.as_secs_f64(),
            "withdrew every VIP from BIRD; forwarding on until the grace ends"
        ),
        Err(e) => warn!(
            grace_s = grace.as_secs_f64(),
            "withdrawing the VIPs from BIRD failed ({e}); waiting the grace anyway"
        ),
    }
    write_report(ctx, source);
    tokio::select! {
        _ = tokio::time::sleep(grace) => {}
        _ = int.recv() => info!("SIGINT: ending the withdraw grace early"),
        _ = term.recv() => info!("SIGTERM: ending the withdraw grace early"),
    }
}

/// Applies a state from the source: the services this host can forward, with the current health.
fn apply_desired(ctx: &mut Ctx<'_>, desired: DesiredState) {
    if let Some(start) = ctx.from_state_file.take() {
        info!(state_file = %start.path.display(), "the source delivered its state: resyncing from it (no longer forwarding the state file's)");
    }
    ctx.waiting = false;
    telemetry().reload(Reload::Taken);
    let (desired, not_applied) = ctx.families.split(desired);
    log_not_applied(&not_applied);
    ctx.not_applied = not_applied;
    if let Some(checker) = &mut ctx.checker {
        checker.sync(&desired);
    }
    ctx.desired = desired;
    match apply_current(ctx) {
        None => {
            ctx.applied.synced(false);
            info!("configuration unchanged");
        }
        Some(r) => {
            info!(generation = r.generation, added = %List(&r.added), changed = %List(&r.changed), removed = %List(&r.removed), "configuration applied");
            save_state(ctx);
            ctx.nexthops.refresh(backend_ips(ctx.applier));
        }
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
    if let Some(r) = apply_current(ctx) {
        info!(generation = r.generation, services = %List(&r.health_changed), "backend health applied");
        save_state(ctx);
    }
}

/// Applies the last desired state with the current health; `None` when nothing changed. Services
/// that fail are logged by the applier, one line each.
fn apply_current(ctx: &mut Ctx<'_>) -> Option<ApplyReport> {
    let health = ctx
        .checker
        .as_ref()
        .map(|c| c.view().clone())
        .unwrap_or_default();
    if ctx.adopt_pending {
        match adopt(ctx.dp, ctx.applier, &ctx.desired, &health) {
            Ok(a) => {
                ctx.adopt_pending = false;
                ctx.adoption = Some(a);
            }
            Err(e) => {
                error!("{e:#}; the pinned services keep forwarding as they are");
                return None;
            }
        }
    }
    let started = Instant::now();
    let r = ctx.applier.apply_with_health(ctx.dp, &ctx.desired, &health);
    if r.is_empty() {
        return None;
    }
    ctx.applied.synced(true);
    ctx.applied.last_apply = Some(started.elapsed());
    telemetry().applied(started.elapsed());
    Some(r)
}

/// Seeds the applier from the maps an earlier run pinned (see `Planner::adopt`): the next apply of
/// `desired` writes only what differs from what they hold.
fn adopt(
    dp: &Dataplane,
    applier: &mut Applier,
    desired: &DesiredState,
    health: &HealthView,
) -> anyhow::Result<AdoptionReport> {
    let pinned = dp
        .maps()
        .pinned_state()
        .context("reading the pinned maps to adopt them")?;
    let a = applier.adopt(&pinned, desired, health).map_err(|e| {
        anyhow::anyhow!(
            "the pinned maps cannot be adopted: {e}. Drain this host, remove the old balancer with \
             `lb detach`, then start `lb run` again"
        )
    })?;
    info!(
        unchanged = %List(&a.unchanged),
        rewrite = %List(&a.rewrite),
        orphans = %List(&a.orphans),
        draining = a.draining,
        "adopted the maps an earlier run pinned: its flows, persistence entries and connection counters are kept"
    );
    Ok(AdoptionReport {
        since_unix_ms: unix_ms(SystemTime::now()),
        unchanged: a.unchanged,
        rewritten: a.rewrite,
        removed: a.orphans,
        draining: a.draining,
        replaced_prog_id: None,
        prog_id: None,
    })
}

/// Aborts a spawned task when dropped (the metrics server ends with the follow loop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Backends of checked services that their checks report down.
fn down_backends(ctx: &Ctx<'_>) -> Vec<BackendRef> {
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
                .map(|addr| BackendRef {
                    service: s.name.clone(),
                    backend: *addr,
                })
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

/// The daemon's report of itself, now.
fn build_report(ctx: &Ctx<'_>, source: &dyn Source) -> DaemonReport {
    let ms = |t: Option<SystemTime>| t.map(unix_ms);
    DaemonReport {
        schema_version: SCHEMA_VERSION,
        pid: std::process::id(),
        iface: ctx.opts.iface.clone(),
        source: source.status(),
        generation: ctx.applier.generation(),
        services: ctx.applier.applied_state().services.len(),
        // The family rule's rejections, then the services the applier could not apply.
        not_applied: (ctx.not_applied.iter().cloned())
            .chain(
                ctx.applier
                    .failures()
                    .iter()
                    .map(|(service, reason)| ServiceNotApplied {
                        service: service.clone(),
                        reason: reason.clone(),
                    }),
            )
            .collect(),
        // With ZooKeeper the state is current as of the last full read, even when nothing changed.
        last_sync_unix_ms: source.last_sync_unix_ms().or(ms(ctx.applied.last_sync)),
        last_change_unix_ms: ms(ctx.applied.last_change),
        written_unix_ms: unix_ms(SystemTime::now()),
        health: HealthStatus {
            probes: ctx.checker.as_ref().map_or(0, HealthChecker::probes),
            down: down_backends(ctx),
            panic: panicking_services(ctx),
        },
        last_apply_ms: ctx.applied.last_apply.map(|d| d.as_secs_f64() * 1000.0),
        flows: ctx.flows as u64,
        flow_evictions: ctx.evictions,
        from_state_file: ctx.from_state_file.clone(),
        ready: !ctx.waiting,
        adoption: ctx.adoption.clone(),
        announce: ctx.announcer.as_ref().map(|a| {
            let state = a.state();
            AnnounceReport {
                include: a.options().include.clone(),
                socket: a.options().socket.clone(),
                announced: state.announced.into_iter().collect(),
                error: state.error,
            }
        }),
    }
}

/// Hands the state forwarded and the health found to the state file's writer (its thread logs a
/// failure).
fn save_state(ctx: &mut Ctx<'_>) {
    let saved = SavedState {
        desired: ctx.desired.clone(),
        down: down_backends(ctx),
        written_unix_ms: unix_ms(SystemTime::now()),
    };
    ctx.state_file.write(saved);
}

/// Builds the report and hands it to the metrics server.
fn publish(ctx: &mut Ctx<'_>, source: &dyn Source) -> DaemonReport {
    let report = build_report(ctx, source);
    match &ctx.reports {
        Some(reports) => {
            reports.send_replace(report.clone());
        }
        None => ctx.reports = Some(watch::channel(report.clone()).0),
    }
    report
}

/// Publishes the report and writes it as the status file `lb status` shows; a failure is logged
/// once.
fn write_report(ctx: &mut Ctx<'_>, source: &dyn Source) {
    let report = publish(ctx, source);
    let path = report::status_file_path(&ctx.opts.pin_dir);
    match report::write(&path, &report) {
        Ok(()) => ctx.status_warned = false,
        Err(e) if !ctx.status_warned => {
            ctx.status_warned = true;
            warn!(
                "writing the status file {} failed: {e}; `lb status` will not show the daemon's state",
                path.display()
            );
        }
        Err(_) => {}
    }
}

/// A sweep running on a blocking thread.
type Sweeping = tokio::task::JoinHandle<anyhow::Result<sweeper::SweepReport>>;

/// Starts a sweep of the flow table on a blocking thread, through its own view of the pinned maps.
fn start_sweep(ctx: &Ctx<'_>) -> Sweeping {
    let ids = ctx.applier.all_backend_ids();
    let pin_dir = ctx.opts.pin_dir.clone();
    let timeouts = ctx.opts.timeouts;
    let aged_from_ns = ctx.dp.clock_started_ns();
    tokio::task::spawn_blocking(move || {
        let mut maps = crate::dataplane::MapsView::open_pinned_for_sweeps(&pin_dir)?;
        Ok(sweeper::sweep(&mut maps, aged_from_ns, &timeouts, &ids)?)
    })
}

/// The end of the running sweep (never, while none runs).
async fn finished(
    sweeping: &mut Option<Sweeping>,
) -> Result<anyhow::Result<sweeper::SweepReport>, tokio::task::JoinError> {
    match sweeping {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// What a finished sweep means: logged, and the retired backends no flow uses are released.
/// Returns its report (`None` when the sweep failed).
fn sweep_done(
    ctx: &mut Ctx<'_>,
    swept: Result<anyhow::Result<sweeper::SweepReport>, tokio::task::JoinError>,
) -> Option<sweeper::SweepReport> {
    let report = match swept {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            warn!("sweeping flows failed: {e:#}");
            return None;
        }
        Err(e) => {
            warn!("the flow sweep did not finish: {e}");
            return None;
        }
    };
    if report.expired > 0 || report.counters_corrected > 0 {
        info!(
            flows = report.flows,
            expired = report.expired,
            corrected = report.counters_corrected,
            "swept flows"
        );
    }
    match ctx
        .applier
        .release_retired(ctx.dp, &report.in_use, RETIRED_GRACE)
    {
        Ok(n) if n > 0 => info!(released = n, "retired backends released"),
        Ok(_) => {}
        Err(e) => warn!("releasing retired backends failed: {e}"),
    }
    Some(report)
}
