//! What the integration tests and the demo share: services over the lab's backends, the shares each
//! scheduler should produce, and how far an observed share may be from them.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use lb_userspace::report::{DaemonReport, SourceStatus, ZkStatus};
pub use lb_userspace::status::{BackendMapState, BackendStatus, Status};

use crate::client::Spread;
use crate::config::{BackendConfig, ServiceConfig};
use crate::lab::{Lab, SERVER_PORT};

/// Every scheduler `lb` knows, by configuration name.
pub const SCHEDULERS: [&str; 6] = ["rr", "wrr", "random", "wrandom", "least-conn", "maglev"];

/// Does the scheduler follow backend weights? (`rr` and `random` ignore them.)
pub fn is_weighted(scheduler: &str) -> bool {
    matches!(scheduler, "wrr" | "wrandom" | "least-conn" | "maglev")
}

/// A VIP on the lab's server port: `198.18.100.n:80` or `[2001:db8:100::n]:80`.
pub fn vip(n: u8, v6: bool) -> SocketAddr {
    let ip = if v6 {
        IpAddr::V6(Lab::vip_v6(n))
    } else {
        IpAddr::V4(Lab::vip_v4(n))
    };
    SocketAddr::new(ip, SERVER_PORT)
}

/// A service over backends `b0 …` with the given weights (one per backend), in the VIP's family.
pub fn service(name: &str, vip: SocketAddr, scheduler: &str, weights: &[u32]) -> ServiceConfig {
    let backends = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| BackendConfig::active(Lab::backend_addr(i, vip.is_ipv6()), w))
        .collect();
    ServiceConfig::new(name, vip, scheduler, backends)
}

/// The share of new connections each backend should get.
pub fn expected_shares(scheduler: &str, weights: &[u32]) -> Vec<f64> {
    let effective: Vec<f64> = weights
        .iter()
        .map(|&w| {
            if is_weighted(scheduler) {
                f64::from(w)
            } else if w > 0 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = effective.iter().sum();
    effective
        .iter()
        .map(|w| if total > 0.0 { w / total } else { 0.0 })
        .collect()
}

/// How far an observed count may be from the expected one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    /// Deterministic schedulers (per-CPU cursors drift a little): `slack + frac * n`.
    Deterministic { slack: f64, frac: f64 },
    /// Random choices: `sigmas` binomial standard deviations plus `frac * n`.
    Binomial { sigmas: f64, frac: f64 },
}

impl Tolerance {
    /// The tolerance the tests use for a scheduler's spread of new connections.
    pub fn for_scheduler(scheduler: &str) -> Tolerance {
        match scheduler {
            // The cursor is per CPU: each CPU's sequence is exact, their interleaving is not.
            "rr" | "wrr" => Tolerance::Deterministic {
                slack: 8.0,
                frac: 0.02,
            },
            // Maglev: a hash of the 5-tuple, as good as random across distinct source ports, plus the
            // table's own deviation from the weights.
            "maglev" => Tolerance::Binomial {
                sigmas: 5.0,
                frac: 0.02,
            },
            _ => Tolerance::Binomial {
                sigmas: 5.0,
                frac: 0.01,
            },
        }
    }

    /// The largest allowed |observed - expected| for `n` connections and expected share `p`.
    pub fn allowed(self, n: usize, p: f64) -> f64 {
        let n = n as f64;
        match self {
            Tolerance::Deterministic { slack, frac } => slack + frac * n,
            Tolerance::Binomial { sigmas, frac } => sigmas * (n * p * (1.0 - p)).sqrt() + frac * n,
        }
    }
}

/// One backend's line of a share comparison.
#[derive(Clone, Debug)]
pub struct ShareRow {
    pub backend: String,
    pub observed: usize,
    pub expected: f64,
    pub allowed: f64,
    pub share: f64,
    pub expected_share: f64,
}

impl ShareRow {
    pub fn ok(&self) -> bool {
        (self.observed as f64 - self.expected).abs() <= self.allowed
    }
}

/// Compares a spread with the expected shares of backends `b0 …`.
pub fn compare(spread: &Spread, expected_shares: &[f64], tolerance: Tolerance) -> Vec<ShareRow> {
    let n = spread.succeeded();
    expected_shares
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let backend = Lab::backend_name(i);
            ShareRow {
                observed: spread.count(&backend),
                share: spread.share(&backend),
                backend,
                expected: p * n as f64,
                allowed: tolerance.allowed(n, p),
                expected_share: p,
            }
        })
        .collect()
}

