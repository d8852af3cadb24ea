//! The daemon's one report of itself: built by the daemon loop, sent to the metrics renderer and
//! written as the status file `lb status` reads (`/run/lb/<pin dir with '/' as '_'>.json`, every few
//! seconds and after each apply, atomically; removed when the daemon detaches).
//!
//! `lb status` reads maps without the daemon and so cannot ask it what its source is doing or how
//! old the applied state is: that is what this report adds. The same serde structs write and read
//! it (the daemon, `lb status`, the lab tests), so a renamed field fails to decode instead of
//! reading as missing. [`SCHEMA_VERSION`] is bumped on every change a reader could trip over.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Version of the report (and of the `lb status --json` document that embeds it).
pub const SCHEMA_VERSION: u32 = 1;
/// Directory of the status files.
pub const STATUS_DIR: &str = "/run/lb";
/// `lb status` calls a file older than this stale (the daemon writes every 5 s).
const STALE_AFTER_MS: u64 = 15_000;

/// What the daemon knows that the maps do not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonReport {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    pub pid: u32,
    pub iface: String,
    /// Where the services come from, and how that source is doing.
    pub source: SourceStatus,
    /// Generation of the applied configuration (bumped on every change).
    pub generation: u32,
    /// Services applied to the data plane.
    pub services: usize,
    /// Services the source delivered that this host does not apply (see `source::Families`).
    pub not_applied: Vec<ServiceNotApplied>,
    /// When the source last delivered a state that was applied (or found unchanged): the applied
    /// state is known to be current as of then (milliseconds since the Unix epoch).
    pub last_sync_unix_ms: Option<u64>,
    /// When the data plane last changed.
    pub last_change_unix_ms: Option<u64>,
    pub written_unix_ms: u64,
    pub health: HealthStatus,
    /// How long the last change to the data plane took.
    pub last_apply_ms: Option<f64>,
    /// Flows in the table at the last sweep.
    pub flows: u64,
    /// Flows the flow table evicted to make room (`flow_evicted`, read at each sweep).
    pub flow_evictions: u64,
    /// Set while the daemon forwards the state file's state because its source could not deliver
    /// one at start-up; cleared by the source's first state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_state_file: Option<StateFileStart>,
    /// The daemon forwards a state (its source's or its state file's): `/healthz` answers 200.
    #[serde(default)]
    pub ready: bool,
    /// Set when this run adopted the maps an earlier one pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<AdoptionReport>,
    /// Set when the daemon announces its VIPs with BIRD (`--announce-bird-include`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceReport>,
}

/// The VIP announcement (see `crate::announce`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceReport {
    /// The include file BIRD reads the VIPs from.
    pub include: PathBuf,
    /// BIRD's control socket.
    pub socket: PathBuf,
    /// The VIPs BIRD has loaded (it announces them to its BGP peers as its filters say).
    pub announced: Vec<std::net::IpAddr>,
    /// Why the last hand-over to BIRD failed (retried every second); `None` once it succeeds.
    pub error: Option<String>,
}

/// This run adopted the maps (and the XDP link) an earlier `lb run` pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptionReport {
    pub since_unix_ms: u64,
    /// Services the maps held exactly as this run would write them: left untouched.
    pub unchanged: Vec<String>,
    /// Services kept on their ids and rewritten by the first apply.
    pub rewritten: Vec<String>,
    /// Pinned services no desired one claims, removed by the first apply.
    pub removed: Vec<String>,
    /// Pinned backends no service holds, draining.
    pub draining: usize,
    /// The program the pinned link ran before this run replaced it.
    pub replaced_prog_id: Option<u32>,
    /// The program it runs now.
    pub prog_id: Option<u32>,
}

/// The daemon started from its state file (`crate::state_file`) and its source has not yet
/// delivered a state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFileStart {
    pub path: PathBuf,
    /// Since when (milliseconds since the Unix epoch).
    pub since_unix_ms: u64,
    /// When the file was written: the age of the state forwarded.
    pub written_unix_ms: u64,
    /// Why the source's state could not be had.
    pub reason: String,
}

/// The source's part of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceStatus {
    File(FileStatus),
    Zookeeper(ZkStatus),
}

