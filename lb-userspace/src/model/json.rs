//! The JSON forms of services and backends stored in ZooKeeper.
//!
//! A service is the node `/<root>/services/<name>` whose data is
//! `{"vip": "198.18.100.1:80", "proto": "tcp", "scheduler": "maglev", "persistence_timeout_s": 0,
//! "persistence_netmask": 32, "health_check": {...}, "panic_threshold": 50}`; its backends are the child nodes named
//! `IP:PORT` (`[2001:db8::11]:80` for IPv6) with data `{"weight": 3, "state": "active"}` or no data.
//! Unknown fields are not errors (a newer writer may add some) but are returned as warnings.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    BackendSpec, BackendState, HealthCheckKind, HealthCheckSpec, MAX_WEIGHT, ModelError, Proto,
    ServiceSpec, ValueError, parse_expect, parse_scheduler, parse_socket_addr,
};

/// Data of a service node. Every field but `vip` is optional.
#[derive(Deserialize)]
struct ServiceJson {
    /// `IP:PORT`.
    vip: String,
    /// Default `"tcp"` (the only one supported).
    proto: Option<String>,
    /// Default `"maglev"`.
    scheduler: Option<String>,
    /// Default 0 (persistence off).
    persistence_timeout_s: Option<u32>,
    /// Default: the full address length (32 or 128).
    persistence_netmask: Option<u8>,
    /// Default: no health check (backends are always up).
    health_check: Option<HealthCheckJson>,
    /// Percent of healthy backends below which new flows go to all of them; default 0 (off).
    panic_threshold: Option<u8>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_json::Value>,
}

const SERVICE_FIELDS: &str = "vip, proto, scheduler, persistence_timeout_s, persistence_netmask, health_check, panic_threshold";

/// A service's health check; defaults as in [`HealthCheckSpec::default`].
#[derive(Deserialize)]
struct HealthCheckJson {
    /// `"tcp"` (default) or `"http"`.
    kind: Option<String>,
    /// Default `"/healthz"`.
    path: Option<String>,
    /// Default `"200-399"`.
    expect: Option<String>,
    /// Default 1000.
    interval_ms: Option<u32>,
    /// Default 500.
    timeout_ms: Option<u32>,
    /// Default 2.
    rise: Option<u32>,
    /// Default 3.
    fall: Option<u32>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_json::Value>,
}

const HEALTH_CHECK_FIELDS: &str = "kind, path, expect, interval_ms, timeout_ms, rise, fall";

/// Data of a backend node; no data at all means weight 1, active.
#[derive(Deserialize)]
struct BackendJson {
    /// Default 1.
    weight: Option<u32>,
    /// `"active"` (default) or `"draining"`.
    state: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_json::Value>,
}

const BACKEND_FIELDS: &str = "weight, state";

/// Reads a service node (without its backends) and validates it. Returns the service and warnings
/// about fields it did not know.
pub fn service_from_json(
    name: &str,
    data: &[u8],
) -> Result<(ServiceSpec, Vec<String>), ModelError> {
    let object = || format!("service \"{name}\"");
    let json: ServiceJson = serde_json::from_slice(data).map_err(|e| ModelError::Json {
        object: object(),
        message: format!("invalid service JSON: {e}"),
    })?;
    let value_error = |field, source| ModelError::Value {
        service: name.to_owned(),
        field,
        source,
    };

    let mut warnings = unknown_field_warnings(&object(), &json.unknown, SERVICE_FIELDS);
    let vip = parse_socket_addr("VIP", &json.vip).map_err(|e| value_error("vip", e))?;
    let mut spec = ServiceSpec::new(name, vip);
    if let Some(proto) = &json.proto {
        spec.proto = Proto::from_name(proto).map_err(|e| value_error("proto", e))?;
    }
    if let Some(scheduler) = &json.scheduler {
        spec.scheduler = parse_scheduler(scheduler).map_err(|e| value_error("scheduler", e))?;
    }
    spec.persistence_timeout_s = json.persistence_timeout_s.unwrap_or(0);
    spec.persistence_netmask = json.persistence_netmask;
    spec.panic_threshold = json.panic_threshold.unwrap_or(0);
    if let Some(check) = json.health_check {
        warnings.extend(unknown_field_warnings(
            &format!("{}: health_check", object()),
            &check.unknown,
            HEALTH_CHECK_FIELDS,
        ));
        spec.health_check = Some(health_check(check).map_err(|(field, e)| value_error(field, e))?);
    }
    spec.validate()?;
    Ok((spec, warnings))
}

fn health_check(json: HealthCheckJson) -> Result<HealthCheckSpec, (&'static str, ValueError)> {
    let mut check = HealthCheckSpec::default();
    if let Some(kind) = &json.kind {
        check.kind = HealthCheckKind::from_name(kind).map_err(|e| ("health_check.kind", e))?;
    }
    if let Some(expect) = &json.expect {
        check.expect = parse_expect(expect).map_err(|e| ("health_check.expect", e))?;
    }
    if let Some(path) = json.path {
        check.path = path;
    }
    check.interval_ms = json.interval_ms.unwrap_or(check.interval_ms);
    check.timeout_ms = json.timeout_ms.unwrap_or(check.timeout_ms);
    check.rise = json.rise.unwrap_or(check.rise);
    check.fall = json.fall.unwrap_or(check.fall);
    Ok(check)
}

/// Reads a backend node: its name is the address, its data (possibly empty) the weight and state.
/// Whether the backend fits its service (port, family) is checked by [`ServiceSpec::validate`].
pub fn backend_from_json(
    addr_node_name: &str,
    data: &[u8],
) -> Result<(BackendSpec, Vec<String>), ModelError> {
    let addr = parse_socket_addr("backend address", addr_node_name).map_err(|source| {
        ModelError::BackendNodeName {
            node: addr_node_name.to_owned(),
            source,
        }
    })?;
    let mut backend = BackendSpec::new(addr);
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok((backend, Vec::new()));
    }
    let object = format!("backend {addr}");
    let json: BackendJson = serde_json::from_slice(data).map_err(|e| ModelError::Json {
        object: object.clone(),
        message: format!("invalid backend JSON: {e}"),
    })?;
    let warnings = unknown_field_warnings(&object, &json.unknown, BACKEND_FIELDS);
    if let Some(weight) = json.weight {
        if weight > MAX_WEIGHT {
            return Err(ModelError::Json {
                object,
                message: format!("weight {weight} is above the maximum {MAX_WEIGHT}"),
            });
        }
        backend.weight = weight;
    }
    if let Some(state) = &json.state {
        backend.state = BackendState::from_name(state).map_err(|e| ModelError::Json {
            object,
            message: e.to_string(),
        })?;
    }
    Ok((backend, warnings))
}

fn unknown_field_warnings(
    object: &str,
    unknown: &BTreeMap<String, serde_json::Value>,
    known: &str,
) -> Vec<String> {
    unknown
        .keys()
        .map(|field| format!("{object}: unknown field \"{field}\" ignored (known fields: {known})"))
        .collect()
}
