//! The daemon's own state for `lb status`, which reads maps without the daemon and so cannot ask it
//! what its source is doing or how old the applied state is. The daemon writes a small JSON file
//! (`/run/lb/<pin dir with '/' as '_'>.json`) every few seconds and after each apply, atomically
//! (write, then rename), and removes it when it detaches.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::zk::source::ZkStatus;

/// Directory of the status files.
pub const STATUS_DIR: &str = "/run/lb";
/// `lb status` calls a file older than this stale (the daemon writes every 5 s).
const STALE_AFTER_MS: u64 = 15_000;

#[derive(Clone, Debug, Serialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub iface: String,
    /// `"file"` or `"zookeeper"`.
    pub source: &'static str,
    /// The configuration file (file source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_file: Option<PathBuf>,
    pub generation: u32,
    pub services: usize,
    /// When the source last delivered a state that was applied (or found unchanged): the applied
    /// state is known to be current as of then.
    pub last_sync_unix_ms: Option<u64>,
    /// When the data plane last changed.
    pub last_change_unix_ms: Option<u64>,
    pub written_unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<ZkStatus>,
    pub health: HealthStatus,
    /// How long the last change to the data plane took.
    pub last_apply_ms: Option<f64>,
    /// Flows the LRU flow table evicted to make room since start (inferred at each sweep).
    pub flow_evictions: u64,
}

/// What the health checks concluded.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HealthStatus {
    /// Probe tasks running (one per distinct backend address and check).
    pub probes: usize,
    /// `"<service> <backend>"` of every backend its checks report down.
    pub down: Vec<String>,
    /// Services in panic mode (every backend kept in the table).
    pub panic: Vec<String>,
}

/// `/sys/fs/bpf/lb` → `/run/lb/_sys_fs_bpf_lb.json`: one file per daemon (per pin directory).
pub fn status_file_path(pin_dir: &Path) -> PathBuf {
    let name = pin_dir.to_string_lossy().replace('/', "_");
    Path::new(STATUS_DIR).join(format!("{name}.json"))
}

/// Writes the file atomically: readers see the old or the new content, never half of one.
pub fn write(path: &Path, status: &DaemonStatus) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// Reads the daemon's file for `lb status`, adding ages in seconds and whether it is stale.
/// `None` when there is no (readable) file: no daemon, or one that does not write it.
pub fn read_for_status(pin_dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(status_file_path(pin_dir)).ok()?;
    let mut value: serde_json::Value = serde_json::from_str(&text).ok()?;
    add_ages(&mut value, crate::zk::source::unix_ms(SystemTime::now()));
    Some(value)
}

fn add_ages(value: &mut serde_json::Value, now_ms: u64) {
    let Some(object) = value.as_object_mut() else {
        return;
    };
    let age = |key: &str| {
        object
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0)
    };
    let state_age = age("last_sync_unix_ms");
    let change_age = age("last_change_unix_ms");
    let written_age = age("written_unix_ms");
    object.insert("state_age_s".into(), state_age.into());
    object.insert("last_change_age_s".into(), change_age.into());
    object.insert(
        "stale".into(),
        written_age
            .is_none_or(|a| a * 1000.0 > STALE_AFTER_MS as f64)
            .into(),
    );
}

/// The lines `lb status` prints about the daemon.
pub fn render(daemon: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let get = |k: &str| daemon.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let secs = |v: serde_json::Value| match v.as_f64() {
        Some(s) => format!("{s:.1}s ago"),
        None => "never".to_owned(),
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "daemon: pid {} on {} source {}{}",
        get("pid"),
        get("iface").as_str().unwrap_or("?"),
        get("source").as_str().unwrap_or("?"),
        if get("stale").as_bool() == Some(true) {
            " (STALE: the daemon has not updated its status file; is it running?)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "  generation {}, {} services; state confirmed {}, last changed {}",
        get("generation"),
        get("services"),
        secs(get("state_age_s")),
        secs(get("last_change_age_s")),
    );
    if let Some(zk) = daemon.get("zookeeper").filter(|z| z.is_object()) {
        let zget = |k: &str| zk.get(k).cloned().unwrap_or(serde_json::Value::Null);
        let _ = writeln!(
            o,
            "  zookeeper {} root {}: {} (session {}), {} znodes rejected now ({} seen), {} backends held by the mass-removal guard",
            zget("connect").as_str().unwrap_or("?"),
            zget("root").as_str().unwrap_or("?"),
            zget("connection").as_str().unwrap_or("?"),
            zget("session_id").as_str().unwrap_or("none"),
            zget("current_rejections"),
            zget("rejections"),
            zget("held_backends"),
        );
    }
    if let Some(health) = daemon.get("health").filter(|h| h.is_object()) {
        let list = |k: &str| {
            let items: Vec<String> = health
                .get(k)
                .and_then(serde_json::Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        let _ = writeln!(
            o,
            "  health checks: {} probes; down: {}; panic mode: {}",
            health
                .get("probes")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            list("down"),
            list("panic"),
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_per_pin_dir() {
        assert_eq!(
            status_file_path(Path::new("/sys/fs/bpf/lb")),
            Path::new("/run/lb/_sys_fs_bpf_lb.json")
        );
    }

    #[test]
    fn ages_and_staleness() {
        let mut v = serde_json::json!({
            "last_sync_unix_ms": 10_000u64,
            "last_change_unix_ms": null,
            "written_unix_ms": 20_000u64,
        });
        add_ages(&mut v, 22_500);
        assert_eq!(v["state_age_s"], 12.5);
        assert!(v["last_change_age_s"].is_null());
        assert_eq!(v["stale"], false);
        add_ages(&mut v, 40_000);
        assert_eq!(v["stale"], true);
    }

    #[test]
    fn writes_atomically_and_renders() {
        let dir = std::env::temp_dir().join(format!("lb-status-test-{}", std::process::id()));
        let path = dir.join("x.json");
        let status = DaemonStatus {
            pid: 7,
            iface: "eth0".into(),
            source: "zookeeper",
            config_file: None,
            generation: 3,
            services: 2,
            last_sync_unix_ms: Some(1),
            last_change_unix_ms: Some(1),
            written_unix_ms: 1,
            zookeeper: None,
            health: HealthStatus {
                probes: 2,
                down: vec!["web 198.18.2.11:80".into()],
                panic: Vec::new(),
            },
            last_apply_ms: Some(1.5),
            flow_evictions: 0,
        };
        write(&path, &status).unwrap();
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back["generation"], 3);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let text = render(&back);
        assert!(text.contains("pid 7 on eth0 source zookeeper"), "{text}");
    }
}
