//! `lb detach`: removes the balancer from an interface, and with it everything `lb run` created for
//! its pin directory (the pinned link and maps, the directory, the status file, the lock file).
//! Ending `lb run` does not do this (its program keeps forwarding) unless it runs with
//! `--detach-on-exit`. The state file (the last good state) is kept unless `--purge-state`: it
//! describes the services, not the data plane, and lets a later `lb run` start while its source
//! is unreachable.

use std::path::Path;

use anyhow::bail;
use tracing::{info, warn};

use crate::dataplane::{self, link_path, pinned_links};
use crate::owner::PinDirLock;
use crate::report;

pub fn run(iface: &str, pin_dir: &Path, purge_state: Option<&Path>) -> anyhow::Result<()> {
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
    remove_all(pin_dir, lock);
    info!(iface, pin_dir = %pin_dir.display(), "detached; pins, status file and lock removed");
    if let Some(state) = purge_state {
        match std::fs::remove_file(state) {
            Ok(()) => info!(path = %state.display(), "state file removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("could not remove the state file {}: {e}", state.display()),
        }
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
