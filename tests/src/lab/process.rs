//! Long-running processes inside a lab namespace (servers, `lb run`, `lb decap`): spawned with
//! `nsenter`, output to a log file, stopped by pid when dropped.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::cmd::NETNS_DIR;
use crate::eventually::Eventually;

/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A child process running in a namespace. Dropping it stops it.
pub struct NsProcess {
    what: String,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl NsProcess {
    /// Starts `program args` in `netns`; stdout and stderr go to `log` (appended).
    pub fn spawn(
        what: &str,
        netns: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn_inner(what, netns, program, args, log, false)
    }

    /// Like [`spawn`](Self::spawn), then waits (bounded) for the first line the program writes on stdout,
    /// which must be `expected`: the program's way to say it is ready. The rest of stdout goes nowhere.
    pub fn spawn_and_wait_line(
        what: &str,
        netns: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        expected: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut proc = Self::spawn_inner(what, netns, program, args, log, true)?;
        let stdout = proc
            .child
            .stdout
            .take()
            .context("child has no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            // Keep the pipe drained until the process exits so it never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(line)) if line.trim_end() == expected => Ok(proc),
            Ok(Ok(line)) => bail!(
                "{what}: expected `{expected}` on stdout, got {line:?}\n{}",
                proc.log_tail()
            ),
            Ok(Err(e)) => bail!(
                "{what}: reading its stdout failed: {e}\n{}",
                proc.log_tail()
            ),
            Err(_) => bail!("{what}: not ready within {timeout:?}\n{}", proc.log_tail()),
        }
    }

    fn spawn_inner(
        what: &str,
        netns: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        pipe_stdout: bool,
    ) -> anyhow::Result<Self> {
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open log file {}", log.display()))?;
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(
                log_file
                    .try_clone()
                    .context("cannot duplicate the log file handle")?,
            )
        };
        // Without --fork, nsenter execs the program itself, so the child's pid is the program's pid.
        let mut cmd = Command::new("nsenter");
        // SAFETY: the hook only calls prctl, which is async-signal-safe. It makes the kernel send
        // SIGTERM to the child when the thread that spawned it ends, so a test killed before `Drop`
        // leaves no daemon behind (the setting survives nsenter's exec).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .arg(format!("--net={NETNS_DIR}/{netns}"))
            .arg("--")
            .arg(program)
            .args(args)
            // Plain logs: tests search them for messages.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("{what}: cannot start {} in {netns}", program.display()))?;
        Ok(Self {
            what: what.into(),
            child,
            log: log.into(),
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.what, &self.log, 40)
    }

    /// Fails (with the log's tail) when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.poll_exit() {
            bail!("{} exited ({status})\n{}", self.what, self.log_tail());
        }
        Ok(())
    }

    /// How the process ended, once it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.poll_exit()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Sends `signal` to the process, if it has not exited (so a reused pid is never signalled).
    pub fn signal(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        self.check_running()?;
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!(
                "{}: kill({pid}, {signal}): {}",
                self.what,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// SIGTERM, a bounded wait, then SIGKILL. Returns how the process ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.poll_exit().is_some() {
            return self.exit;
        }
        let _ = self.signal(libc::SIGTERM);
        let exited = Eventually::new(format!("{} to exit after SIGTERM", self.what), STOP_GRACE)
            .every(Duration::from_millis(10))
            .poll(|| self.poll_exit().ok_or("still running"));
        if let Err(e) = exited {
            eprintln!("lab: {e:#}; killing it");
        } else {
            return self.exit;
        }
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
        self.exit
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file, headed by what it is.
pub fn log_tail(what: &str, log: &Path, lines: usize) -> String {
    let mut text = String::new();
    let read = File::open(log).and_then(|mut f| f.read_to_string(&mut text));
    if let Err(e) = read {
        return format!("--- {what}: cannot read {}: {e}", log.display());
    }
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    format!(
        "--- last {} lines of {} ({what}):\n{}",
        tail.len(),
        log.display(),
        tail.join("\n")
    )
}