impl SourceStatus {
    /// `"file"` or `"zookeeper"`, as `lb status` prints it.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceStatus::File(_) => "file",
            SourceStatus::Zookeeper(_) => "zookeeper",
        }
    }

    /// The ZooKeeper session state; `None` with a file source.
    pub fn zookeeper_connection(&self) -> Option<ZkConnection> {
        match self {
            SourceStatus::File(_) => None,
            SourceStatus::Zookeeper(zk) => Some(zk.connection),
        }
    }
}

/// The file source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileStatus {
    pub config_file: PathBuf,
    /// Why the file's current content was rejected (the last good configuration keeps forwarding);
    /// `None` once a load succeeds.
    pub rejected: Option<String>,
}

/// The ZooKeeper session as the daemon last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZkConnection {
    /// No session yet (starting, or reconnecting after a failure).
    Connecting,
    Connected,
    /// The session exists but the connection is lost; the client is reconnecting.
    Disconnected,
    /// The session expired; a new one is being opened.
    Expired,
    /// The server refused the credentials; retrying (the operator must fix them).
    AuthFailed,
}

impl ZkConnection {
    pub const ALL: [ZkConnection; 5] = [
        ZkConnection::Connecting,
        ZkConnection::Connected,
        ZkConnection::Disconnected,
        ZkConnection::Expired,
        ZkConnection::AuthFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ZkConnection::Connecting => "connecting",
            ZkConnection::Connected => "connected",
            ZkConnection::Disconnected => "disconnected",
            ZkConnection::Expired => "expired",
            ZkConnection::AuthFailed => "auth_failed",
        }
    }
}

/// The ZooKeeper source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZkStatus {
    pub connect: String,
    pub root: String,
    pub connection: ZkConnection,
    /// `0x...` while a session exists.
    pub session_id: Option<String>,
    /// When the last read succeeded (milliseconds since the Unix epoch).
    pub last_sync_unix_ms: Option<u64>,
    /// Distinct rejected znodes seen so far (each counted when first seen).
    pub rejections: u64,
    /// Rejected znodes in the current tree.
    pub current_rejections: usize,
    /// Backends kept by the mass-removal guard.
    pub held_backends: usize,
    /// Full reads of the tree so far (start, reconnects, resyncs).
    pub full_reads: u64,
    /// Reads of only the services a change touched (a burst of writes should cost one).
    #[serde(default)]
    pub partial_reads: u64,
    pub services: usize,
}

/// A service the source delivered that this host does not apply, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNotApplied {
    pub service: String,
    pub reason: String,
}

/// What the health checks concluded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// Probe tasks running (one per distinct backend address and check).
    pub probes: usize,
    /// Every backend its checks report down.
    pub down: Vec<BackendRef>,
    /// Services in panic mode (every backend kept in the table).
    pub panic: Vec<String>,
}

/// A backend of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRef {
    pub service: String,
    pub backend: SocketAddr,
}

impl DaemonReport {
    pub fn last_apply(&self) -> Option<Duration> {
        self.last_apply_ms
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
    }

    pub fn is_down(&self, service: &str, backend: SocketAddr) -> bool {
        self.health
            .down
            .iter()
            .any(|d| d.service == service && d.backend == backend)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `/sys/fs/bpf/lb` → `/run/lb/_sys_fs_bpf_lb.json`: one file per daemon (per pin directory).
pub fn status_file_path(pin_dir: &Path) -> PathBuf {
    let name = pin_dir.to_string_lossy().replace('/', "_");
    Path::new(STATUS_DIR).join(format!("{name}.json"))
}

/// Writes the report atomically: readers see the old or the new content, never half of one.
pub fn write(path: &Path, report: &DaemonReport) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    crate::atomic_file::write(path, &json)
}

/// Why a report (or an `lb status --json` document) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what} has schema version {found}, this lb reads version {SCHEMA_VERSION}: use the lb \
         binary of the same release as the daemon"
    )]
    Version { what: String, found: u32 },
    #[error("{what} is not a valid version {SCHEMA_VERSION} document: {source}")]
    Decode {
        what: String,
        source: serde_json::Error,
    },
}

/// Decodes a JSON document of this schema, checking its `schema_version` first so an old or newer
/// writer is named as such rather than as a missing field.
pub fn decode<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, ReportError> {
    #[derive(Deserialize)]
    struct Version {
        schema_version: u32,
    }
    let decode_error = |source| ReportError::Decode {
        what: what.to_owned(),
        source,
    };
    let version: Version = serde_json::from_str(text).map_err(decode_error)?;
    if version.schema_version != SCHEMA_VERSION {
        return Err(ReportError::Version {
            what: what.to_owned(),
            found: version.schema_version,
        });
    }
    serde_json::from_str(text).map_err(decode_error)
}

