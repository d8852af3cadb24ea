//! `lb register`: a backend announces itself. It keeps an ephemeral node
//! `<root>/services/<service>/backends/<addr>` (`{"weight": N, "state": "active"}`) for as long as it
//! runs, re-creating it after a session expiry; with `--check`, only while a local check passes.
//! On SIGTERM/SIGINT it sets `"state": "draining"`, waits the drain time (established connections
//! finish, no new ones come), deletes the node and exits 0.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tracing::{info, warn};
use zookeeper_client::{Client, CreateMode, Error as ZkErr, SessionState};

use crate::health::check::{self, HttpProbe};
use crate::model::{self, BackendSpec, BackendState, service_from_json};
use crate::zk::acl::node_acls;
use crate::zk::backoff::Backoff;
use crate::zk::client::ZkTarget;

/// How often the node and the check are looked after.
const TICK: Duration = Duration::from_secs(1);

/// A local health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalCheck {
    /// A TCP connect to the backend's address.
    Tcp(SocketAddr),
    /// `GET path` to `addr`, passing on a 2xx or 3xx status.
    Http {
        addr: SocketAddr,
        host: String,
        path: String,
    },
}

impl LocalCheck {
    /// Reads `tcp` or `http://HOST:PORT/PATH` (HOST an IP address; port defaults to 80).
    pub fn parse(text: &str, backend: SocketAddr) -> anyhow::Result<LocalCheck> {
        if text == "tcp" {
            return Ok(LocalCheck::Tcp(backend));
        }
        let Some(rest) = text.strip_prefix("http://") else {
            bail!("--check {text:?}: expected `tcp` or `http://HOST:PORT/PATH`");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = authority
            .parse()
            .or_else(|_| format!("{authority}:80").parse())
            .map_err(|_| {
                anyhow::anyhow!(
                    "--check {text:?}: {authority:?} is not IP:PORT (use an address, e.g. http://127.0.0.1:8080/healthz)"
                )
            })?;
        Ok(LocalCheck::Http {
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// Runs the check once; `Err` says why it failed.
    pub async fn run(&self, timeout: Duration) -> Result<(), String> {
        let result = match self {
            LocalCheck::Tcp(addr) => check::within(timeout, check::probe_tcp(*addr)).await,
            LocalCheck::Http { addr, host, path } => {
                let probe = HttpProbe {
                    addr: *addr,
                    host: host.clone(),
                    path: path.clone(),
                    expect: (200, 399),
                };
                check::within(timeout, probe.run()).await
            }
        };
        result.map_err(|e| e.to_string())
    }
}

/// What to register.
#[derive(Clone, Debug)]
pub struct Registration {
    pub target: ZkTarget,
    pub session_timeout: Duration,
    pub service: String,
    pub backend: BackendSpec,
    pub check: Option<LocalCheck>,
    pub drain: Duration,
}

impl Registration {
    fn path(&self) -> String {
        self.target
            .schema
            .backend_path(&self.service, self.backend.addr)
    }

    fn data(&self, state: BackendState) -> Vec<u8> {
        serde_json::json!({ "weight": self.backend.weight, "state": state.name() })
            .to_string()
            .into_bytes()
    }
}

/// `lb register`: runs until SIGTERM/SIGINT, then drains and leaves.
pub fn run(registration: Registration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = int.recv() => info!("SIGINT: draining"),
                _ = term.recv() => info!("SIGTERM: draining"),
            }
        };
        register(registration, shutdown).await
    })
}

