//! The desired state: which services (VIPs) exist and which backends serve them. Pure data, validated
//! before anything reaches the data plane. Sources (the TOML file, ZooKeeper) produce it; `plan` diffs
//! it; `apply` writes it.

mod error;
pub(crate) mod fields;
mod json;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lb_common::{IPPROTO_TCP, Scheduler, VipKey};

pub use error::{ErrorField, ModelError, ValueError};
pub use json::{backend_from_json, service_from_json};

/// Highest weight a backend may have (weights are compared and scaled in 32-bit arithmetic).
pub const MAX_WEIGHT: u32 = 65_535;
/// Highest panic threshold (percent).
pub const MAX_PANIC_THRESHOLD: u8 = 100;
/// Longest service name: it must fit `ServiceMeta.name` with a terminating zero.
pub const MAX_SERVICE_NAME_LEN: usize = 63;

/// Every service, by name. Each spec is shared (`Arc`): at fleet size (100,000 backends) a state
/// passes through the source, the guard, the daemon and the planner on every change, and a copy or
/// comparison of it must cost per service, not per backend (an unchanged service is the same
/// allocation, which `==` sees at once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<String, Arc<ServiceSpec>>,
}

/// One VIP and how it is balanced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// 1 to 63 bytes of `[A-Za-z0-9._-]`: it names a ZooKeeper node and fills `ServiceMeta.name`.
    pub name: String,
    pub vip: SocketAddr,
    pub proto: Proto,
    pub scheduler: Scheduler,
    /// Session persistence (IPVS `-p`) in seconds; 0 disables it.
    pub persistence_timeout_s: u32,
    /// Prefix length of the client address that forms the persistence key; `None` = the whole address.
    pub persistence_netmask: Option<u8>,
    pub health_check: Option<HealthCheckSpec>,
    /// Panic mode (Envoy's panic threshold), in percent of the backends that take new flows: when
    /// fewer than this share pass their health check, new flows go to all of them rather than
    /// overload the few healthy ones. 0 (the default) turns panic mode off.
    pub panic_threshold: u8,
    pub backends: BTreeMap<SocketAddr, BackendSpec>,
}

/// One real server of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// 0..=[`MAX_WEIGHT`]; 0 takes no new flows but keeps established ones (like draining).
    pub weight: u32,
    pub state: BackendState,
}

/// The only transport the data plane balances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    #[default]
    Tcp,
}

/// Whether a backend takes new flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendState {
    #[default]
    Active,
    /// Takes no new flows; established flows stay until they end.
    Draining,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HealthCheckKind {
    /// A TCP connect to the backend.
    #[default]
    Tcp,
    /// An HTTP GET of `path`; the status must fall into `expect`.
    Http,
}

/// How a service's backends are checked. Rise/fall count consecutive results.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HealthCheckSpec {
    pub kind: HealthCheckKind,
    /// HTTP only.
    pub path: String,
    /// HTTP only: accepted status codes, both ends included.
    pub expect: (u16, u16),
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Successes in a row that bring a down backend up.
    pub rise: u32,
    /// Failures in a row that take an up backend down.
    pub fall: u32,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        HealthCheckSpec {
            kind: HealthCheckKind::Tcp,
            path: "/healthz".to_owned(),
            expect: (200, 399),
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
        }
    }
}

const SCHEDULER_NAMES: &str = "rr, wrr, random, wrandom, least-conn, maglev";

impl Proto {
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
        }
    }

    pub fn from_name(name: &str) -> Result<Proto, ValueError> {
        match name {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Err(ValueError::UnsupportedProto(name.to_owned())),
            _ => Err(ValueError::Unknown {
                what: "protocol",
                value: name.to_owned(),
                expected: "tcp",
            }),
        }
    }

    /// The IP protocol number of the VIP key.
    pub const fn ip_proto(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
        }
    }
}

impl BackendState {
    pub const fn name(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
        }
    }

    pub fn from_name(name: &str) -> Result<BackendState, ValueError> {
        match name {
            "active" => Ok(BackendState::Active),
            "draining" => Ok(BackendState::Draining),
            _ => Err(ValueError::Unknown {
                what: "backend state",
                value: name.to_owned(),
                expected: "active, draining",
            }),
        }
    }
}