/// Reads the daemon's report; `Ok(None)` when there is no file (no daemon running on these pins).
pub fn read(pin_dir: &Path) -> Result<Option<DaemonReport>, ReportError> {
    let path = status_file_path(pin_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ReportError::Read { path, source }),
    };
    decode(
        &format!("the daemon's status file {}", path.display()),
        &text,
    )
    .map(Some)
}

/// The report as `lb status` shows it: with its ages in seconds and whether it is stale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonView {
    #[serde(flatten)]
    pub report: DaemonReport,
    /// Seconds since `last_sync_unix_ms`.
    pub state_age_s: Option<f64>,
    /// Seconds since `last_change_unix_ms`.
    pub last_change_age_s: Option<f64>,
    /// The daemon has not rewritten the file for a while: is it still running?
    pub stale: bool,
}

impl DaemonView {
    pub fn at(report: DaemonReport, now: SystemTime) -> DaemonView {
        let now_ms = unix_ms(now);
        let age = |t: Option<u64>| t.map(|t| now_ms.saturating_sub(t) as f64 / 1000.0);
        DaemonView {
            state_age_s: age(report.last_sync_unix_ms),
            last_change_age_s: age(report.last_change_unix_ms),
            stale: now_ms.saturating_sub(report.written_unix_ms) > STALE_AFTER_MS,
            report,
        }
    }

