//! What the daemon measures as it goes and the maps do not keep: health probes (result and
//! latency), data-plane applies (a duration histogram) and configuration reloads. Recorded where
//! they happen, process-wide from the daemon's start (as a Prometheus client's default registry),
//! and added to every `/metrics` scrape by [`Telemetry::register`].

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// 0.5 ms to ~8 s: a TCP connect on a LAN to a check that times out.
fn probe_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// 50 µs to ~1.6 s: one service's update to a full rebuild of a large table.
fn apply_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// How a reload of the configuration ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// The source's state was taken (applied, or found unchanged).
    Taken,
    /// The whole configuration was refused; the last good one keeps forwarding.
    Rejected,
}

pub struct Telemetry {
    probes: Family<Labels, Counter>,
    probe_duration: Histograms,
    apply_duration: Histogram,
    reloads: Family<Labels, Counter>,
    last_reload_ok: Gauge,
    last_reload_ok_at: Gauge<f64, AtomicU64>,
}

/// The daemon's one [`Telemetry`].
pub fn telemetry() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(|| Telemetry {
        probes: Family::default(),
        probe_duration: Family::new_with_constructor(probe_buckets),
        apply_duration: apply_buckets(),
        reloads: Family::default(),
        last_reload_ok: Gauge::default(),
        last_reload_ok_at: Gauge::default(),
    })
}

fn probe_labels(backend: SocketAddr, check: &str) -> Labels {
    vec![
        ("backend".to_owned(), backend.to_string()),
        ("check".to_owned(), check.to_owned()),
    ]
}

impl Telemetry {
    /// One health probe of `backend` by a `check` (`tcp`, `http`) check.
    pub fn probe(&self, backend: SocketAddr, check: &str, passed: bool, took: Duration) {
        let labels = probe_labels(backend, check);
        self.probe_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        let mut labels = labels;
        let result = if passed { "pass" } else { "fail" };
        labels.push(("result".to_owned(), result.to_owned()));
        self.probes.get_or_create(&labels).inc();
    }

    /// The probes of `backend` stopped (it left the configuration): its series go.
    pub fn forget_probe(&self, backend: SocketAddr, check: &str) {
        let labels = probe_labels(backend, check);
        self.probe_duration.remove(&labels);
        for result in ["pass", "fail"] {
            let mut l = labels.clone();
            l.push(("result".to_owned(), result.to_owned()));
            self.probes.remove(&l);
        }
    }

    /// One change written to the data plane.
    pub fn applied(&self, took: Duration) {
        self.apply_duration.observe(took.as_secs_f64());
    }

    /// One reload of the configuration (a file read, a ZooKeeper state, a SIGHUP).
    pub fn reload(&self, outcome: Reload) {
        let result = match outcome {
            Reload::Taken => "success",
            Reload::Rejected => "rejected",
        };
        self.reloads
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc();
        self.last_reload_ok.set(i64::from(outcome == Reload::Taken));
        if outcome == Reload::Taken {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.last_reload_ok_at.set(now.as_secs_f64());
        }
    }

    /// Adds these metrics to a scrape's registry (prefix `lb`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "health_probes",
            "Health probes by backend, check and result (pass, fail)",
            self.probes.clone(),
        );
        r.register(
            "health_probe_duration_seconds",
            "How long health probes took, by backend and check (a failed probe up to its timeout)",
            self.probe_duration.clone(),
        );
        r.register(
            "apply_duration_seconds",
            "How long each change to the data plane took",
            self.apply_duration.clone(),
        );
        r.register(
            "config_reloads",
            "Reloads of the configuration by result (success: taken; rejected: the last good one kept)",
            self.reloads.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 when the last reload was taken, 0 when it was rejected",
            self.last_reload_ok.clone(),
        );
        r.register(
            "config_last_reload_success_timestamp_seconds",
            "When a reload was last taken (Unix time; 0: none since start)",
            self.last_reload_ok_at.clone(),
        );
    }
}