impl HealthCheckKind {
    pub const fn name(self) -> &'static str {
        match self {
            HealthCheckKind::Tcp => "tcp",
            HealthCheckKind::Http => "http",
        }
    }

    pub fn from_name(name: &str) -> Result<HealthCheckKind, ValueError> {
        match name {
            "tcp" => Ok(HealthCheckKind::Tcp),
            "http" => Ok(HealthCheckKind::Http),
            _ => Err(ValueError::Unknown {
                what: "health check kind",
                value: name.to_owned(),
                expected: "tcp, http",
            }),
        }
    }
}

/// Reads a scheduler name (`rr`, `wrr`, `random`, `wrandom`, `least-conn`, `maglev`).
pub fn parse_scheduler(name: &str) -> Result<Scheduler, ValueError> {
    Scheduler::from_name(name).ok_or_else(|| ValueError::Unknown {
        what: "scheduler",
        value: name.to_owned(),
        expected: SCHEDULER_NAMES,
    })
}

/// Reads `IP:PORT`, IPv6 in brackets (`[2001:db8::1]:80`).
pub fn parse_socket_addr(what: &'static str, text: &str) -> Result<SocketAddr, ValueError> {
    text.parse().map_err(|_| ValueError::Invalid {
        what,
        value: text.to_owned(),
        reason: "expected IP:PORT, e.g. 198.18.100.1:80 or [2001:db8::1]:80",
    })
}

/// Reads an HTTP status range: `"200-399"` or a single code `"200"`. Range checks are validation's job.
pub fn parse_expect(text: &str) -> Result<(u16, u16), ValueError> {
    let invalid = || ValueError::Invalid {
        what: "expect range",
        value: text.to_owned(),
        reason: "expected a status code range such as \"200-399\" or one code such as \"200\"",
    };
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (low, high),
        None => (text, text),
    };
    let low = low.trim().parse().map_err(|_| invalid())?;
    let high = high.trim().parse().map_err(|_| invalid())?;
    Ok((low, high))
}

impl ServiceSpec {
    /// A service with every optional field at its default and no backends.
    pub fn new(name: impl Into<String>, vip: SocketAddr) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            vip,
            proto: Proto::Tcp,
            scheduler: Scheduler::Maglev,
            persistence_timeout_s: 0,
            persistence_netmask: None,
            health_check: None,
            panic_threshold: 0,
            backends: BTreeMap::new(),
        }
    }

    /// Checks every rule a service must follow; the first broken rule is returned.
    pub fn validate(&self) -> Result<(), ModelError> {
        validate::service(self)
    }

    /// Leading bits of the client address that form the persistence key.
    pub fn persist_prefix_len(&self) -> u32 {
        let full = address_bits(self.vip.ip());
        self.persistence_netmask
            .map_or(full, |bits| u32::from(bits).min(full))
    }

    /// The key of the service map.
    pub fn vip_key(&self) -> VipKey {
        let (addr, family) = lb_common::addr::to_words(self.vip.ip());
        VipKey {
            addr,
            port_be: self.vip.port().to_be(),
            proto: self.proto.ip_proto(),
            family,
        }
    }

    /// Adds (or replaces) a backend.
    pub fn with_backend(mut self, backend: BackendSpec) -> ServiceSpec {
        self.backends.insert(backend.addr, backend);
        self
    }
}

impl BackendSpec {
    /// An active backend of weight 1.
    pub fn new(addr: SocketAddr) -> BackendSpec {
        BackendSpec {
            addr,
            weight: 1,
            state: BackendState::Active,
        }
    }

    /// May the scheduler give this backend new flows?
    pub fn takes_new_flows(&self) -> bool {
        self.state == BackendState::Active && self.weight > 0
    }
}

impl DesiredState {
    /// The state of `services`, by name.
    pub fn of(services: impl IntoIterator<Item = ServiceSpec>) -> DesiredState {
        DesiredState {
            services: services
                .into_iter()
                .map(|s| (s.name.clone(), Arc::new(s)))
                .collect(),
        }
    }

    /// Adds (or replaces) a service; returns the one it replaced.
    pub fn insert(&mut self, spec: ServiceSpec) -> Option<Arc<ServiceSpec>> {
        self.services.insert(spec.name.clone(), Arc::new(spec))
    }

    /// Checks every service and that no two services share a VIP.
    pub fn validate(&self) -> Result<(), ModelError> {
        validate::desired_state(self)
    }
}

/// Bits of an address of this family (32 or 128).
pub(crate) fn address_bits(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

pub(crate) fn family_name(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

#[cfg(test)]
mod tests;
