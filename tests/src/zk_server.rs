//! A private ZooKeeper server for tests: Debian's `zookeeper` package (3.8) started as a standalone
//! server on 127.0.0.1 with a free port and its own data directory, both removed when it is dropped.
//!
//! The JVM is started directly (`java -cp ... QuorumPeerMain zoo.cfg`) rather than through
//! `zkServer.sh`, so the fixture owns the process: it knows its pid, kills exactly it, and never
//! touches a system-wide ZooKeeper.
//!
//! [`ZkServer::start_with`] can start it inside a named network namespace (`/run/netns/NAME`, e.g. a
//! lab's router) listening on an address the lab's other namespaces reach, and as a member of a
//! quorum ([`Quorum`], see `zk_ensemble`).

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::eventually::Eventually;

/// Where Debian's package installs the server's jar; its manifest names every other jar it needs.
const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// Debian's configuration directory holds the log4j settings the server expects on its classpath.
const ZOOKEEPER_CONF_DIR: &str = "/etc/zookeeper/conf";
const SERVER_MAIN: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";
const CLI_MAIN: &str = "org.apache.zookeeper.ZooKeeperMain";
/// How long a JVM start may take before the fixture gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Tick of the test server: session timeouts are multiples of it, so a short tick lets tests expire
/// sessions in a second or two.
const TICK_MS: u32 = 500;

/// Where named network namespaces live (`ip netns add`).
const NETNS_DIR: &str = "/run/netns";

/// The peer port and the leader-election port of a quorum member (on its member address).
pub const QUORUM_PORT: u16 = 2888;
pub const ELECTION_PORT: u16 = 3888;

/// Where the server runs and listens.
#[derive(Clone, Debug)]
pub struct ZkServerOptions {
    /// A named network namespace to run in; `None`: this process's namespace.
    pub netns: Option<String>,
    /// The address it listens on (`0.0.0.0` for every address of the namespace).
    pub bind: IpAddr,
    /// The client port; `None`: a free one.
    pub port: Option<u16>,
    /// A member of this quorum instead of a standalone server.
    pub quorum: Option<Quorum>,
}

/// A server's place in a quorum: `server.N=ADDR:2888:3888` for every member, its own `myid`.
#[derive(Clone, Debug)]
pub struct Quorum {
    /// `members[i]` is server `i + 1`.
    pub members: Vec<IpAddr>,
    /// This server's id, `1..=members.len()`.
    pub myid: usize,
}

impl Default for ZkServerOptions {
    fn default() -> Self {
        ZkServerOptions {
            netns: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            quorum: None,
        }
    }
}

/// A running (or stopped) private ZooKeeper server. Keep it on the thread that started (or
/// restarted) it: the JVM is killed when that thread ends.
pub struct ZkServer {
    dir: PathBuf,
    port: u16,
    opts: ZkServerOptions,
    child: Option<Child>,
}

impl ZkServer {
    /// Starts a server on 127.0.0.1 and a free port; returns once it answers `srvr` as standalone.
    pub fn start() -> anyhow::Result<ZkServer> {
        ZkServer::start_with(ZkServerOptions::default())
    }

    /// Starts a server as `opts` say (by default on a free port of that namespace); returns once
    /// it serves (a quorum member: once it is the leader or a follower).
    pub fn start_with(opts: ZkServerOptions) -> anyhow::Result<ZkServer> {
        let mut server = ZkServer::launch(opts)?;
        server.wait_ready()?;
        Ok(server)
    }

    /// Starts the JVM without waiting until it serves (the members of a quorum are all launched
    /// before any of them can serve); [`wait_ready`](Self::wait_ready) waits.
    pub fn launch(opts: ZkServerOptions) -> anyhow::Result<ZkServer> {
        if !Path::new(ZOOKEEPER_JAR).exists() {
            bail!(
                "{ZOOKEEPER_JAR} is missing: install Debian's ZooKeeper server with `apt-get install zookeeper` \
                 (or run `cargo xtask setup`)"
            );
        }
        let dir = unique_temp_dir()?;
        let bind = opts.bind;
        let port = match opts.port {
            Some(port) => port,
            None => in_netns(opts.netns.as_deref(), move || free_port(bind))??,
        };
        let mut server = ZkServer {
            dir,
            port,
            opts,
            child: None,
        };
        fs::create_dir_all(server.data_dir())
            .with_context(|| format!("creating {}", server.data_dir().display()))?;
        fs::write(server.config_path(), server.config_text())
            .with_context(|| format!("writing {}", server.config_path().display()))?;
        if let Some(quorum) = &server.opts.quorum {
            let myid = server.data_dir().join("myid");
            fs::write(&myid, format!("{}\n", quorum.myid))
                .with_context(|| format!("writing {}", myid.display()))?;
        }
        server.spawn()?;
        Ok(server)
    }