/// Keeps the node until `shutdown` completes, then drains and deletes it.
pub async fn register(
    registration: Registration,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut keeper = Keeper::new(registration);
    tokio::pin!(shutdown);
    let mut service_checked = false;
    let mut failures: u32 = 0;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let client = tokio::select! {
            result = keeper.reg.target.connect(keeper.reg.session_timeout) => match result {
                Ok(client) => client,
                Err(e) => {
                    failures += 1;
                    // The first failure and then every tenth, not every retry.
                    if failures == 1 || failures.is_multiple_of(10) {
                        warn!(attempt = failures, "{e}; retrying");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                        () = &mut shutdown => {
                            info!("stopped before ZooKeeper was reached; nothing to remove");
                            return Ok(());
                        }
                    }
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        backoff.reset();
        failures = 0;
        // Once: a later bad edit of the service node must not stop a running backend's registration.
        if !service_checked {
            keeper.check_service(&client).await?;
            service_checked = true;
        }
        info!(session = %client.session_id(), node = %keeper.reg.path(), "ZooKeeper session open");
        match keeper.keep(&client, &mut shutdown).await? {
            KeepEnd::Done => return Ok(()),
            KeepEnd::SessionLost => {
                warn!(
                    "ZooKeeper session expired: the node went with it; re-creating it on a new session"
                );
                keeper.ours = false;
            }
        }
    }
}

enum KeepEnd {
    Done,
    SessionLost,
}

struct Keeper {
    reg: Registration,
    /// The node exists and belongs to the current session.
    ours: bool,
    /// The last check result (true without a check).
    healthy: bool,
    /// Something was logged about the node being in the way (log once per episode).
    blocked_logged: bool,
}

impl Keeper {
    fn new(reg: Registration) -> Keeper {
        let healthy = reg.check.is_none();
        Keeper {
            reg,
            ours: false,
            healthy,
            blocked_logged: false,
        }
    }

    /// Refuses (at once, with the reason) a backend that does not fit its service.
    async fn check_service(&self, client: &Client) -> anyhow::Result<()> {
        let path = self.reg.target.schema.service_path(&self.reg.service);
        match client.get_data(&path).await {
            Ok((data, _)) => {
                let (service, _) =
                    service_from_json(&self.reg.service, &data).with_context(|| {
                        format!(
                            "the service node {path} is invalid, so {} cannot join it",
                            self.reg.backend.addr
                        )
                    })?;
                service
                    .with_backend(self.reg.backend.clone())
                    .validate()
                    .with_context(|| format!("refusing to register {}", self.reg.backend.addr))?;
                Ok(())
            }
            Err(ZkErr::NoNode) => {
                model::ServiceSpec::new(&self.reg.service, self.reg.backend.addr)
                    .validate()
                    .context("invalid --service")?;
                bail!(
                    "service {} does not exist ({path} is missing); create it first with `lb service put {} --vip IP:PORT`",
                    self.reg.service,
                    self.reg.service
                )
            }
            Err(e) => Err(e).with_context(|| format!("reading {path}")),
        }
    }

    async fn keep(
        &mut self,
        client: &Client,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> anyhow::Result<KeepEnd> {
        let mut states = client.state_watcher();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.run_check().await;
                    if let Err(e) = self.reconcile(client).await {
                        if matches!(e, ZkErr::SessionExpired) {
                            return Ok(KeepEnd::SessionLost);
                        }
                        warn!("keeping {} failed: {e}; retrying", self.reg.path());
                    }
                }
                state = states.changed() => match state {
                    SessionState::Expired | SessionState::Closed => return Ok(KeepEnd::SessionLost),
                    SessionState::AuthFailed => bail!("ZooKeeper refused the credentials ({})", crate::zk::auth::REFUSED_HINT),
                    SessionState::Disconnected => warn!("ZooKeeper connection lost; the node stays while the session lives"),
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => info!("ZooKeeper connection back"),
                },
                () = shutdown.as_mut() => {
                    self.drain_and_leave(client).await;
                    return Ok(KeepEnd::Done);
                }
            }
        }
    }

    async fn run_check(&mut self) {
        let Some(check) = &self.reg.check else {
            return;
        };
        let result = check.run(TICK).await;
        match (&result, self.healthy) {
            (Ok(()), false) => info!("local check passes: registering"),
            (Err(why), true) => warn!("local check failed ({why}): deregistering"),
            _ => {}
        }
        self.healthy = result.is_ok();
    }

    /// Makes the node exist exactly while the backend is healthy.
    async fn reconcile(&mut self, client: &Client) -> Result<(), ZkErr> {
        let path = self.reg.path();
        if !self.healthy {
            if self.ours {
                match client.delete(&path, None).await {
                    Ok(()) | Err(ZkErr::NoNode) => {}
                    Err(e) => return Err(e),
                }
                self.ours = false;
                info!(node = %path, "deregistered");
            }
            return Ok(());
        }
        if self.ours {
            // Someone may have deleted it by hand: check, and re-create below if so.
            match client.check_stat(&path).await? {
                Some(stat) if stat.ephemeral_owner == client.session_id().0 => return Ok(()),
                _ => self.ours = false,
            }
        }
        let options = CreateMode::Ephemeral.with_acls(node_acls(self.reg.target.auth.is_some()));
        let dir = self.reg.target.schema.backends_dir(&self.reg.service);
        let dir_options =
            CreateMode::Persistent.with_acls(node_acls(self.reg.target.auth.is_some()));
        match client.create(&dir, &[], &dir_options).await {
            Ok(_) | Err(ZkErr::NodeExists) => {}
            Err(ZkErr::NoNode) => {
                if !self.blocked_logged {
                    self.blocked_logged = true;
                    warn!(
                        "service {} was deleted; waiting for it to come back",
                        self.reg.service
                    );
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        match client
            .create(&path, &self.reg.data(self.reg.backend.state), &options)
            .await
        {
            Ok(_) => {
                self.ours = true;
                self.blocked_logged = false;
                info!(node = %path, weight = self.reg.backend.weight, "registered");
                Ok(())
            }
            Err(ZkErr::NodeExists) => {
                if !self.blocked_logged {
                    self.blocked_logged = true;
                    let owner = client.check_stat(&path).await?.map(|s| s.ephemeral_owner);
                    match owner {
                        Some(0) => {
                            warn!(node = %path, "a persistent node already registers this backend; leaving it alone (delete it to let lb register manage it)")
                        }
                        _ => {
                            warn!(node = %path, "the node belongs to another session (an earlier run?); waiting for it to expire")
                        }
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Marks the node draining, waits, deletes it. Best effort: the session's end removes an
    /// ephemeral node anyway.
    async fn drain_and_leave(&mut self, client: &Client) {
        let path = self.reg.path();
        if !self.ours {
            info!("not registered; nothing to drain");
            return;
        }
        match client
            .set_data(&path, &self.reg.data(BackendState::Draining), None)
            .await
        {
            Ok(_) => {
                info!(node = %path, drain = ?self.reg.drain, "draining: no new connections, established ones continue")
            }
            Err(e) => warn!("marking {path} draining failed: {e}; leaving now"),
        }
        tokio::time::sleep(self.reg.drain).await;
        match client.delete(&path, None).await {
            Ok(()) | Err(ZkErr::NoNode) => info!(node = %path, "deregistered"),
            Err(e) => warn!("deleting {path} failed: {e}; it goes when the session closes"),
        }
        self.ours = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn backend() -> SocketAddr {
        "198.18.2.11:80".parse().unwrap()
    }

    #[test]
    fn parses_checks() {
        assert_eq!(
            LocalCheck::parse("tcp", backend()).unwrap(),
            LocalCheck::Tcp(backend())
        );
        assert_eq!(
            LocalCheck::parse("http://127.0.0.1:8080/healthz", backend()).unwrap(),
            LocalCheck::Http {
                addr: "127.0.0.1:8080".parse().unwrap(),
                host: "127.0.0.1:8080".into(),
                path: "/healthz".into()
            }
        );
        let LocalCheck::Http { addr, path, .. } =
            LocalCheck::parse("http://127.0.0.1", backend()).unwrap()
        else {
            panic!("http")
        };
        assert_eq!((addr.port(), path.as_str()), (80, "/"));
        for bad in ["udp", "https://127.0.0.1/", "http://localhost:80/"] {
            assert!(LocalCheck::parse(bad, backend()).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn http_check_reads_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for answer in ["HTTP/1.0 200 OK\r\n\r\n", "HTTP/1.0 503 Busy\r\n\r\n"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let check = LocalCheck::parse(&format!("http://{addr}/healthz"), backend()).unwrap();
        assert_eq!(check.run(Duration::from_secs(2)).await, Ok(()));
        let err = check.run(Duration::from_secs(2)).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        server.await.unwrap();
    }
}
