//! The ZooKeeper source: follows `<root>` and sends validated desired states to the daemon.
//!
//! - One persistent recursive watch on the root; every event only marks the tree dirty.
//! - A full read on start, after every reconnect and after a session expiry (persistent watches can
//!   miss events across a reconnect, ZOOKEEPER-4698), and when the tree is dirty: at once for the
//!   first change after a quiet period (no read for `debounce_quiet`), so a single change applies
//!   without waiting; after a debounce within a burst (`debounce_quiet` without events, or
//!   `debounce_max` after the first one), so the rest of a burst of writes becomes one state.
//! - Between full reads (our schema), a read covers only the services whose nodes the events
//!   named, merged into the tree last read: at 100,000 backends a change reads a few nodes, not
//!   all of them.
//! - Fail static: while ZooKeeper is unreachable or the session is gone nothing is sent, so the
//!   daemon keeps forwarding with the last state, indefinitely. Reconnects back off exponentially
//!   with jitter.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tracing::{error, info, warn};
use zookeeper_client::{AddWatchMode, Client, EventType, SessionState};

use super::backoff::Backoff;
use super::client::{ZkError, ZkTarget};
use super::guard::{GuardConfig, GuardEvent, MassRemovalGuard};
use super::registry::{self, Registry};
use super::snapshot::{RawService, RawTree, Rejection, SnapshotBuilder, Warning};
use crate::log_values::List;
use crate::model::DesiredState;
use crate::report::unix_ms;
pub use crate::report::{ZkConnection, ZkStatus};

/// How the source behaves; [`ZkSourceConfig::new`] has the defaults.
#[derive(Clone, Debug)]
pub struct ZkSourceConfig {
    pub target: ZkTarget,
    pub session_timeout: Duration,
    /// Rebuild once no event came for this long...
    pub debounce_quiet: Duration,
    /// ...or this long after the first event of a burst, whichever is first.
    pub debounce_max: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub guard: GuardConfig,
    /// Another registry's tree under the root (`--zk-format curator|serverset`); `None`: our own
    /// schema.
    pub registry: Option<Arc<Registry>>,
    /// Told each service of the first full read (our schema) as soon as its nodes are read.
    pub first_read_hook: Option<ServiceReadHook>,
}

/// Called with a service's name and nodes as soon as a read has them all, before the rest of the
/// tree: start-up builds the service's tables meanwhile (1,000 Maglev tables are ~1 s of CPU).
#[derive(Clone)]
pub struct ServiceReadHook(pub Arc<ServiceRead>);

/// What a [`ServiceReadHook`] calls: the service's name and nodes.
pub type ServiceRead = dyn Fn(&str, &RawService) + Send + Sync;

impl std::fmt::Debug for ServiceReadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceReadHook")
    }
}

impl ZkSourceConfig {
    pub fn new(target: ZkTarget) -> ZkSourceConfig {
        ZkSourceConfig {
            target,
            session_timeout: Duration::from_secs(10),
            debounce_quiet: Duration::from_millis(100),
            debounce_max: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            guard: GuardConfig::default(),
            registry: None,
            first_read_hook: None,
        }
    }
}

/// A running source. Dropping it stops the task (and closes the session).
pub struct ZkSource {
    /// `None` until the first full read; then every state built (after the guard).
    pub states: watch::Receiver<Option<Arc<DesiredState>>>,
    pub status: watch::Receiver<ZkStatus>,
    resync: Arc<Notify>,
    task: JoinHandle<()>,
}

impl ZkSource {
    /// Starts following ZooKeeper on the current tokio runtime.
    pub fn spawn(config: ZkSourceConfig) -> ZkSource {
        let (states_tx, states) = watch::channel(None);
        let (status_tx, status) = watch::channel(ZkStatus {
            connect: config.target.connect.clone(),
            root: config.target.schema.root().to_owned(),
            connection: ZkConnection::Connecting,
            session_id: None,
            last_sync_unix_ms: None,
            rejections: 0,
            current_rejections: 0,
            held_backends: 0,
            full_reads: 0,
            partial_reads: 0,
            services: 0,
        });
        let resync = Arc::new(Notify::new());
        let worker = Worker {
            guard: MassRemovalGuard::new(config.guard),
            config,
            states_tx,
            status_tx,
            built: DesiredState::default(),
            raw: None,
            snapshots: SnapshotBuilder::default(),
            logged_rejections: BTreeSet::new(),
            logged_warnings: BTreeSet::new(),
        };
        let task = tokio::spawn(worker.run(resync.clone()));
        ZkSource {
            states,
            status,
            resync,
            task,
        }
    }