/// A table of rows (`backend  conns  share  expected  ±allowed  ok`).
pub fn render(rows: &[ShareRow]) -> String {
    let mut out = format!(
        "{:<8} {:>7} {:>7} {:>9} {:>9}  {}\n",
        "backend", "conns", "share", "expected", "±allowed", ""
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<8} {:>7} {:>6.1}% {:>8.1}% {:>9.1}  {}",
            r.backend,
            r.observed,
            100.0 * r.share,
            100.0 * r.expected_share,
            r.allowed,
            if r.ok() { "ok" } else { "OUT OF TOLERANCE" }
        );
    }
    out
}

/// Checks `lb status --json` for a service named `name` with `config`'s scheduler and backends
/// (address, weight, state) — i.e. the daemon has applied that configuration. Backends the status
/// shows beyond the configured ones (retired, still draining their flows) must not be active.
pub fn status_shows(status: &Status, config: &ServiceConfig) -> bool {
    shows(status, config, |_| true)
}

/// Like [`status_shows`], but ignores backends that left the service and are only kept (weight 0,
/// draining) until their established flows end: the daemon serves exactly `config` to new connections.
pub fn status_serves(status: &Status, config: &ServiceConfig) -> bool {
    shows(status, config, |b| {
        !(b.state == BackendMapState::Draining && b.weight == 0)
    })
}

fn shows(
    status: &Status,
    config: &ServiceConfig,
    counted: impl Fn(&BackendStatus) -> bool,
) -> bool {
    let Some(svc) = status.service(&config.name) else {
        return false;
    };
    let backends: Vec<&BackendStatus> = svc.backends.iter().filter(|b| counted(b)).collect();
    let configured_shown = config.backends.iter().all(|want| {
        let expected_state = if want.weight == 0 {
            "draining"
        } else {
            want.state.as_str()
        };
        backends.iter().any(|b| {
            b.socket_addr() == Some(want.addr)
                && b.weight == want.weight
                && b.state.name() == expected_state
        })
    });
    let extras_inactive = backends.iter().all(|b| {
        config
            .backends
            .iter()
            .any(|want| b.socket_addr() == Some(want.addr))
            || b.state != BackendMapState::Active
    });
    svc.scheduler == config.scheduler && configured_shown && extras_inactive
}

/// A backend's state (`active`, `draining`, `down`) and weight in `lb status --json`, by address.
pub fn backend_state(status: &Status, service: &str, backend: SocketAddr) -> Option<(String, u32)> {
    let b = status.backend(service, backend)?;
    Some((b.state.name().to_owned(), b.weight))
}

/// A backend's `active_conns` in `lb status --json`, by address.
pub fn active_conns(status: &Status, service: &str, backend: SocketAddr) -> Option<u64> {
    Some(status.backend(service, backend)?.active_conns)
}

