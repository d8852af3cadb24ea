//! `lb run`: load the data plane, apply the configuration, attach, then follow the configuration
//! (SIGHUP, file changes), sweep idle flows, and detach cleanly on SIGINT/SIGTERM.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lb_common::LbConfig;
use lb_common::limits::Capacity;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::apply::Applier;
use crate::config;
use crate::dataplane::{AttachMode, Dataplane, LoadOptions};
use crate::model::DesiredState;
use crate::netif;
use crate::nexthop::NextHopKeeper;
use crate::sweeper::{self, FlowTimeouts};

/// How often the configuration file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);
/// A backend that left the configuration keeps its id at least this long after its last flow.
const RETIRED_GRACE: Duration = Duration::from_secs(10);
/// How often next hops are re-resolved (routes may change under us).
const NEXTHOP_REFRESH: Duration = Duration::from_secs(30);

pub struct RunOptions {
    pub iface: String,
    pub config: PathBuf,
    pub attach_mode: AttachMode,
    pub pin_dir: PathBuf,
    pub capacity: Capacity,
    pub src_v4: Option<Ipv4Addr>,
    pub src_v6: Option<Ipv6Addr>,
    pub hash_seed: u32,
    pub kernel_log: bool,
    pub timeouts: FlowTimeouts,
    pub sweep_interval: Duration,
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
    opts.capacity.validate().map_err(|e| anyhow::anyhow!("invalid capacity: {e}"))?;
    netif::ifindex(&opts.iface)?;
    let desired = config::load_config_file(&opts.config)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the configuration is invalid; nothing was loaded")?;
    let outer = outer_sources(&opts)?;
    check_families(&desired, &outer)?;

    let mut dp = Dataplane::load(&LoadOptions {
        capacity: opts.capacity,
        pin_dir: Some(opts.pin_dir.clone()),
        kernel_log: opts.kernel_log,
    })?;
    dp.set_config(&outer)?;
    let mut applier = Applier::new(opts.capacity, opts.hash_seed);
    let report = applier.apply(&mut dp, &desired).context("applying the configuration")?;
    info!(services = desired.services.len(), generation = report.generation, "configuration applied");
    let mut nexthops = NextHopKeeper::default();
    nexthops.refresh(applier.backend_addrs().iter().map(|a| a.ip()));

    let mode = dp.attach_balancer(&opts.iface, opts.attach_mode)?;
    info!(iface = %opts.iface, mode = ?mode, pin_dir = %opts.pin_dir.display(), "forwarding");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(follow(&opts, &mut dp, &mut applier, &mut nexthops, &outer));
    nexthops.release();
    dp.remove_pins();
    drop(dp);
    info!("detached and unpinned; bye");
    result
}

fn outer_sources(opts: &RunOptions) -> anyhow::Result<LbConfig> {
    let (dv4, dv6) = netif::default_sources(&opts.iface)?;
    let v4 = opts.src_v4.or(dv4);
    let v6 = opts.src_v6.or(dv6);
    let mut cfg = LbConfig { hash_seed: opts.hash_seed, ..Default::default() };
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
            bail!("service {} has an IPv4 VIP but the interface has no IPv4 address: pass --src-v4", s.name);
        }
        if s.vip.is_ipv6() && outer.src_v6 == [0; 4] {
            bail!("service {} has an IPv6 VIP but the interface has no global IPv6 address: pass --src-v6", s.name);
        }
    }
    Ok(())
}

async fn follow(
    opts: &RunOptions,
    dp: &mut Dataplane,
    applier: &mut Applier,
    nexthops: &mut NextHopKeeper,
    outer: &LbConfig,
) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut poll = tokio::time::interval(FILE_POLL);
    let mut sweep = tokio::time::interval(opts.sweep_interval);
    let mut last_seen = fingerprint(&opts.config);
    let mut last_nexthop = Instant::now();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!(file = %opts.config.display(), "SIGHUP: reloading");
                last_seen = fingerprint(&opts.config);
                reload(opts, dp, applier, nexthops, outer);
            }
            _ = poll.tick() => {
                let now = fingerprint(&opts.config);
                if now != last_seen {
                    last_seen = now;
                    info!(file = %opts.config.display(), "configuration file changed: reloading");
                    reload(opts, dp, applier, nexthops, outer);
                }
            }
            _ = sweep.tick() => {
                sweep_once(opts, dp, applier);
                if last_nexthop.elapsed() >= NEXTHOP_REFRESH {
                    last_nexthop = Instant::now();
                    nexthops.refresh(applier.backend_addrs().iter().map(|a| a.ip()));
                }
            }
            _ = int.recv() => { info!("SIGINT: detaching"); return Ok(()); }
            _ = term.recv() => { info!("SIGTERM: detaching"); return Ok(()); }
        }
    }
}

/// Re-reads the file; an invalid file is rejected with its line and field and the last good
/// configuration keeps forwarding.
fn reload(opts: &RunOptions, dp: &mut Dataplane, applier: &mut Applier, nexthops: &mut NextHopKeeper, outer: &LbConfig) {
    let desired = match config::load_config_file(&opts.config) {
        Ok(d) => d,
        Err(e) => {
            error!("configuration rejected, the last good configuration keeps forwarding: {e}");
            return;
        }
    };
    if let Err(e) = check_families(&desired, outer) {
        error!("configuration rejected, the last good configuration keeps forwarding: {e:#}");
        return;
    }
    match applier.apply(dp, &desired) {
        Ok(r) if r.added.is_empty() && r.changed.is_empty() && r.removed.is_empty() => {
            info!("configuration unchanged");
        }
        Ok(r) => {
            info!(generation = r.generation, added = ?r.added, changed = ?r.changed, removed = ?r.removed, "configuration applied");
            nexthops.refresh(applier.backend_addrs().iter().map(|a| a.ip()));
        }
        Err(e) => error!("applying the configuration failed part-way (services before the failing one are applied, the failing one keeps its last version): {e}"),
    }
}

fn sweep_once(opts: &RunOptions, dp: &mut Dataplane, applier: &mut Applier) {
    let ids = applier.all_backend_ids();
    match sweeper::sweep(dp, &opts.timeouts, &ids) {
        Ok(report) => {
            if report.expired > 0 || report.counters_corrected > 0 {
                info!(flows = report.flows, expired = report.expired, corrected = report.counters_corrected, "swept flows");
            }
            match applier.release_retired(dp, &report.in_use, RETIRED_GRACE) {
                Ok(n) if n > 0 => info!(released = n, "retired backends released"),
                Ok(_) => {}
                Err(e) => warn!("releasing retired backends failed: {e}"),
            }
        }
        Err(e) => warn!("sweeping flows failed: {e}"),
    }
}
