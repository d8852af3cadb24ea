//! The lab's processes: backend servers, `lb decap`, `lb run`, `lb register`, and talking to them.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use lb_userspace::status::Status;

use super::cmd::{self, ip};
use super::process::{NsProcess, log_tail};
use super::topology::{LB_PREFIX_V4, LB_PREFIX_V6};
use super::{BPFFS, Lab, READY_TIMEOUT, SERVER_PORT, xdp_pass};
use crate::eventually::wait_until;

impl Lab {
    /// Starts backend `i`'s lab server (port 80, both families) and waits until it listens.
    pub fn start_backend_server(&mut self, i: usize) -> anyhow::Result<()> {
        ensure!(
            i < self.opts.backends,
            "backend {i} does not exist (the lab has {})",
            self.opts.backends
        );
        ensure!(
            self.servers[i].is_none(),
            "backend {i}'s server is already running"
        );
        let name = Self::backend_name(i);
        let args: Vec<String> = vec![
            "--name".into(),
            name.clone(),
            "--listen".into(),
            format!("0.0.0.0:{SERVER_PORT}"),
            "--listen".into(),
            format!("[::]:{SERVER_PORT}"),
        ];
        let log = self.dir.join(format!("{name}-server.log"));
        let proc = NsProcess::spawn_and_wait_line(
            &format!("{name} server"),
            &self.backend_netns(i),
            &self.server_bin,
            &args,
            &log,
            "ready",
            READY_TIMEOUT,
        )?;
        self.servers[i] = Some(proc);
        Ok(())
    }

    /// Stops backend `i`'s lab server (its open connections are reset by the kernel).
    pub fn stop_backend_server(&mut self, i: usize) -> anyhow::Result<()> {
        let proc = self.servers.get_mut(i).and_then(Option::take);
        ensure!(proc.is_some(), "backend {i}'s server is not running");
        Ok(())
    }

    /// Starts `lb decap` on backend `i` and waits until its XDP program is attached.
    pub(super) fn start_decap(&mut self, i: usize) -> anyhow::Result<()> {
        let ns = self.backend_netns(i);
        let name = Self::backend_name(i);
        let pin_dir = self.pin_root()?.join(&name);
        let args: Vec<String> = vec![
            "decap".into(),
            "--iface".into(),
            "eth0".into(),
            "--pin-dir".into(),
            path_arg(&pin_dir)?,
            // Tunnel packets only from the load balancers (the `lb decap` default refuses to guess).
            "--allow-src".into(),
            LB_PREFIX_V4.into(),
            "--allow-src".into(),
            LB_PREFIX_V6.into(),
        ];
        let log = self.dir.join(format!("{name}-decap.log"));
        let mut proc =
            NsProcess::spawn(&format!("{name} decap"), &ns, &self.lb_bin()?, &args, &log)?;
        let wait_for_xdp = self.opts.wait_for_xdp;
        wait_ready(&mut proc, || {
            let link = ip(&ns, &["link", "show", "dev", "eth0"])?;
            ensure!(
                !wait_for_xdp || link.contains("prog/xdp"),
                "no XDP program on eth0 of {ns}"
            );
            Ok(())
        })?;
        self.decaps[i] = Some(proc);
        Ok(())
    }

