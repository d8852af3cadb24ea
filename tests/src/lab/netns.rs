//! Running code inside a lab namespace on a thread of this process.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::Path;

use anyhow::{Context as _, bail};

use super::cmd::NETNS_DIR;

/// Runs `f` on a new thread that first joins the network namespace `netns`. Sockets `f` creates live in
/// that namespace (and stay there when handed back); threads `f` spawns start in it too. A panic in `f`
/// is resumed on the caller's thread.
pub fn run_in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = Path::new(NETNS_DIR).join(netns);
    let ns = File::open(&path)
        .with_context(|| format!("cannot open network namespace {}", path.display()))?;
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || -> anyhow::Result<T> {
            // SAFETY: setns only changes this thread's network namespace; the fd is open for the call.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "setns into {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
            Ok(f())
        });
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
