//! The fields of a service, a health check and a backend: one serde definition (names, types,
//! defaults, ranges) that both sources decode through, the configuration file (TOML, `config`) and
//! ZooKeeper (JSON, [`super::json`]), so the two cannot disagree. What differs is only where a
//! service's name and a backend's address come from: the file writes them as fields, ZooKeeper as
//! node names; and what an unknown field is: an error in the file, a warning in ZooKeeper.
//!
//! The same structs serialize too (`from_spec`), for the daemon's state file (`crate::state_file`),
//! which is read back through the same decoder: what it writes is what the file source accepts.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;

use lb_common::Scheduler;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{
    BackendSpec, BackendState, HealthCheckKind, HealthCheckSpec, MAX_PANIC_THRESHOLD, MAX_WEIGHT,
    Proto, ServiceSpec, ValueError, parse_expect, parse_scheduler, parse_socket_addr,
};

/// A service. Every field but `vip` (and, in the file, `name`) is optional.
#[derive(Debug, Deserialize, Serialize)]
#[serde(expecting = "a table")]
pub(crate) struct ServiceFields {
    /// The file's only: ZooKeeper names a service by its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `IP:PORT`.
    #[serde(deserialize_with = "vip")]
    pub vip: SocketAddr,
    /// Default `"tcp"` (the only one supported).
    #[serde(default)]
    pub proto: Proto,
    /// Default `"maglev"`.
    #[serde(
        default = "default_scheduler",
        deserialize_with = "scheduler",
        serialize_with = "scheduler_name"
    )]
    pub scheduler: Scheduler,
    /// Default 0 (persistence off).
    #[serde(default)]
    pub persistence_timeout_s: Bounded<{ u32::MAX }>,
    /// Default: the full address length (32 or 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_netmask: Option<Bounded<128>>,
    /// Default: no health check (backends are always up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckFields>,
    /// Percent of healthy backends below which new flows go to all of them; default 0 (off).
    #[serde(default)]
    pub panic_threshold: Bounded<{ MAX_PANIC_THRESHOLD as u32 }>,
    /// The file's only: ZooKeeper keeps backends as child nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<BackendFields>>,
}

/// A service's health check; defaults as in [`HealthCheckSpec::default`].
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, expecting = "a table")]
pub(crate) struct HealthCheckFields {
    /// `"tcp"` (default) or `"http"`.
    pub kind: HealthCheckKind,
    /// Default `"/healthz"`.
    pub path: String,
    /// Default `"200-399"`; one code as an integer (`200`) or a string (`"200"`) is a range of one.
    pub expect: StatusRange,
    pub interval_ms: Bounded<{ u32::MAX }>,
    pub timeout_ms: Bounded<{ u32::MAX }>,
    pub rise: Bounded<{ u32::MAX }>,
    pub fall: Bounded<{ u32::MAX }>,
}

/// A backend; ZooKeeper's backend node may have no data at all (weight 1, active).
#[derive(Debug, Deserialize, Serialize)]
#[serde(expecting = "a table")]
pub(crate) struct BackendFields {
    /// The file's only: ZooKeeper names a backend by its node.
    #[serde(
        default,
        deserialize_with = "backend_addr",
        skip_serializing_if = "Option::is_none"
    )]
    pub addr: Option<SocketAddr>,
    /// Default 1.
    #[serde(default = "default_weight")]
    pub weight: Bounded<MAX_WEIGHT>,
    /// `"active"` (default) or `"draining"`.
    #[serde(default)]
    pub state: BackendState,
}

impl ServiceFields {
    /// The service these fields describe, named `name`, without backends.
    pub fn to_spec(&self, name: &str) -> ServiceSpec {
        let mut spec = ServiceSpec::new(name, self.vip);
        spec.proto = self.proto;
        spec.scheduler = self.scheduler;
        spec.persistence_timeout_s = self.persistence_timeout_s.0;
        spec.persistence_netmask = self.persistence_netmask.map(Bounded::narrow);
        spec.health_check = self.health_check.as_ref().map(HealthCheckFields::to_spec);
        spec.panic_threshold = self.panic_threshold.narrow();
        spec
    }
}

impl ServiceFields {
    /// The fields of `spec`, named and with its backends (the file's form).
    pub fn from_spec(spec: &ServiceSpec) -> ServiceFields {
        ServiceFields {
            name: Some(spec.name.clone()),
            vip: spec.vip,
            proto: spec.proto,
            scheduler: spec.scheduler,
            persistence_timeout_s: Bounded(spec.persistence_timeout_s),
            persistence_netmask: spec.persistence_netmask.map(|n| Bounded(u32::from(n))),
            health_check: spec.health_check.as_ref().map(HealthCheckFields::from_spec),
            panic_threshold: Bounded(u32::from(spec.panic_threshold)),
            backends: Some(
                spec.backends
                    .values()
                    .map(BackendFields::from_spec)
                    .collect(),
            ),
        }
    }
}

impl HealthCheckFields {
    pub fn from_spec(spec: &HealthCheckSpec) -> HealthCheckFields {
        HealthCheckFields {
            kind: spec.kind,
            path: spec.path.clone(),
            expect: StatusRange(spec.expect),
            interval_ms: Bounded(spec.interval_ms),
            timeout_ms: Bounded(spec.timeout_ms),
            rise: Bounded(spec.rise),
            fall: Bounded(spec.fall),
        }
    }