    /// Asks for a full read now (SIGHUP).
    pub fn resync(&self) {
        self.resync.notify_one();
    }
}

impl Drop for ZkSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a session's follow loop ended.
enum SessionEnd {
    Expired,
    AuthFailed,
    /// Closed, or an error that leaves the session unusable.
    Lost(String),
}

struct Worker {
    config: ZkSourceConfig,
    states_tx: watch::Sender<Option<Arc<DesiredState>>>,
    status_tx: watch::Sender<ZkStatus>,
    /// The last state built from the tree (before the guard): the "last good" of each service.
    built: DesiredState,
    /// The tree as last read (our schema only): a change re-reads just the services it touched.
    raw: Option<RawTree>,
    /// Builds the state of `raw`, again only for the services a partial read re-read.
    snapshots: SnapshotBuilder,
    guard: MassRemovalGuard,
    logged_rejections: BTreeSet<Rejection>,
    logged_warnings: BTreeSet<Warning>,
}

/// A burst of events not yet read.
#[derive(Clone, Copy)]
struct Dirty {
    first: Instant,
    last: Instant,
    /// Read at `first`, without waiting for quiet: the tree changed after a quiet period (or must
    /// be read in full: start, reconnect, resync).
    now: bool,
}

impl Dirty {
    fn at_once(at: Instant) -> Dirty {
        Dirty {
            first: at,
            last: at,
            now: true,
        }
    }

    /// When to read: at once, or after the debounce.
    fn read_at(&self, quiet: Duration, max: Duration) -> Instant {
        if self.now {
            self.first
        } else {
            (self.last + quiet).min(self.first + max)
        }
    }
}

/// The dirty mark after a change event at `now`, given the current one and when the tree was last
/// read: the first change after a quiet period is read at once, later ones of a burst are debounced.
fn mark_changed(
    dirty: Option<Dirty>,
    last_read: Option<Instant>,
    now: Instant,
    quiet: Duration,
) -> Dirty {
    match dirty {
        Some(d) => Dirty {
            first: d.first,
            last: now,
            now: d.now,
        },
        None if last_read.is_none_or(|t| now.saturating_duration_since(t) >= quiet) => {
            Dirty::at_once(now)
        }
        None => Dirty {
            first: now,
            last: now,
            now: false,
        },
    }
}

/// What the next read must cover.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Changed {
    /// The whole tree (start, reconnect, resync, a change above the services).
    All,
    /// Only these services (their node, backends list and backends).
    Services(BTreeSet<String>),
}

impl Changed {
    fn none() -> Changed {
        Changed::Services(BTreeSet::new())
    }

    /// Adds a change of `service` (`None`: of something a full read must cover).
    fn add(&mut self, service: Option<String>) {
        match (&mut *self, service) {
            (Changed::All, _) => {}
            (Changed::Services(names), Some(name)) => {
                names.insert(name);
            }
            (_, None) => *self = Changed::All,
        }
    }
}