    /// `IP:PORT`, the connect string clients use (loopback when it listens on every address).
    pub fn connect_string(&self) -> String {
        self.addr().to_string()
    }

    /// The address it answers on (from inside its namespace).
    pub fn addr(&self) -> SocketAddr {
        let ip = if self.opts.bind.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.opts.bind
        };
        SocketAddr::new(ip, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL: like a crash, sessions stay in its data for the restart) and waits
    /// for it to exit. Stopping a stopped server does nothing.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // The process may already have exited on its own; killing a zombie is harmless.
            let _ = child.kill();
            child
                .wait()
                .context("waiting for the ZooKeeper server to exit")?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same data (nodes and sessions survive).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.relaunch()?;
        self.wait_ready()
    }

    /// Like [`restart`](Self::restart) without waiting until it serves.
    pub fn relaunch(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// The `Mode:` its `srvr` answer gives (`standalone`, `leader`, `follower`), asked from inside
    /// its namespace; an error while it does not serve.
    pub fn mode(&self) -> anyhow::Result<String> {
        let answer = self.four_letter_word("srvr")?;
        answer
            .lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_owned())
            .with_context(|| format!("no Mode in the srvr answer of {}: {answer:?}", self.addr()))
    }

    /// Sends a four-letter word to it from inside its namespace (e.g. `cons`: its client connections).
    pub fn four_letter_word(&self, word: &str) -> anyhow::Result<String> {
        let addr = self.addr();
        in_netns(self.opts.netns.as_deref(), || four_letter_word(addr, word))?
            .with_context(|| format!("`{word}` to ZooKeeper at {addr}"))
    }

    /// Runs one `zkCli.sh` command against this server (e.g. `create /lb ""`) and returns its output.
    /// This is the operator's tool, so tests can check that hand edits behave like the admin CLI's.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        cli_in(self.opts.netns.as_deref(), &self.connect_string(), args)
    }
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("zoo.cfg")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn config_text(&self) -> String {
        format!(
            "tickTime={TICK_MS}\n\
             dataDir={data}\n\
             clientPort={port}\n\
             clientPortAddress={bind}\n\
             maxClientCnxns=0\n\
             forceSync=no\n\
             4lw.commands.whitelist=srvr,ruok,cons\n\
             admin.enableServer=false\n\
             minSessionTimeout={min}\n\
             maxSessionTimeout=60000\n{quorum}",
            data = self.data_dir().display(),
            port = self.port,
            bind = self.opts.bind,
            min = 2 * TICK_MS,
            quorum = self.quorum_config_text(),
        )
    }

    /// The quorum lines: every member, short limits (a follower that loses its leader for two
    /// seconds looks for another; a peer that does not answer in a second is skipped), so elections
    /// take seconds.
    fn quorum_config_text(&self) -> String {
        let Some(quorum) = &self.opts.quorum else {
            return String::new();
        };
        let mut text = "initLimit=20\nsyncLimit=4\ncnxTimeout=1000\n".to_owned();
        for (i, ip) in quorum.members.iter().enumerate() {
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            text.push_str(&format!(
                "server.{}={host}:{QUORUM_PORT}:{ELECTION_PORT}\n",
                i + 1
            ));
        }
        text
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let mut cmd = self.command("java");
        // SIGKILL to the JVM when the thread that started it ends, so a test killed before `Drop`
        // leaves no server behind (the setting survives nsenter's exec).
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .arg("-Xmx256m")
            .arg(format!("-Dzookeeper.log.dir={}", self.dir.display()))
            .arg("-cp")
            .arg(classpath())
            .arg(SERVER_MAIN)
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting java (is the `default-jre-headless` package installed?)")?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `srvr` until the server serves (standalone, or a quorum's leader or follower); fails
    /// early if the JVM exits.
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        let addr = self.addr();
        let netns = self.opts.netns.clone();
        let log = self.log_path();
        let ready_modes: &[&str] = if self.opts.quorum.is_some() {
            &["Mode: leader", "Mode: follower"]
        } else {
            &["Mode: standalone"]
        };
        let child = self
            .child
            .as_mut()
            .context("the ZooKeeper server is not running")?;
        let mut exited = None;
        // A member waits for the others too (they start together, on a shared machine).
        let timeout = if self.opts.quorum.is_some() {
            2 * READY_TIMEOUT
        } else {
            READY_TIMEOUT
        };
        let ready = Eventually::new(
            format!("the ZooKeeper server on {addr} to be ready"),
            timeout,
        )
        .every(Duration::from_millis(100))
        .poll(|| {
            if exited.is_none() {
                exited = child.try_wait().ok().flatten();
            }
            if exited.is_some() {
                return Ok(());
            }
            match in_netns(netns.as_deref(), move || four_letter_word(addr, "srvr")) {
                Ok(Ok(answer)) if ready_modes.iter().any(|m| answer.contains(m)) => Ok(()),
                Ok(Ok(answer)) => Err(answer),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("{e:#}")),
            }
        });
        if let Some(status) = exited {
            self.child = None;
            bail!(
                "the ZooKeeper server exited ({status}) before it was ready; its log {}:\n{}",
                log.display(),
                log_tail(&log)
            );
        }
        if let Err(e) = ready {
            let _ = self.stop();
            bail!("{e:#}; its log:\n{}", log_tail(&log));
        }
        Ok(())
    }
}

