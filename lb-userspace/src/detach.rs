//! `lb detach`: removes the balancer from an interface, and with it everything `lb run` created for
//! its pin directory (the pinned link and maps, the directory, the status file, the lock file) and
//! the neighbour entries it made for its next hops (unless another `lb run` balances in this
//! network namespace).
//! Ending `lb run` does not do this (its program keeps forwarding) unless it runs with
//! `--detach-on-exit`. The state file (the last good state) is kept unless `--purge-state`: it
//! describes the services, not the data plane, and lets a later `lb run` start while its source
//! is unreachable.
//!
//! A run that ended without withdrawing its VIPs from BIRD (`kill -9`, a crash) left them announced,
//! and its program forwarding them: a detach withdraws them first (the include file its status
//! file names), waits `--withdraw-grace-s` while the routers move the traffic, then removes the
//! pins, so the host never attracts traffic it no longer forwards.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tracing::{info, warn};

use crate::announce::{self, Withdrawal};
use crate::dataplane::{self, link_path, pinned_links};
use crate::nexthop;
use crate::owner::{self, PinDirLock};
use crate::report;

/// `withdraw_grace`: how long to wait after withdrawing VIPs a stopped run left announced; `None`
/// leaves BIRD alone (`--no-withdraw`).
pub fn run(
    iface: &str,
    pin_dir: &Path,
    purge_state: Option<&Path>,
    withdraw_grace: Option<Duration>,
) -> anyhow::Result<()> {
    // No capability: unlinking the pins (the link's pin last held) detaches the program; it needs
    // write access to the pin directory and /run/lb only (measured; README).
    if !pin_dir.exists() {
        bail!(
            "nothing to detach: {} does not exist (is --pin-dir the one `lb run` was given?)",
            pin_dir.display()
        );
    }
    let lock = PinDirLock::acquire(pin_dir)?;
    let links = pinned_links(pin_dir);
    if !link_path(pin_dir, iface).exists() {
        if !links.is_empty() {
            bail!(
                "no balancer is pinned for {iface} in {}: it holds links for {links:?}; give one of \
                 those as --iface",
                pin_dir.display()
            );
        }
        warn!(pin_dir = %pin_dir.display(), "no link pinned for {iface}; removing what is left");
    }
    if let Some(grace) = withdraw_grace {
        withdraw_left_over(pin_dir, grace)?;
    }
    remove_all(pin_dir, lock);
    info!(iface, pin_dir = %pin_dir.display(), "detached; pins, status file and lock removed");
    release_neighbours();
    if let Some(state) = purge_state {
        match std::fs::remove_file(state) {
            Ok(()) => info!(path = %state.display(), "state file removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("could not remove the state file {}: {e}", state.display()),
        }
    }
    Ok(())
}

/// Removes the neighbour entries `lb run` made to keep its next hops resolved (a plain exit keeps
/// them for the program that forwards on), unless another `lb run` of this network namespace
/// runs: it may own some of them.
fn release_neighbours() {
    match owner::claimed_ifaces() {
        Ok(others) if others.is_empty() => match nexthop::release_left_over() {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => info!(
                removed = removed.len(),
                "lb's neighbour entries (managed, protocol {}) removed",
                nexthop::LB_NEIGH_PROTOCOL
            ),
            Err(e) => warn!(
                "cannot remove lb's neighbour entries: {e}; `ip neigh show proto {}` lists them",
                nexthop::LB_NEIGH_PROTOCOL
            ),
        },
        Ok(others) => info!(
            others = %crate::log_values::List(&others),
            "another lb run balances here: lb's neighbour entries are left to it"
        ),
        Err(e) => warn!(
            "cannot tell whether another lb run balances here ({e}); lb's neighbour entries stay \
             (`ip neigh show proto {}` lists them)",
            nexthop::LB_NEIGH_PROTOCOL
        ),
    }
}

/// Withdraws the VIPs the last run on `pin_dir` announced, if its status file names an
/// announcement, and waits `grace` when some were; an error (nothing removed yet) when BIRD may
/// still announce them.
fn withdraw_left_over(pin_dir: &Path, grace: Duration) -> anyhow::Result<()> {
    let announce = match report::read(pin_dir) {
        Ok(report) => report.and_then(|r| r.announce),
        Err(e) => {
            warn!(
                "cannot tell from the status file whether the last run announced VIPs ({e}); if \
                 it ran with --announce-bird-include, empty that file and run `birdc configure`"
            );
            None
        }
    };
    let Some(a) = announce else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime that talks to BIRD")?;
    let outcome = runtime
        .block_on(announce::withdraw_left_over(&a.include, &a.socket))
        .with_context(|| {
            format!(
                "withdrawing the VIPs the last `lb run` announced (include file {}, BIRD socket \
                 {}) failed, so BIRD may still attract their traffic here; nothing was detached. \
                 Fix that and detach again, or pass --no-withdraw to detach anyway",
                a.include.display(),
                a.socket.display()
            )
        })?;
    match outcome {
        Withdrawal::Withdrawn { reply } => {
            info!(
                include = %a.include.display(),
                bird = %reply,
                grace_s = grace.as_secs_f64(),
                "VIPs the last run announced withdrawn; forwarding on while the routers move the \
                 traffic"
            );
            std::thread::sleep(grace);
        }
        Withdrawal::NothingAnnounced { reply } => {
            info!(include = %a.include.display(), bird = %reply, "no VIP was announced");
        }
        Withdrawal::BirdNotRunning { error } => info!(
            include = %a.include.display(),
            socket = %a.socket.display(),
            %error,
            "include file emptied; BIRD is not running, so it announces nothing"
        ),
    }
    Ok(())
}

/// Removes the pins in `pin_dir` (links first: the program stops before its maps go), the
/// directory, restores the sysctls `lb run` changed, removes the status file and finally the
/// lock file.
pub fn remove_all(pin_dir: &Path, lock: PinDirLock) {
    dataplane::remove_pins(pin_dir);
    // After the program is gone: what `lb run` changed for it goes back as it was.
    dataplane::restore_sysctls(pin_dir);
    let status = report::status_file_path(pin_dir);
    if let Err(e) = std::fs::remove_file(&status)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %status.display(), error = %e, "could not remove the status file");
    }
    lock.remove();
}