/// The service a changed znode at `path` belongs to: `<services>/<name>` or below it; `None` for
/// anything else (which a full read covers).
fn service_of_path(services_dir: &str, path: &str) -> Option<String> {
    let rest = path.strip_prefix(services_dir)?.strip_prefix('/')?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

impl Worker {
    async fn run(mut self, resync: Arc<Notify>) {
        let target = self.config.target.clone();
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut failures: u32 = 0;
        loop {
            let client = match target.connect(self.config.session_timeout).await {
                Ok(client) => client,
                Err(e) => {
                    failures += 1;
                    // Log the first failure and then every tenth, not every retry.
                    if failures == 1 || failures.is_multiple_of(10) {
                        warn!(
                            attempt = failures,
                            "{e}; forwarding continues with the last state, retrying"
                        );
                    }
                    if matches!(
                        e,
                        ZkError::Connect {
                            source: zookeeper_client::Error::AuthFailed,
                            ..
                        }
                    ) {
                        self.set_connection(ZkConnection::AuthFailed, None);
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            if failures > 0 {
                info!(after_attempts = failures, "reconnected to ZooKeeper");
            }
            failures = 0;
            backoff.reset();
            let session = client.session_id();
            info!(connect = %target.connect, root = %target.schema.root(), session = %session, "ZooKeeper session open");
            self.set_connection(ZkConnection::Connected, Some(session.to_string()));
            match self.follow_session(&client, &resync).await {
                SessionEnd::Expired => {
                    warn!(session = %session, "ZooKeeper session expired; forwarding continues with the last state while a new session is opened");
                    self.set_connection(ZkConnection::Expired, None);
                }
                SessionEnd::AuthFailed => {
                    error!(
                        "ZooKeeper refused the credentials ({}); forwarding continues with the last state",
                        crate::zk::auth::REFUSED_HINT
                    );
                    self.set_connection(ZkConnection::AuthFailed, None);
                }
                SessionEnd::Lost(why) => {
                    warn!(session = %session, "ZooKeeper session lost: {why}; reconnecting");
                    self.set_connection(ZkConnection::Connecting, None);
                }
            }
            drop(client);
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Follows one session until it ends.
    async fn follow_session(&mut self, client: &Client, resync: &Notify) -> SessionEnd {
        let root = self.config.target.schema.root().to_owned();
        let mut watcher = match client.watch(&root, AddWatchMode::PersistentRecursive).await {
            Ok(w) => w,
            Err(e) => return SessionEnd::Lost(format!("adding the watch on {root} failed: {e}")),
        };
        // The watch is in place before the read, so no change can fall between them.
        let mut dirty = Some(Dirty::at_once(Instant::now()));
        let mut changed = Changed::All;
        let services_dir = self.config.target.schema.services_dir();
        let mut last_read: Option<Instant> = None;
        let mut read_failures: u32 = 0;
        let mut missing_logged = false;
        loop {
            let read_at =
                dirty.map(|d| d.read_at(self.config.debounce_quiet, self.config.debounce_max));
            let guard_at = self.guard.next_deadline();
            let wake = [read_at, guard_at].into_iter().flatten().min();
            let wake = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                event = watcher.changed() => {
                    let now = Instant::now();
                    if event.event_type == EventType::Session {
                        match event.session_state {
                            SessionState::Disconnected => {
                                warn!("ZooKeeper connection lost; forwarding continues with the last state");
                                self.set_connection(ZkConnection::Disconnected, Some(client.session_id().to_string()));
                            }
                            SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                                info!("ZooKeeper connection back; resyncing");
                                // zookeeper-client 0.11.2 restores watches after a reconnect with SetWatches
                                // only (`resend_watches` never picks SetWatches2), which cannot carry
                                // persistent watches: add ours again, before the read, so no later change
                                // goes unnoticed.
                                match client.watch(&root, AddWatchMode::PersistentRecursive).await {
                                    Ok(w) => watcher = w,
                                    Err(e) => return SessionEnd::Lost(format!("adding the watch on {root} again failed: {e}")),
                                }
                                self.set_connection(ZkConnection::Connected, Some(client.session_id().to_string()));
                                // Events during the disconnection may be lost: read everything.
                                dirty = Some(Dirty::at_once(now));
                                changed = Changed::All;
                            }
                            SessionState::Expired => return SessionEnd::Expired,
                            SessionState::AuthFailed => return SessionEnd::AuthFailed,
                            SessionState::Closed => return SessionEnd::Lost("session closed".into()),
                        }
                    } else {
                        changed.add(service_of_path(&services_dir, &event.path));
                        dirty = Some(mark_changed(dirty, last_read, now, self.config.debounce_quiet));
                    }
                }
                () = resync.notified() => {
                    info!("full resync requested");
                    dirty = Some(Dirty::at_once(Instant::now()));
                    changed = Changed::All;
                }
                () = sleep_until(wake.into()) => {
                    if read_at.is_some_and(|at| at <= Instant::now()) {
                        if !matches!(client.state(), SessionState::SyncConnected | SessionState::ConnectedReadOnly) {
                            // The SyncConnected event will mark the tree dirty again.
                            dirty = None;
                            continue;
                        }
                        last_read = Some(Instant::now());
                        // Events from here on belong to the next read.
                        let covering = std::mem::replace(&mut changed, Changed::none());
                        let partial = self.reads_partially(&covering);
                        match self.read(client, &covering).await {
                            Ok(Some(raw)) => {
                                dirty = None;
                                read_failures = 0;
                                missing_logged = false;
                                self.publish_tree(&raw, partial);
                                self.raw = self.config.registry.is_none().then_some(raw);
                            }
                            Ok(None) => {
                                dirty = None;
                                read_failures = 0;
                                self.raw = None;
                                self.services_dir_missing(&mut missing_logged);
                            }
                            Err(ZkError::Op { source: zookeeper_client::Error::SessionExpired, .. }) => {
                                return SessionEnd::Expired;
                            }
                            Err(e) => {
                                read_failures += 1;
                                warn!("reading the tree failed: {e}; forwarding continues with the last state, retrying");
                                if read_failures >= 10 {
                                    return SessionEnd::Lost(format!("{read_failures} reads in a row failed"));
                                }
                                let retry = Instant::now() + Duration::from_millis(500) * read_failures;
                                dirty = Some(Dirty::at_once(retry));
                                changed = Changed::All;
                            }
                        }
                    } else {
                        // A guard hold ended: filter the last built state again.
                        self.publish(self.built.clone());
                    }
                }
            }
        }
    }

    /// The services [`Worker::read`] reads for `changed` when it does not read the whole tree.
    fn reads_partially<'a>(&self, changed: &'a Changed) -> Option<&'a BTreeSet<String>> {
        match changed {
            Changed::Services(names) if self.raw.is_some() && self.config.registry.is_none() => {
                Some(names)
            }
            _ => None,
        }
    }

    /// Reads the tree in the configured layout.
    /// Reads what `changed` covers: the whole tree, or (our schema, after a full read) only the
    /// changed services, merged into the tree last read. `None`: `<root>/services` is missing.
    async fn read(
        &mut self,
        client: &Client,
        changed: &Changed,
    ) -> Result<Option<RawTree>, ZkError> {
        let schema = &self.config.target.schema;
        if let Some(registry) = &self.config.registry {
            return registry::read_instances(client, schema, registry).await;
        }
        if let Some(names) = self.reads_partially(changed) {
            let names: Vec<String> = names.iter().cloned().collect();
            let mut read = read_services(client, schema, &names, &mut |_, _| {}).await?;
            // Merged in place: the tree is not copied (100,000 backends at fleet size).
            let mut tree = self.raw.take().unwrap_or_default();
            for name in names {
                match read.remove(&name) {
                    Some(service) => tree.insert(name, service),
                    None => tree.remove(&name),
                };
            }
            return Ok(Some(tree));
        }
        match self.config.first_read_hook.take() {
            Some(hook) => {
                read_tree_telling(client, schema, &mut |name, raw| (hook.0)(name, raw)).await
            }
            None => read_tree(client, schema).await,
        }
    }

    /// The node whose absence keeps the last state: `<root>/services`, or a registry's root.
    fn listed_dir(&self) -> String {
        let schema = &self.config.target.schema;
        match &self.config.registry {
            None => schema.services_dir(),
            Some(_) => schema.root().to_owned(),
        }
    }

    /// `<root>/services` is missing: with services applied that looks like a wrong `--zk-root` or an
    /// accident, not "remove everything", so the last state stays (an empty `services` node removes
    /// all services). Without services applied it is simply an empty state.
    fn services_dir_missing(&mut self, logged: &mut bool) {
        let dir = self.listed_dir();
        if self.built.services.is_empty() {
            if !*logged {
                warn!(znode = %dir, "no services: the node does not exist yet");
                *logged = true;
            }
            self.publish_tree(&RawTree::new(), None);
            return;
        }
        if !*logged {
            error!(
                znode = %dir,
                "the node is missing; keeping the last state ({} services). Check --zk-root; \
                 to remove every service, leave {dir} in place with no children",
                self.built.services.len()
            );
            *logged = true;
        }
        self.status_tx.send_modify(|s| {
            s.last_sync_unix_ms = Some(unix_ms(SystemTime::now()));
            s.full_reads += 1;
        });
    }

    /// Builds and publishes the state of `raw`. `partial`: the services a partial read re-read
    /// (the rest of `raw` is as last built); `None`: it was read whole (counted as a full read).
    fn publish_tree(&mut self, raw: &RawTree, partial: Option<&BTreeSet<String>>) {
        let schema = &self.config.target.schema;
        let full = partial.is_none();
        let snapshot = match &self.config.registry {
            None => self.snapshots.build(schema, raw, &self.built, partial),
            Some(registry) => registry::build_snapshot(registry, schema, raw, &self.built),
        };
        let mut new_rejections = 0;
        for r in &snapshot.rejections {
            if !self.logged_rejections.contains(r) {
                warn!(znode = %r.path, outcome = r.outcome, "znode rejected: {}", r.reason);
                new_rejections += 1;
            }
        }
        self.logged_rejections = snapshot.rejections.iter().cloned().collect();
        for w in &snapshot.warnings {
            if !self.logged_warnings.contains(w) {
                warn!(znode = %w.path, "{}", w.message);
            }
        }
        self.logged_warnings = snapshot.warnings.iter().cloned().collect();
        let current = snapshot.rejections.len();
        self.status_tx.send_modify(|s| {
            s.rejections += new_rejections;
            s.current_rejections = current;
            s.last_sync_unix_ms = Some(unix_ms(SystemTime::now()));
            if full {
                s.full_reads += 1;
            } else {
                s.partial_reads += 1;
            }
        });
        self.built = snapshot.state.clone();
        self.publish(snapshot.state);
    }

    /// Runs the guard and sends the result if it differs from what was sent last.
    fn publish(&mut self, built: DesiredState) {
        let (state, events) = self.guard.filter(built, Instant::now());
        for event in events {
            match event {
                GuardEvent::Held {
                    service,
                    backends,
                    total,
                } => warn!(
                    service = %service,
                    held = %List(&backends),
                    "{} of {total} backends vanished at once (more than {:.0}%): keeping them for {:?} in case ZooKeeper, not the backends, is failing",
                    backends.len(),
                    self.config.guard.max_removal_share * 100.0,
                    self.config.guard.grace,
                ),
                GuardEvent::Released { service, backends } => {
                    info!(service = %service, removed = %List(&backends), "mass-removal grace ended: removing the held backends")
                }
            }
        }
        let held = self.guard.held_count();
        let services = state.services.len();
        self.status_tx.send_modify(|s| {
            s.held_backends = held;
            s.services = services;
        });
        self.states_tx.send_if_modified(|current| {
            if current.as_deref() == Some(&state) {
                return false;
            }
            *current = Some(Arc::new(state));
            true
        });
    }

    fn set_connection(&self, connection: ZkConnection, session_id: Option<String>) {
        self.status_tx.send_modify(|s| {
            s.connection = connection;
            s.session_id = session_id;
        });
    }
}

/// Services per multi-read of service data and backend lists (a list of 4,096 backends is ~100 KB;
/// ZooKeeper's default `jute.maxbuffer` is 1 MB).
const SERVICES_PER_READ: usize = 8;
/// Backend nodes per multi-read of backend data.
const BACKENDS_PER_READ: usize = 512;

/// Reads every service and backend node; `None` when `<root>/services` does not exist. Reads go in
/// multi-read batches that are all sent before any answer is awaited (the client pipelines them),
/// so a large tree costs a few hundred requests and round trips overlap. Nodes that vanish during
/// the read are left out; the watch event of their deletion triggers another read.
pub async fn read_tree(
    client: &Client,
    schema: &super::schema::Schema,
) -> Result<Option<RawTree>, ZkError> {
    read_tree_telling(client, schema, &mut |_, _| {}).await
}

/// [`read_tree`], telling `seen` each service as soon as all its nodes are read.
async fn read_tree_telling(
    client: &Client,
    schema: &super::schema::Schema,
    seen: &mut (dyn FnMut(&str, &RawService) + Send),
) -> Result<Option<RawTree>, ZkError> {
    let dir = schema.services_dir();
    let names = match client.list_children(&dir).await {
        Ok(names) => names,
        Err(zookeeper_client::Error::NoNode) => return Ok(None),
        Err(e) => return Err(ZkError::op("list", &dir)(e)),
    };
    read_services(client, schema, &names, seen).await.map(Some)
}

/// Reads the services `names` (node, backends list, backend nodes); a service whose node does not
/// exist is left out. `seen` is told each service as soon as all its nodes are read.
async fn read_services(
    client: &Client,
    schema: &super::schema::Schema,
    names: &[String],
    seen: &mut (dyn FnMut(&str, &RawService) + Send),
) -> Result<RawTree, ZkError> {
    use zookeeper_client::{Error as E, MultiReadResult as R};
    let dir = schema.services_dir();
    let batch_error = |path: &str| ZkError::op("multi-read", path);

    // Service data and backend lists.
    let mut pending = Vec::new();
    for chunk in names.chunks(SERVICES_PER_READ) {
        let mut reader = client.new_multi_reader();
        for name in chunk {
            reader
                .add_get_data(&schema.service_path(name))
                .map_err(batch_error(&schema.service_path(name)))?;
            reader
                .add_get_children(&schema.backends_dir(name))
                .map_err(batch_error(&schema.backends_dir(name)))?;
        }
        pending.push((chunk, reader.commit()));
    }
    let mut services: Vec<(String, Vec<u8>, Vec<String>)> = Vec::with_capacity(names.len());
    for (chunk, read) in pending {
        let results = read.await.map_err(batch_error(&dir))?;
        let mut results = results.into_iter();
        for name in chunk {
            let (data, children) = (results.next(), results.next());
            let data = match data {
                Some(R::Data { data, .. }) => data,
                // Deleted since it was listed.
                Some(R::Error { err: E::NoNode }) => continue,
                Some(R::Error { err }) => {
                    return Err(ZkError::op("read", &schema.service_path(name))(err));
                }
                _ => {
                    return Err(batch_error(&dir)(E::UnexpectedError(
                        "short multi-read".into(),
                    )));
                }
            };
            let children = match children {
                Some(R::Children { children }) => children,
                Some(R::Error { err: E::NoNode }) => Vec::new(),
                Some(R::Error { err }) => {
                    return Err(ZkError::op("list", &schema.backends_dir(name))(err));
                }
                _ => {
                    return Err(batch_error(&dir)(E::UnexpectedError(
                        "short multi-read".into(),
                    )));
                }
            };
            services.push((name.clone(), data, children));
        }
    }

    // Backend data, in batches across services.
    let backend_paths: Vec<(usize, &str)> = services
        .iter()
        .enumerate()
        .flat_map(|(i, (_, _, children))| children.iter().map(move |c| (i, c.as_str())))
        .collect();
    let mut pending = Vec::new();
    for chunk in backend_paths.chunks(BACKENDS_PER_READ) {
        let mut reader = client.new_multi_reader();
        for (i, child) in chunk {
            let path = schema.backend_node_path(&services[*i].0, child);
            reader.add_get_data(&path).map_err(batch_error(&path))?;
        }
        pending.push((chunk, reader.commit()));
    }
    let mut tree: RawTree = services
        .iter()
        .map(|(name, data, _)| {
            (
                name.clone(),
                RawService {
                    data: Some(data.clone()),
                    backends: Default::default(),
                },
            )
        })
        .collect();
    // Backend nodes not read yet, per service: a service is told to `seen` when it reaches 0.
    let mut unread: Vec<usize> = services.iter().map(|(_, _, c)| c.len()).collect();
    for (name, ..) in services.iter().filter(|(_, _, c)| c.is_empty()) {
        if let Some(raw) = tree.get(name) {
            seen(name, raw);
        }
    }
    for (chunk, read) in pending {
        let results = read.await.map_err(batch_error(&dir))?;
        if results.len() != chunk.len() {
            return Err(batch_error(&dir)(E::UnexpectedError(
                "short multi-read".into(),
            )));
        }
        for ((i, child), result) in chunk.iter().zip(results) {
            let name = &services[*i].0;
            match result {
                R::Data { data, .. } => {
                    if let Some(raw) = tree.get_mut(name) {
                        raw.backends.insert((*child).to_owned(), data);
                    }
                }
                R::Error { err: E::NoNode } => {}
                R::Error { err } => {
                    return Err(ZkError::op("read", &schema.backend_node_path(name, child))(
                        err,
                    ));
                }
                _ => {
                    return Err(batch_error(&dir)(E::UnexpectedError(
                        "unexpected multi-read result".into(),
                    )));
                }
            }
            if let Some(left) = unread.get_mut(*i) {
                *left -= 1;
                if *left == 0
                    && let Some(raw) = tree.get(name)
                {
                    seen(name, raw);
                }
            }
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    #[test]
    fn a_change_below_a_service_rereads_that_service_and_anything_else_the_tree() {
        let dir = "/lb/services";
        assert_eq!(service_of_path(dir, "/lb/services/web"), Some("web".into()));
        assert_eq!(
            service_of_path(dir, "/lb/services/web/backends/198.18.0.1:80"),
            Some("web".into())
        );
        assert_eq!(service_of_path(dir, "/lb/services"), None);
        assert_eq!(service_of_path(dir, "/lb"), None);
        assert_eq!(service_of_path(dir, "/lb/servicesx/web"), None);
        assert_eq!(service_of_path(dir, "/other/services/web"), None);

        let mut changed = Changed::none();
        changed.add(Some("web".into()));
        changed.add(Some("api".into()));
        changed.add(Some("web".into()));
        assert_eq!(
            changed,
            Changed::Services(["api".to_owned(), "web".to_owned()].into_iter().collect())
        );
        changed.add(None);
        assert_eq!(changed, Changed::All);
        changed.add(Some("web".into()));
        assert_eq!(changed, Changed::All, "a full read stays full");
    }

    #[test]
    fn the_first_change_after_quiet_is_read_at_once_and_a_burst_is_debounced() {
        let t0 = Instant::now();
        // Never read, or read long ago: at once.
        let d = mark_changed(None, None, t0, QUIET);
        assert_eq!(d.read_at(QUIET, MAX), t0);
        let d = mark_changed(None, Some(t0), t0 + QUIET, QUIET);
        assert_eq!(d.read_at(QUIET, MAX), t0 + QUIET);
        // More events before that read keep it immediate.
        let d2 = mark_changed(
            Some(d),
            Some(t0),
            t0 + QUIET + Duration::from_millis(1),
            QUIET,
        );
        assert_eq!(d2.read_at(QUIET, MAX), t0 + QUIET);
        // A change right after a read (the rest of a burst): debounced by quiet, capped by max.
        let read = t0 + Duration::from_millis(500);
        let e1 = read + Duration::from_millis(10);
        let d = mark_changed(None, Some(read), e1, QUIET);
        assert_eq!(d.read_at(QUIET, MAX), e1 + QUIET);
        let mut d = d;
        let mut at = e1;
        for _ in 0..30 {
            at += Duration::from_millis(50);
            d = mark_changed(Some(d), Some(read), at, QUIET);
        }
        assert_eq!(
            d.read_at(QUIET, MAX),
            e1 + MAX,
            "a steady stream still reads every max"
        );
    }
}