impl ZkServer {
    /// `program`, run inside the server's namespace (by `nsenter`, which execs it: same pid).
    fn command(&self, program: &str) -> Command {
        command_in(self.opts.netns.as_deref(), program)
    }
}

/// `program`, run inside the named namespace (by `nsenter`, which execs it: same pid) or here.
fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={NETNS_DIR}/{ns}"))
                .arg("--")
                .arg(program);
            cmd
        }
    }
}

/// Runs `f` on a thread that joined the named network namespace (or here, without one).
fn in_netns<T: Send>(netns: Option<&str>, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    match netns {
        Some(netns) => crate::lab::run_in_netns(netns, f),
        None => Ok(f()),
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs one `zkCli.sh` command against `connect` (one or more `HOST:PORT`) from the named
/// namespace (or this one) and returns its output.
pub fn cli_in(netns: Option<&str>, connect: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = command_in(netns, "java")
        .arg("-cp")
        .arg(classpath())
        .arg(CLI_MAIN)
        .arg("-server")
        .arg(connect)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running zkCli (java ZooKeeperMain)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("zkCli {args:?} failed ({}): {text}", output.status);
    }
    Ok(text)
}

fn classpath() -> String {
    format!("{ZOOKEEPER_CONF_DIR}:{ZOOKEEPER_JAR}")
}

/// Sends a ZooKeeper four-letter command and returns the whole answer.
pub fn four_letter_word(addr: SocketAddr, word: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(word.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// A port the kernel just handed out on 127.0.0.1. Another process could take it before the
/// server binds it; the server then fails to start and says so.
fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0 to pick a port"))?;
    Ok(listener.local_addr()?.port())
}

fn unique_temp_dir() -> anyhow::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // `create_dir` fails on an existing directory, so a leftover of another process is skipped,
    // never reused or removed.
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lb-zk-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!(
        "no free lb-zk-* directory name in {}",
        std::env::temp_dir().display()
    )
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_restarts_and_cleans_up() -> anyhow::Result<()> {
        let mut server = ZkServer::start()?;
        let dir = server.dir.clone();
        assert!(four_letter_word(server.addr(), "ruok")?.contains("imok"));
        server.stop()?;
        assert!(four_letter_word(server.addr(), "ruok").is_err());
        server.restart()?;
        assert!(four_letter_word(server.addr(), "srvr")?.contains("Mode: standalone"));
        drop(server);
        assert!(!dir.exists(), "the temp dir must be removed on drop");
        Ok(())
    }

    /// A namespace this test creates and removes.
    struct TestNetns(String);

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn starts_inside_a_network_namespace() -> anyhow::Result<()> {
        let name = format!("lbzk-{}", std::process::id());
        let status = Command::new("ip").args(["netns", "add", &name]).status()?;
        anyhow::ensure!(status.success(), "ip netns add {name} failed (root needed)");
        let ns = TestNetns(name);
        let status = Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()?;
        anyhow::ensure!(status.success(), "ip link set lo up in {} failed", ns.0);
        let server = ZkServer::start_with(ZkServerOptions {
            netns: Some(ns.0.clone()),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ..ZkServerOptions::default()
        })?;
        let addr = server.addr();
        let inside = in_netns(Some(&ns.0), move || four_letter_word(addr, "ruok"))??;
        assert!(inside.contains("imok"));
        let out = server.cli(&["create", "/x", "y"])?;
        assert!(out.contains("Created /x"), "{out}");
        drop(server);
        Ok(())
    }
}