    /// Writes `config_toml` to the lab directory and starts `lb run` in load balancer `lb`'s
    /// namespace with small map sizes (each overridable by `extra_args`) and `extra_args`; waits (30 s at most) until `lb status`
    /// answers. On failure the error carries the daemon's log tail.
    pub fn start_lb(
        &mut self,
        lb: usize,
        config_toml: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<()> {
        self.check_lb_free(lb)?;
        let config = self.lb_config_path(lb);
        std::fs::write(&config, config_toml)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let source = vec!["--config".to_owned(), path_arg(&config)?];
        self.spawn_lb(lb, source, extra_args)
    }

    /// Starts `lb run --zk ZK` (following ZooKeeper, no configuration file) in load balancer `lb`'s
    /// namespace, like [`start_lb`](Self::start_lb) otherwise. `zk` must be reachable from the LB's
    /// namespace (e.g. a server in the router namespace on [`ROUTER_LBS_V4`](super::topology::ROUTER_LBS_V4)).
    pub fn start_lb_zk(&mut self, lb: usize, zk: &str, extra_args: &[&str]) -> anyhow::Result<()> {
        self.check_lb_free(lb)?;
        self.spawn_lb(lb, vec!["--zk".to_owned(), zk.to_owned()], extra_args)
    }

    fn check_lb_free(&self, lb: usize) -> anyhow::Result<()> {
        ensure!(
            lb < self.opts.lbs,
            "load balancer {lb} does not exist (the lab has {})",
            self.opts.lbs
        );
        ensure!(
            self.lbs[lb].is_none(),
            "load balancer {lb} is already running"
        );
        Ok(())
    }

    /// `lb run` with `source_args` (`--config FILE` or `--zk HOST:PORT`); waits until it is ready.
    fn spawn_lb(
        &mut self,
        lb: usize,
        source_args: Vec<String>,
        extra_args: &[&str],
    ) -> anyhow::Result<()> {
        self.attach_pass_to_router_port(lb)?;
        let pin_dir = self.lb_pin_dir(lb);
        let mut args = self.lb_run_args(lb, source_args, extra_args)?;
        let log = self.lb_log_path(lb);
        let mut program = self.lb_bin()?;
        if let Some((wrapper, wrapper_args)) = self.opts.lb_run_wrapper.split_first() {
            args = wrapper_args
                .iter()
                .cloned()
                .chain([path_arg(&program)?])
                .chain(args)
                .collect();
            program = PathBuf::from(wrapper);
        }
        let mut proc = NsProcess::spawn(
            &format!("lb{lb}"),
            &self.lb_netns(lb),
            &program,
            &args,
            &log,
        )?;
        let lb_bin = self.lb_bin()?;
        // Ready = its maps answer `lb status`, its program is on the interface (the daemon pins the
        // maps before it attaches) and it reports itself in the status (it does so from its main
        // loop, after installing its signal handlers: a SIGHUP before that would end it).
        let ns = self.lb_netns(lb);
        let wait_for_xdp = self.opts.wait_for_xdp;
        let pid = u64::from(proc.pid());
        wait_ready(&mut proc, || {
            let status = lb_status(&lb_bin, &pin_dir)?;
            if !wait_for_xdp {
                return Ok(());
            }
            let link = ip(&ns, &["link", "show", "dev", "eth0"])?;
            ensure!(link.contains("prog/xdp"), "no XDP program on eth0 of {ns}");
            ensure!(
                status.daemon.map(|d| u64::from(d.report.pid)) == Some(pid),
                "`lb status` does not show the daemon (pid {pid}) running yet"
            );
            Ok(())
        })?;
        self.lbs[lb] = Some(proc);
        Ok(())
    }

    /// Runs a further `lb run` on load balancer `lb`'s pin directory and configuration while its
    /// daemon runs, and waits (bounded) until it exits. Returns its exit status and log.
    pub fn run_second_lb(&mut self, lb: usize) -> anyhow::Result<(ExitStatus, String)> {
        let source = vec!["--config".to_owned(), path_arg(&self.lb_config_path(lb))?];
        let args = self.lb_run_args(lb, source, &[])?;
        let log = self.dir.join(format!("lb{lb}-second.log"));
        let mut proc = NsProcess::spawn(
            &format!("second lb{lb}"),
            &self.lb_netns(lb),
            &self.lb_bin()?,
            &args,
            &log,
        )?;
        let mut exit = None;
        wait_until(READY_TIMEOUT, || {
            exit = proc.exit_status();
            exit.is_some()
        });
        let text = std::fs::read_to_string(&log)
            .with_context(|| format!("cannot read {}", log.display()))?;
        match exit {
            Some(exit) => Ok((exit, text)),
            None => {
                bail!("the second lb run on lb{lb} did not exit within {READY_TIMEOUT:?}: {text}")
            }
        }
    }

    /// Kills load balancer `lb`'s daemon with SIGKILL (no clean-up of its own) and reaps it.
    pub fn kill_lb(&mut self, lb: usize) -> anyhow::Result<()> {
        self.signal_lb(lb, libc::SIGKILL)?;
        self.stop_lb(lb)
    }

    /// `lb detach --iface eth0` on load balancer `lb`'s pin directory; returns its stdout.
    pub fn lb_detach(&self, lb: usize) -> anyhow::Result<String> {
        self.lb_detach_with(lb, &[])
    }

    /// `lb detach --iface eth0 EXTRA` on load balancer `lb`'s pin directory; returns its stdout.
    pub fn lb_detach_with(&self, lb: usize, extra: &[&str]) -> anyhow::Result<String> {
        let pin_dir = path_arg(&self.lb_pin_dir(lb))?;
        let mut args = vec!["detach", "--iface", "eth0", "--pin-dir", &pin_dir];
        args.extend_from_slice(extra);
        self.run_lb_in(&self.lb_netns(lb), &args)
    }

    /// The id of the XDP program on load balancer `lb`'s `eth0` (`None`: none is attached).
    pub fn lb_xdp_prog_id(&self, lb: usize) -> anyhow::Result<Option<u32>> {
        let link = ip(&self.lb_netns(lb), &["-d", "link", "show", "dev", "eth0"])?;
        let Some(rest) = link.split("prog/xdp id ").nth(1) else {
            return Ok(None);
        };
        let id = rest.split_whitespace().next().unwrap_or_default();
        Ok(Some(id.parse().with_context(|| {
            format!("no program id in `ip link`: {link}")
        })?))
    }

    /// Runs later daemons from `bin` (`None`: the default of [`LabOptions::lb_bin`]).
    pub fn set_lb_bin(&mut self, bin: Option<PathBuf>) {
        self.opts.lb_bin = bin;
    }

    /// Whether an XDP program is attached to load balancer `lb`'s `eth0`.
    pub fn lb_has_xdp(&self, lb: usize) -> anyhow::Result<bool> {
        Ok(ip(&self.lb_netns(lb), &["link", "show", "dev", "eth0"])?.contains("prog/xdp"))
    }

    /// The arguments of `lb run` on load balancer `lb`: small map sizes, its pin directory.
    fn lb_run_args(
        &self,
        lb: usize,
        source_args: Vec<String>,
        extra_args: &[&str],
    ) -> anyhow::Result<Vec<String>> {
        let pin_dir = self.lb_pin_dir(lb);
        let mut args: Vec<String> = ["run", "--iface", "eth0", "--pin-dir", &path_arg(&pin_dir)?]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Small map sizes, each unless `extra_args` sets it.
        for (flag, value) in [
            ("--max-services", "16"),
            ("--max-backends", "256"),
            ("--table-size", "4099"),
            ("--flow-table-size", "65536"),
            ("--persist-table-size", "4096"),
        ] {
            if !extra_args.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        // The state file in the lab's directory (removed with it), not in /var/lib/lb.
        if !extra_args.contains(&"--state-file") {
            args.extend([
                "--state-file".to_owned(),
                path_arg(&self.lb_state_file(lb))?,
            ]);
        }
        if self.opts.bgp {
            args.extend(self.announce_args(lb, extra_args)?);
        }
        args.extend(source_args);
        args.extend(extra_args.iter().map(|s| s.to_string()));
        Ok(args)
    }

    /// Gives the router's port toward load balancer `lb` an XDP program (pass everything), so the
    /// frames the LB sends back with `XDP_TX` are read at once (see [`xdp_pass`]). `lb run` does it
    /// itself; another XDP program on the LB's `eth0` (the e2e bench's `lb_floor`) needs it first.
    pub fn attach_pass_to_router_port(&mut self, lb: usize) -> anyhow::Result<()> {
        let prog = self.pin_root()?.join("router_xdp_pass");
        if !prog.exists() {
            xdp_pass::load_and_pin(&prog)?;
        }
        let port = format!("lb{lb}");
        let link = ip(&self.router_netns(), &["link", "show", "dev", &port])?;
        if !link.contains("prog/xdp") {
            // `ip -n` remounts /sys, which hides bpffs; nsenter does not.
            let prog = path_arg(&prog)?;
            let args = ["link", "set", "dev", &port, "xdpdrv", "pinned", &prog];
            cmd::in_netns(&self.router_netns(), "ip", &args)?;
        }
        Ok(())
    }

    /// Starts `lb register --zk ZK --service SERVICE --addr <backend i's address> ARGS...` inside
    /// backend `i`'s namespace (its log is `b<i>-register.log` in the lab directory). `zk` must be
    /// reachable from the backends (e.g. a server in the router namespace on
    /// [`ROUTER_BACKENDS_V4`](super::topology::ROUTER_BACKENDS_V4)). Returns at once; wait for the
    /// node (or the service in `lb status`) to appear.
    pub fn start_register(
        &mut self,
        i: usize,
        zk: &str,
        service: &str,
        v6: bool,
        extra_args: &[&str],
    ) -> anyhow::Result<()> {
        ensure!(
            i < self.opts.backends,
            "backend {i} does not exist (the lab has {})",
            self.opts.backends
        );
        ensure!(
            self.registers[i].is_none(),
            "backend {i} already runs `lb register`"
        );
        let mut args: Vec<String> = vec![
            "register".into(),
            "--zk".into(),
            zk.into(),
            "--service".into(),
            service.into(),
            "--addr".into(),
            Self::backend_addr(i, v6).to_string(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let name = Self::backend_name(i);
        let proc = NsProcess::spawn(
            &format!("{name} register"),
            &self.backend_netns(i),
            &self.lb_bin()?,
            &args,
            &self.register_log_path(i),
        )?;
        self.registers[i] = Some(proc);
        Ok(())
    }

    /// Sends a signal to backend `i`'s `lb register`.
    pub fn signal_register(&mut self, i: usize, signal: libc::c_int) -> anyhow::Result<()> {
        match self.registers.get_mut(i) {
            Some(Some(proc)) => proc.signal(signal),
            _ => bail!("backend {i} runs no `lb register`"),
        }
    }

    /// Waits (at most `timeout`) for backend `i`'s `lb register` to exit and forgets it; returns how
    /// it ended.
    pub fn wait_register_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let Some(Some(proc)) = self.registers.get_mut(i) else {
            bail!("backend {i} runs no `lb register`");
        };
        let mut exit = None;
        wait_until(timeout, || {
            exit = proc.exit_status();
            exit.is_some()
        });
        match exit {
            Some(status) => {
                self.registers[i] = None;
                Ok(status)
            }
            None => bail!(
                "backend {i}'s `lb register` did not exit within {timeout:?}\n{}",
                proc.log_tail()
            ),
        }
    }

    /// Backend `i`'s `lb register` log so far.
    pub fn register_log(&self, i: usize) -> anyhow::Result<String> {
        let log = self.register_log_path(i);
        std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))
    }

    fn register_log_path(&self, i: usize) -> PathBuf {
        self.dir
            .join(format!("{}-register.log", Self::backend_name(i)))
    }

    /// Runs `lb ARGS` to completion inside the lab namespace `netns` (e.g. the admin CLI next to a
    /// ZooKeeper server in the router namespace) and returns its stdout.
    pub fn run_lb_in(&self, netns: &str, args: &[&str]) -> anyhow::Result<String> {
        cmd::in_netns(netns, &path_arg(&self.lb_bin()?)?, args)
    }

    /// Runs `lb ARGS` to completion inside the lab namespace `netns`, whatever its exit status;
    /// returns the status and stdout (for commands whose exit status is the verdict).
    pub fn run_lb_status_in(
        &self,
        netns: &str,
        args: &[&str],
    ) -> anyhow::Result<(ExitStatus, String)> {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}/{netns}", cmd::NETNS_DIR))
            .arg("--")
            .arg(self.lb_bin()?)
            .args(args)
            .output()
            .context("cannot start nsenter")?;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// Stops load balancer `lb`'s daemon.
    pub fn stop_lb(&mut self, lb: usize) -> anyhow::Result<()> {
        let proc = self.lbs.get_mut(lb).and_then(Option::take);
        ensure!(proc.is_some(), "load balancer {lb} is not running");
        Ok(())
    }

    /// Replaces load balancer `lb`'s configuration file atomically (write + rename), then sends the
    /// daemon SIGHUP.
    pub fn rewrite_config(&mut self, lb: usize, config_toml: &str) -> anyhow::Result<()> {
        let config = self.lb_config_path(lb);
        let tmp = config.with_extension("toml.tmp");
        std::fs::write(&tmp, config_toml)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &config)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), config.display()))?;
        self.signal_lb(lb, libc::SIGHUP)
    }

    /// Sends a signal to load balancer `lb`'s daemon.
    pub fn signal_lb(&mut self, lb: usize, signal: libc::c_int) -> anyhow::Result<()> {
        match self.lbs.get_mut(lb) {
            Some(Some(proc)) => proc.signal(signal),
            _ => bail!("load balancer {lb} is not running"),
        }
    }

    /// Fails (with its log tail) when load balancer `lb`'s daemon is not running any more.
    pub fn check_lb_running(&mut self, lb: usize) -> anyhow::Result<()> {
        match self.lbs.get_mut(lb) {
            Some(Some(proc)) => proc.check_running(),
            _ => bail!("load balancer {lb} is not running"),
        }
    }

    /// `lb status --json` of load balancer `lb`, decoded.
    pub fn lb_status_json(&self, lb: usize) -> anyhow::Result<Status> {
        lb_status(&self.lb_bin()?, &self.lb_pin_dir(lb)).with_context(|| format!("lb{lb}"))
    }

    /// `lb status` of load balancer `lb`, as the operator sees it.
    /// `lb flows ARGS` on load balancer `lb`'s pin directory; returns its stdout.
    pub fn lb_flows(&self, lb: usize, args: &[&str]) -> anyhow::Result<String> {
        let pin_dir = path_arg(&self.lb_pin_dir(lb))?;
        let mut all = vec!["flows", "--pin-dir", &pin_dir];
        all.extend_from_slice(args);
        cmd::run(&path_arg(&self.lb_bin()?)?, &all)
    }

    pub fn lb_status_text(&self, lb: usize) -> anyhow::Result<String> {
        cmd::run(
            &path_arg(&self.lb_bin()?)?,
            &["status", "--pin-dir", &path_arg(&self.lb_pin_dir(lb))?],
        )
    }

    /// `lb top --count N --interval-ms MS` of load balancer `lb`: `count` frames of rates.
    pub fn lb_top_text(&self, lb: usize, count: u32, interval_ms: u32) -> anyhow::Result<String> {
        cmd::run(
            &path_arg(&self.lb_bin()?)?,
            &[
                "top",
                "--pin-dir",
                &path_arg(&self.lb_pin_dir(lb))?,
                "--count",
                &count.to_string(),
                "--interval-ms",
                &interval_ms.to_string(),
            ],
        )
    }

    /// Everything load balancer `lb`'s daemon has logged so far.
    pub fn lb_log(&self, lb: usize) -> anyhow::Result<String> {
        let log = self.lb_log_path(lb);
        std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))
    }

    pub fn lb_config_path(&self, lb: usize) -> PathBuf {
        self.dir.join(format!("lb{lb}.toml"))
    }

    fn lb_log_path(&self, lb: usize) -> PathBuf {
        self.dir.join(format!("lb{lb}.log"))
    }

    /// Load balancer `lb`'s state file (`lb run --state-file`), in the lab's directory.
    pub fn lb_state_file(&self, lb: usize) -> PathBuf {
        self.dir.join(format!("lb{lb}.state.json"))
    }

    /// Load balancer `lb`'s pin directory (under the lab's bpffs directory).
    pub fn lb_pin_dir(&self, lb: usize) -> PathBuf {
        self.pin_root_path().join(format!("lb{lb}"))
    }

    /// Where backend `i`'s `lb decap` pins its maps (`lb decap --pin-dir`).
    pub fn decap_pin_dir(&self, i: usize) -> PathBuf {
        self.pin_root_path().join(Self::backend_name(i))
    }

    /// The lab's bpffs directory (`/sys/fs/bpf/lbt-<id>`); created when the first daemon starts.
    pub fn pin_root_path(&self) -> PathBuf {
        Path::new(BPFFS).join(format!("lbt-{}", self.id))
    }

    /// Creates the lab's bpffs directory on first use.
    fn pin_root(&mut self) -> anyhow::Result<PathBuf> {
        if let Some(root) = &self.pin_root {
            return Ok(root.clone());
        }
        ensure!(
            bpffs_mounted()?,
            "bpffs is not mounted at {BPFFS}; run `cargo xtask setup`"
        );
        let root = self.pin_root_path();
        std::fs::create_dir(&root).with_context(|| format!("cannot create {}", root.display()))?;
        self.pin_root = Some(root.clone());
        Ok(root)
    }

    fn lb_bin(&self) -> anyhow::Result<PathBuf> {
        match &self.opts.lb_bin {
            Some(p) => Ok(p.clone()),
            None => lb_bin(),
        }
    }

    /// Prints the tail of every log of this lab to stderr (what a failing test wants to see).
    pub fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let name = log
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            eprintln!("{}", log_tail(&name, &log, 30));
        }
    }
}