    /// The lines `lb status` prints about the daemon.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let r = &self.report;
        let secs = |v: Option<f64>| match v {
            Some(s) => format!("{s:.1}s ago"),
            None => "never".to_owned(),
        };
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        let mut o = String::new();
        let _ = writeln!(
            o,
            "daemon: pid {} on {} source {}{}",
            r.pid,
            r.iface,
            r.source.kind(),
            if self.stale {
                " (STALE: the daemon has not updated its status file; is it running?)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "  generation {}, {} services; state confirmed {}, last changed {}",
            r.generation,
            r.services,
            secs(self.state_age_s),
            secs(self.last_change_age_s),
        );
        if let Some(start) = &r.from_state_file {
            let age = |t: u64| unix_ms(SystemTime::now()).saturating_sub(t) as f64 / 1000.0;
            let _ = writeln!(
                o,
                "  source: STATE FILE {}, since {:.1}s ago (written {:.1}s before now), until the source delivers: {}",
                start.path.display(),
                age(start.since_unix_ms),
                age(start.written_unix_ms),
                start.reason
            );
        }
        match &r.source {
            SourceStatus::File(file) => {
                if let Some(why) = &file.rejected {
                    let _ = writeln!(
                        o,
                        "  config file {} rejected (the last good configuration keeps forwarding): {why}",
                        file.config_file.display()
                    );
                }
            }
            SourceStatus::Zookeeper(zk) => {
                let _ = writeln!(
                    o,
                    "  zookeeper {} root {}: {} (session {}), {} znodes rejected now ({} seen), {} backends held by the mass-removal guard",
                    zk.connect,
                    zk.root,
                    zk.connection.name(),
                    zk.session_id.as_deref().unwrap_or("none"),
                    zk.current_rejections,
                    zk.rejections,
                    zk.held_backends,
                );
            }
        }
        for n in &r.not_applied {
            let _ = writeln!(o, "  service {} NOT APPLIED: {}", n.service, n.reason);
        }
        if let Some(a) = &r.announce {
            let _ = writeln!(
                o,
                "  announced to BIRD ({}): {}{}",
                a.socket.display(),
                list(a.announced.iter().map(ToString::to_string).collect()),
                a.error
                    .as_ref()
                    .map(|e| format!("; FAILING: {e}"))
                    .unwrap_or_default(),
            );
        }
        let _ = writeln!(
            o,
            "  health checks: {} probes; down: {}; panic mode: {}",
            r.health.probes,
            list(
                r.health
                    .down
                    .iter()
                    .map(|d| format!("{} {}", d.service, d.backend))
                    .collect()
            ),
            list(r.health.panic.clone()),
        );
        o
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn report(source: SourceStatus) -> DaemonReport {
        DaemonReport {
            schema_version: SCHEMA_VERSION,
            pid: 7,
            iface: "eth0".into(),
            source,
            generation: 3,
            services: 2,
            not_applied: vec![ServiceNotApplied {
                service: "v6".into(),
                reason: "no IPv6 outer source".into(),
            }],
            last_sync_unix_ms: Some(10_000),
            last_change_unix_ms: None,
            written_unix_ms: 20_000,
            health: HealthStatus {
                probes: 2,
                down: vec![BackendRef {
                    service: "web".into(),
                    backend: "198.18.2.11:80".parse().unwrap(),
                }],
                panic: Vec::new(),
            },
            last_apply_ms: Some(1.5),
            flows: 4,
            flow_evictions: 0,
            from_state_file: None,
            ready: true,
            adoption: None,
            announce: None,
        }
    }

    pub(crate) fn zk_status() -> ZkStatus {
        ZkStatus {
            connect: "127.0.0.1:2181".into(),
            root: "/lb".into(),
            connection: ZkConnection::AuthFailed,
            session_id: None,
            last_sync_unix_ms: None,
            rejections: 1,
            current_rejections: 1,
            held_backends: 0,
            full_reads: 2,
            partial_reads: 3,
            services: 2,
        }
    }

    #[test]
    fn one_file_per_pin_dir() {
        assert_eq!(
            status_file_path(Path::new("/sys/fs/bpf/lb")),
            Path::new("/run/lb/_sys_fs_bpf_lb.json")
        );
    }

    #[test]
    fn round_trips_through_json_for_both_sources() {
        for source in [
            SourceStatus::File(FileStatus {
                config_file: "/etc/lb.toml".into(),
                rejected: Some("lb.toml:3:1: vip: missing".into()),
            }),
            SourceStatus::Zookeeper(zk_status()),
        ] {
            let r = report(source);
            let json = serde_json::to_string(&r).unwrap();
            let back: DaemonReport = decode("test", &json).unwrap();
            assert_eq!(back, r);
            let view = DaemonView::at(r, UNIX_EPOCH + Duration::from_millis(22_500));
            let json = serde_json::to_string(&view).unwrap();
            let back: DaemonView = decode("test", &json).unwrap();
            assert_eq!(back, view);
        }
        let json = serde_json::to_value(report(SourceStatus::Zookeeper(zk_status()))).unwrap();
        assert_eq!(json["source"]["kind"], "zookeeper");
        assert_eq!(json["source"]["connection"], "auth_failed");
    }

    #[test]
    fn other_versions_and_renamed_fields_are_refused() {
        let mut json = serde_json::to_value(report(SourceStatus::Zookeeper(zk_status()))).unwrap();
        json["schema_version"] = 2.into();
        let err = decode::<DaemonReport>("the file", &json.to_string()).unwrap_err();
        assert!(
            matches!(err, ReportError::Version { found: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("this lb reads version 1"), "{err}");
        json["schema_version"] = SCHEMA_VERSION.into();
        let object = json.as_object_mut().unwrap();
        let generation = object.remove("generation").unwrap();
        object.insert("config_generation".into(), generation);
        let err = decode::<DaemonReport>("the file", &json.to_string()).unwrap_err();
        assert!(err.to_string().contains("generation"), "{err}");
    }

    #[test]
    fn ages_and_staleness() {
        let r = report(SourceStatus::Zookeeper(zk_status()));
        let view = DaemonView::at(r.clone(), UNIX_EPOCH + Duration::from_millis(22_500));
        assert_eq!(view.state_age_s, Some(12.5));
        assert_eq!(view.last_change_age_s, None);
        assert!(!view.stale);
        assert!(DaemonView::at(r, UNIX_EPOCH + Duration::from_millis(40_000)).stale);
    }

    #[test]
    fn writes_atomically_reads_back_and_renders() {
        let dir = std::env::temp_dir().join(format!("lb-report-test-{}", std::process::id()));
        let path = dir.join("x.json");
        let r = report(SourceStatus::Zookeeper(zk_status()));
        write(&path, &r).unwrap();
        let back: DaemonReport = decode("test", &std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let text = DaemonView::at(back, SystemTime::now()).render();
        for part in [
            "pid 7 on eth0 source zookeeper (STALE",
            "zookeeper 127.0.0.1:2181 root /lb: auth_failed (session none)",
            "service v6 NOT APPLIED: no IPv6 outer source",
            "down: web 198.18.2.11:80; panic mode: none",
        ] {
            assert!(text.contains(part), "{part:?} missing in {text}");
        }
    }
}