    pub fn to_spec(&self) -> HealthCheckSpec {
        HealthCheckSpec {
            kind: self.kind,
            path: self.path.clone(),
            expect: self.expect.0,
            interval_ms: self.interval_ms.0,
            timeout_ms: self.timeout_ms.0,
            rise: self.rise.0,
            fall: self.fall.0,
        }
    }
}

impl Default for HealthCheckFields {
    fn default() -> Self {
        let d = HealthCheckSpec::default();
        HealthCheckFields {
            kind: d.kind,
            path: d.path,
            expect: StatusRange(d.expect),
            interval_ms: Bounded(d.interval_ms),
            timeout_ms: Bounded(d.timeout_ms),
            rise: Bounded(d.rise),
            fall: Bounded(d.fall),
        }
    }
}

impl BackendFields {
    pub fn from_spec(spec: &BackendSpec) -> BackendFields {
        BackendFields {
            addr: Some(spec.addr),
            weight: Bounded(spec.weight),
            state: spec.state,
        }
    }

    /// The backend these fields describe, at `addr`.
    pub fn to_spec(&self, addr: SocketAddr) -> BackendSpec {
        BackendSpec {
            addr,
            weight: self.weight.0,
            state: self.state,
        }
    }
}

fn default_scheduler() -> Scheduler {
    ServiceSpec::new("", SocketAddr::from(([0, 0, 0, 0], 0))).scheduler
}

fn default_weight() -> Bounded<MAX_WEIGHT> {
    Bounded(BackendSpec::new(SocketAddr::from(([0, 0, 0, 0], 0))).weight)
}

/// An integer from 0 to `MAX`, both included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bounded<const MAX: u32>(pub u32);

impl<const MAX: u32> Bounded<MAX> {
    /// The value as a `u8` (for a `MAX` that fits one).
    fn narrow(self) -> u8 {
        u8::try_from(self.0).unwrap_or(u8::MAX)
    }
}

impl<const MAX: u32> Serialize for Bounded<MAX> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

fn out_of_range<E: de::Error>(value: impl fmt::Display, max: u32) -> E {
    E::custom(format!(
        "{value} is out of range; it must be between 0 and {max}"
    ))
}

impl<'de, const MAX: u32> Deserialize<'de> for Bounded<MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoundedVisitor<const MAX: u32>;
        impl<const MAX: u32> Visitor<'_> for BoundedVisitor<MAX> {
            type Value = Bounded<MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u32::try_from(v) {
                    Ok(v) if v <= MAX => Ok(Bounded(v)),
                    _ => Err(out_of_range(v, MAX)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match u32::try_from(v) {
                    Ok(v) if v <= MAX => Ok(Bounded(v)),
                    _ => Err(out_of_range(v, MAX)),
                }
            }
        }
        deserializer.deserialize_i64(BoundedVisitor::<MAX>)
    }
}

/// Accepted HTTP status codes, both ends included: `"200-399"`, `"200"` or `200`. Whether the codes
/// are HTTP status codes is validation's job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StatusRange(pub (u16, u16));

impl Default for StatusRange {
    fn default() -> Self {
        StatusRange(HealthCheckSpec::default().expect)
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (low, high) = self.0;
        serializer.collect_str(&format_args!("{low}-{high}"))
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RangeVisitor;
        impl Visitor<'_> for RangeVisitor {
            type Value = StatusRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code range such as \"200-399\" or one code such as 200")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusRange, E> {
                let code = u16::try_from(v).map_err(|_| out_of_range(v, u32::from(u16::MAX)))?;
                Ok(StatusRange((code, code)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusRange, E> {
                let code = u16::try_from(v).map_err(|_| out_of_range(v, u32::from(u16::MAX)))?;
                Ok(StatusRange((code, code)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusRange, E> {
                parse_expect(v).map(StatusRange).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(RangeVisitor)
    }
}

/// Reads a string and then the value it names.
fn by_name<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<T, ValueError>,
) -> Result<T, D::Error> {
    struct Name<T>(PhantomData<T>);
    impl<T> Visitor<'_> for Name<T> {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
    }
    let text = deserializer.deserialize_str(Name::<T>(PhantomData))?;
    parse(&text).map_err(de::Error::custom)
}

fn vip<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    by_name(deserializer, |s| parse_socket_addr("VIP", s))
}

fn backend_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    by_name(deserializer, |s| parse_socket_addr("backend address", s)).map(Some)
}

fn scheduler_name<S: Serializer>(scheduler: &Scheduler, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(scheduler.name())
}

fn scheduler<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Scheduler, D::Error> {
    by_name(deserializer, parse_scheduler)
}

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        by_name(deserializer, Proto::from_name)
    }
}

impl<'de> Deserialize<'de> for BackendState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        by_name(deserializer, BackendState::from_name)
    }
}

impl<'de> Deserialize<'de> for HealthCheckKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        by_name(deserializer, HealthCheckKind::from_name)
    }
}

impl Serialize for Proto {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl Serialize for BackendState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl Serialize for HealthCheckKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests;