/// The non-zero `drop_*` counters of `lb status --json`. Panics when the status has no `drop_*`
/// counter at all: the counters were renamed, and "no drops" would be a false pass.
pub fn drops(status: &Status) -> Vec<(String, u64)> {
    assert!(
        status.counters.keys().any(|k| k.starts_with("drop_")),
        "`lb status --json` has no drop_* counters (renamed?): {:?}",
        status.counters.keys().collect::<Vec<_>>()
    );
    status
        .counters
        .iter()
        .filter(|(k, v)| k.starts_with("drop_") && **v > 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// A data-plane counter of `lb status --json`. Panics on an unknown name (a renamed counter must
/// not read as zero).
pub fn counter(status: &Status, name: &str) -> u64 {
    status.counter(name).unwrap_or_else(|| {
        panic!(
            "`lb status --json` has no counter {name:?}; it has {:?}",
            status.counters.keys().collect::<Vec<_>>()
        )
    })
}

/// What the daemon reports in `lb status --json`. Panics when the status carries no daemon report.
pub fn daemon(status: &Status) -> &DaemonReport {
    &status
        .daemon
        .as_ref()
        .expect("`lb status --json` has no daemon report: is the daemon writing its status file?")
        .report
}

/// The ZooKeeper part of the daemon's report. Panics with another source.
pub fn zookeeper(status: &Status) -> &ZkStatus {
    match &daemon(status).source {
        SourceStatus::Zookeeper(zk) => zk,
        other => panic!("the daemon follows {}, not ZooKeeper", other.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unweighted_schedulers_ignore_weights_but_not_zero() {
        assert_eq!(
            expected_shares("rr", &[1, 2, 0, 1]),
            vec![1.0 / 3.0, 1.0 / 3.0, 0.0, 1.0 / 3.0]
        );
        assert_eq!(expected_shares("wrr", &[1, 2, 1]), vec![0.25, 0.5, 0.25]);
    }

    #[test]
    fn tolerance_grows_with_n_and_rows_judge_it() {
        let t = Tolerance::for_scheduler("random");
        assert!(t.allowed(1000, 1.0 / 3.0) > t.allowed(100, 1.0 / 3.0));
        let mut spread = Spread::default();
        spread.per_backend.insert("b0".into(), 500);
        spread.per_backend.insert("b1".into(), 500);
        let rows = compare(&spread, &[0.5, 0.5], t);
        assert!(rows.iter().all(ShareRow::ok));
        let rows = compare(&spread, &[0.9, 0.1], t);
        assert!(!rows[0].ok() && !rows[1].ok());
        assert!(render(&rows).contains("OUT OF TOLERANCE"));
    }

    #[test]
    fn status_matching_compares_addresses_and_weights() {
        let cfg = service("web", vip(1, false), "wrr", &[1, 2]);
        let status = Status::from_json(
            &serde_json::json!({"schema_version": lb_userspace::report::SCHEMA_VERSION,
            "services": [{"name": "web", "id": 0, "vip": "198.18.100.1:80", "scheduler": "wrr",
            "generation": 1, "table_len": 3, "persistence_timeout_s": 0, "packets": 0, "bytes": 0,
            "new_flows": 0, "drops": 0, "backends": [
            {"id": 1, "addr": "198.18.2.12:80", "weight": 2, "state": "active", "active_conns": 3, "packets": 0, "bytes": 0, "new_flows": 0},
            {"id": 2, "addr": "198.18.2.13:80", "weight": 0, "state": "draining", "active_conns": 1, "packets": 0, "bytes": 0, "new_flows": 0},
            {"id": 0, "addr": "198.18.2.11:80", "weight": 1, "state": "active", "active_conns": 0, "packets": 0, "bytes": 0, "new_flows": 0}]}],
            "counters": {"drop_mtu": 0, "drop_no_route": 2, "rx_packets": 9}, "flows": 0})
            .to_string(),
        )
        .unwrap();
        assert!(status_shows(&status, &cfg));
        assert!(status_serves(&status, &cfg));
        assert!(!status_shows(
            &status,
            &service("web", vip(1, false), "wrr", &[1, 3])
        ));
        assert_eq!(
            active_conns(&status, "web", Lab::backend_addr(1, false)),
            Some(3)
        );
        assert_eq!(drops(&status), vec![("drop_no_route".to_string(), 2)]);
        assert_eq!(counter(&status, "rx_packets"), 9);
    }

    #[test]
    #[should_panic(expected = "no counter \"flow_new\"")]
    fn an_unknown_counter_fails_loudly() {
        let status = Status {
            schema_version: lb_userspace::report::SCHEMA_VERSION,
            services: Vec::new(),
            counters: [("drop_mtu".to_owned(), 0)].into_iter().collect(),
            flows: 0,
            flow_table_capacity: 1024,
            daemon: None,
            attached: Vec::new(),
            manager_pid: None,
            unmanaged_since_unix_ms: None,
        };
        counter(&status, "flow_new");
    }
}
