//! A private ZooKeeper server for tests: Debian's `zookeeper` package (3.8) started as a standalone
//! server on 127.0.0.1 with a free port and its own data directory, both removed when it is dropped.
//!
//! The JVM is started directly (`java -cp ... QuorumPeerMain zoo.cfg`) rather than through
//! `zkServer.sh`, so the fixture owns the process: it knows its pid, kills exactly it, and never
//! touches a system-wide ZooKeeper.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

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

/// A running (or stopped) private ZooKeeper server.
pub struct ZkServer {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl ZkServer {
    /// Starts a server on 127.0.0.1 and a free port; returns once it answers `srvr` as standalone.
    pub fn start() -> anyhow::Result<ZkServer> {
        if !Path::new(ZOOKEEPER_JAR).exists() {
            bail!(
                "{ZOOKEEPER_JAR} is missing: install Debian's ZooKeeper server with `apt-get install zookeeper` \
                 (or run `cargo xtask setup`)"
            );
        }
        let dir = unique_temp_dir()?;
        let port = free_port()?;
        let mut server = ZkServer {
            dir,
            port,
            child: None,
        };
        fs::create_dir_all(server.data_dir())
            .with_context(|| format!("creating {}", server.data_dir().display()))?;
        fs::write(server.config_path(), server.config_text())
            .with_context(|| format!("writing {}", server.config_path().display()))?;
        server.spawn()?;
        Ok(server)
    }

    /// `127.0.0.1:PORT`, the connect string clients use.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
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
        self.stop()?;
        self.spawn()
    }

    /// Runs one `zkCli.sh` command against this server (e.g. `create /lb ""`) and returns its output.
    /// This is the operator's tool, so tests can check that hand edits behave like the admin CLI's.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("java")
            .arg("-cp")
            .arg(classpath())
            .arg(CLI_MAIN)
            .arg("-server")
            .arg(self.connect_string())
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
             clientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\n\
             4lw.commands.whitelist=srvr,ruok\n\
             admin.enableServer=false\n\
             minSessionTimeout={min}\n\
             maxSessionTimeout=60000\n",
            data = self.data_dir().display(),
            port = self.port,
            min = 2 * TICK_MS,
        )
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let child = Command::new("java")
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
        self.wait_ready()
    }

    /// Polls `srvr` until the server says it is standalone; fails early if the JVM exits.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "the ZooKeeper server exited ({status}) before it was ready; its log {}:\n{}",
                    self.log_path().display(),
                    log_tail(&self.log_path())
                );
            }
            if four_letter_word(self.addr(), "srvr").is_ok_and(|r| r.contains("Mode: standalone")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.stop();
                bail!(
                    "the ZooKeeper server on {} was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    self.addr(),
                    log_tail(&self.log_path())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
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
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to pick a port")?;
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
}
