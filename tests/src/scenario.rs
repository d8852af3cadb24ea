//! What the integration tests and the demo share: services over the lab's backends, the shares each
//! scheduler should produce, and how far an observed share may be from them.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

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

/// Checks the status JSON of `lb status --json` for a service named `name` with `config`'s scheduler
/// and backends (address, weight, state) — i.e. the daemon has applied that configuration. Backends
/// the status shows beyond the configured ones (retired, still draining their flows) must not be
/// active.
pub fn status_shows(status: &serde_json::Value, config: &ServiceConfig) -> bool {
    let Some(services) = status["services"].as_array() else {
        return false;
    };
    let Some(svc) = services.iter().find(|s| s["name"] == config.name.as_str()) else {
        return false;
    };
    let Some(backends) = svc["backends"].as_array() else {
        return false;
    };
    let addr_of = |b: &serde_json::Value| {
        b["addr"]
            .as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok())
    };
    let configured_shown = config.backends.iter().all(|want| {
        let expected_state = if want.weight == 0 {
            "draining"
        } else {
            want.state.as_str()
        };
        backends.iter().any(|b| {
            addr_of(b) == Some(want.addr)
                && b["weight"].as_u64() == Some(u64::from(want.weight))
                && b["state"] == expected_state
        })
    });
    let extras_inactive = backends.iter().all(|b| {
        config
            .backends
            .iter()
            .any(|want| addr_of(b) == Some(want.addr))
            || b["state"] != "active"
    });
    svc["scheduler"] == config.scheduler.as_str() && configured_shown && extras_inactive
}

/// Like [`status_shows`], but ignores backends that left the service and are only kept (weight 0,
/// draining) until their established flows end: the daemon serves exactly `config` to new connections.
pub fn status_serves(status: &serde_json::Value, config: &ServiceConfig) -> bool {
    let mut status = status.clone();
    if let Some(services) = status["services"].as_array_mut() {
        for svc in services {
            if let Some(backends) = svc["backends"].as_array_mut() {
                backends.retain(|b| !(b["state"] == "draining" && b["weight"] == 0));
            }
        }
    }
    status_shows(&status, config)
}

/// A backend's entry in `lb status --json`, by service name and address.
pub fn backend_status<'a>(
    status: &'a serde_json::Value,
    service: &str,
    backend: SocketAddr,
) -> Option<&'a serde_json::Value> {
    let svc = status["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)?;
    svc["backends"].as_array()?.iter().find(|b| {
        b["addr"]
            .as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            == Some(backend)
    })
}

/// A backend's `state` (`active`, `draining`, `down`) and weight in `lb status --json`, by address.
pub fn backend_state(
    status: &serde_json::Value,
    service: &str,
    backend: SocketAddr,
) -> Option<(String, u64)> {
    let b = backend_status(status, service, backend)?;
    Some((b["state"].as_str()?.to_owned(), b["weight"].as_u64()?))
}

/// A backend's `active_conns` in `lb status --json`, by address.
pub fn active_conns(status: &serde_json::Value, service: &str, backend: SocketAddr) -> Option<u64> {
    backend_status(status, service, backend)?["active_conns"].as_u64()
}

/// The non-zero `drop_*` counters of `lb status --json`.
pub fn drops(status: &serde_json::Value) -> Vec<(String, u64)> {
    let Some(counters) = status["counters"].as_object() else {
        return Vec::new();
    };
    counters
        .iter()
        .filter(|(k, _)| k.starts_with("drop_"))
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .filter(|(_, v)| *v > 0)
        .collect()
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
        let status = serde_json::json!({"services": [{"name": "web", "scheduler": "wrr", "backends": [
            {"addr": "198.18.2.12:80", "weight": 2, "state": "active", "active_conns": 3},
            {"addr": "198.18.2.13:80", "weight": 0, "state": "draining", "active_conns": 1},
            {"addr": "198.18.2.11:80", "weight": 1, "state": "active", "active_conns": 0}]}],
            "counters": {"drop_mtu": 0, "drop_no_route": 2, "rx_packets": 9}});
        assert!(status_shows(&status, &cfg));
        assert!(!status_shows(
            &status,
            &service("web", vip(1, false), "wrr", &[1, 3])
        ));
        assert_eq!(
            active_conns(&status, "web", Lab::backend_addr(1, false)),
            Some(3)
        );
        assert_eq!(drops(&status), vec![("drop_no_route".to_string(), 2)]);
    }
}
