//! Writes `lb run` configuration files (TOML) for tests and the demo.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// One `[[services]]` entry.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: SocketAddr,
    /// `rr`, `wrr`, `random`, `wrandom`, `least-conn` or `maglev`.
    pub scheduler: String,
    pub backends: Vec<BackendConfig>,
    /// Further `key = value` lines of the service, as TOML (`persistence_timeout_s = 60`,
    /// `health_check = { interval_ms = 200 }`).
    pub extra: Vec<String>,
}

/// One backend of a service.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    pub addr: SocketAddr,
    pub weight: u32,
    /// `active`, `draining` or `down`.
    pub state: String,
}

impl BackendConfig {
    pub fn active(addr: SocketAddr, weight: u32) -> Self {
        Self {
            addr,
            weight,
            state: "active".into(),
        }
    }
}

impl ServiceConfig {
    pub fn new(name: &str, vip: SocketAddr, scheduler: &str, backends: Vec<BackendConfig>) -> Self {
        Self {
            name: name.into(),
            vip,
            scheduler: scheduler.into(),
            backends,
            extra: Vec::new(),
        }
    }

    /// Adds a `key = value` line (TOML) to the service.
    pub fn with(mut self, line: impl Into<String>) -> Self {
        self.extra.push(line.into());
        self
    }
}

/// Renders a whole configuration file.
pub fn to_toml(services: &[ServiceConfig]) -> String {
    let mut out = String::new();
    for s in services {
        // Names and schedulers come from test code; the debug form quotes and escapes them as TOML needs.
        let _ = writeln!(out, "[[services]]");
        let _ = writeln!(out, "name = {:?}", s.name);
        let _ = writeln!(out, "vip = \"{}\"", s.vip);
        let _ = writeln!(out, "scheduler = {:?}", s.scheduler);
        for line in &s.extra {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "backends = [");
        for b in &s.backends {
            let _ = writeln!(
                out,
                "  {{ addr = \"{}\", weight = {}, state = {:?} }},",
                b.addr, b.weight, b.state
            );
        }
        let _ = writeln!(out, "]\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_families() {
        let toml = to_toml(&[ServiceConfig::new(
            "web",
            "[2001:db8:100::1]:80".parse().unwrap(),
            "maglev",
            vec![BackendConfig::active("198.18.2.11:80".parse().unwrap(), 2)],
        )]);
        assert!(toml.contains("name = \"web\""));
        assert!(toml.contains("vip = \"[2001:db8:100::1]:80\""));
        assert!(toml.contains("{ addr = \"198.18.2.11:80\", weight = 2, state = \"active\" }"));
    }
}