/// Polls `ready` until it succeeds (at most [`READY_TIMEOUT`]); fails at once, with the log's tail,
/// when the process exits meanwhile.
fn wait_ready(
    proc: &mut NsProcess,
    mut ready: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut last = None;
    let became_ready = wait_until(READY_TIMEOUT, || {
        if proc.check_running().is_err() {
            return true;
        }
        last = ready().err();
        last.is_none()
    });
    proc.check_running().context("it exited while starting")?;
    match (became_ready, last) {
        (true, _) => Ok(()),
        (false, e) => Err(anyhow::anyhow!(
            "not ready within {READY_TIMEOUT:?}: {}\n{}",
            e.map(|e| format!("{e:#}")).unwrap_or_default(),
            proc.log_tail()
        )),
    }
}

fn path_arg(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// `lb status --json`, decoded into the types `lb` writes it from: a missing or renamed field, or
/// another schema version, is an error here rather than a value that reads as absent.
fn lb_status(lb_bin: &Path, pin_dir: &Path) -> anyhow::Result<Status> {
    let out = cmd::run(
        &path_arg(lb_bin)?,
        &["status", "--pin-dir", &path_arg(pin_dir)?, "--json"],
    )?;
    Status::from_json(&out).with_context(|| {
        format!(
            "decoding `lb status --json` for {}: {out}",
            pin_dir.display()
        )
    })
}

fn bpffs_mounted() -> anyhow::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace().skip(1);
        f.next() == Some(BPFFS) && f.next() == Some("bpf")
    }))
}

/// The first of `candidates` that exists.
fn first_existing(what: &str, hint: &str, candidates: Vec<PathBuf>) -> anyhow::Result<PathBuf> {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!("cannot find {what} (tried {}); {hint}", tried.join(", "))
        })
}

/// The `lb` binary: `$LB_BIN` (`cargo xtask test` sets it), else the workspace's release or debug build.
pub fn lb_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("LB_BIN") {
        return Ok(PathBuf::from(p));
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target");
    first_existing(
        "the lb binary",
        "set LB_BIN or build it (`cargo xtask build`)",
        vec![
            target.join("release").join("lb"),
            target.join("debug").join("lb"),
        ],
    )
}

/// `$LAB_SERVER_BIN`, else beside the running executable (a binary of this package) or one directory
/// up (an integration test in `target/<profile>/deps`).
pub(super) fn find_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("LAB_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("lab-server"))
        .collect();
    first_existing(
        "the lab-server binary",
        "set LAB_SERVER_BIN or build it (`cargo build -p lb-tests --bins`)",
        candidates,
    )
}
