//! Network namespaces for tests: running code inside a named lab namespace on a thread of this
//! process ([`run_in_netns`]), and a thread's own anonymous namespace ([`PrivateNetns`]).

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

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

/// A network namespace of the calling thread's own: anonymous, so it (with every interface in it)
/// ends with the last thread in it, even if the test panics or the process is killed. Nothing to
/// clean up, nothing to leak. For `BPF_PROG_TEST_RUN` fixtures and benches, whose `bpf_fib_lookup`
/// routes in the namespace of the calling thread.
pub struct PrivateNetns {
    ns: File,
}

impl PrivateNetns {
    /// Moves the calling thread into a new network namespace (only this thread: others keep
    /// theirs). Use [`with_private_netns`] to give it a thread of its own.
    pub fn enter() -> anyhow::Result<PrivateNetns> {
        // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET changes only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!(
                "unshare(CLONE_NEWNET): {} (root needed)",
                std::io::Error::last_os_error()
            );
        }
        let ns = File::open("/proc/thread-self/ns/net")
            .context("cannot open the new network namespace")?;
        Ok(PrivateNetns { ns })
    }

    /// A second handle on the same namespace (it lives while any handle or thread holds it).
    pub fn try_clone(&self) -> anyhow::Result<PrivateNetns> {
        let ns = self
            .ns
            .try_clone()
            .context("cannot duplicate the namespace handle")?;
        Ok(PrivateNetns { ns })
    }

    /// Runs `ip ARGS` inside the namespace (the child joins it before exec); returns its stdout.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let fd = self.ns.as_raw_fd();
        let mut cmd = Command::new("ip");
        cmd.args(args);
        // SAFETY: setns is async-signal-safe; `fd` stays open until the child has exec'd.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd
            .output()
            .context("cannot run `ip` (iproute2; `cargo xtask setup`)")?;
        if !out.status.success() {
            bail!(
                "`ip {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs one `ip` command per line (arguments split at whitespace), in order.
    pub fn ip_script(&self, lines: &[&str]) -> anyhow::Result<()> {
        for line in lines {
            self.ip(&line.split_whitespace().collect::<Vec<_>>())?;
        }
        Ok(())
    }

    /// Turns IPv4 and IPv6 forwarding of `dev` on or off (the calling thread must be in the
    /// namespace: `/proc/sys/net` shows the thread's own).
    pub fn set_forwarding(&self, dev: &str, on: bool) -> anyhow::Result<()> {
        for family in ["ipv4", "ipv6"] {
            let path = format!("/proc/sys/net/{family}/conf/{dev}/forwarding");
            std::fs::write(&path, if on { "1" } else { "0" })
                .with_context(|| format!("cannot write {path}"))?;
        }
        Ok(())
    }
}

/// Runs `f` on a new thread inside a new [`PrivateNetns`], which ends with the thread. A panic in
/// `f` is resumed on the caller's thread.
pub fn with_private_netns<R: Send>(f: impl FnOnce(&PrivateNetns) -> R + Send) -> anyhow::Result<R> {
    std::thread::scope(|scope| {
        match scope
            .spawn(|| PrivateNetns::enter().map(|ns| f(&ns)))
            .join()
        {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Pins the calling thread to the CPU it runs on (per-CPU state such as round-robin cursors then
/// stays put between runs).
pub fn pin_to_current_cpu() -> anyhow::Result<()> {
    // SAFETY: sched_getcpu has no preconditions; the cpu_set_t is zeroed, then one bit is set.
    let rc = unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).unwrap_or(0);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
