//! Why a desired state, a service or a backend was rejected.

use std::net::SocketAddr;

/// A single value that could not be read (a name, an address, a status range).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("unknown {what} \"{value}\" (expected one of {expected})")]
    Unknown {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("protocol \"{0}\" is not supported: the data plane balances TCP only, so use \"tcp\"")]
    UnsupportedProto(String),
    #[error("invalid {what} \"{value}\": {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// The part of a service an error is about; lets a source point at the offending line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorField {
    /// The service as a whole (its name, its backend count).
    Service,
    Name,
    Vip,
    Proto,
    Scheduler,
    PersistenceNetmask,
    /// A field of the health check (`"rise"`, `"timeout_ms"`, ...).
    HealthCheck(&'static str),
    Backend(SocketAddr),
}

/// Why a service, a backend or a whole desired state is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("service name \"{name}\" is invalid: {reason}")]
    InvalidServiceName { name: String, reason: &'static str },

    #[error(
        "service \"{service}\" is stored under the name \"{key}\"; the key must equal the service's name"
    )]
    ServiceKeyMismatch { key: String, service: String },

    #[error("service \"{service}\": VIP {vip} has port 0; give the TCP port clients connect to")]
    VipPortZero { service: String, vip: SocketAddr },

    #[error(
        "service \"{service}\": VIP {vip} is {kind} address; a VIP must be a unicast address clients can reach"
    )]
    UnusableVip {
        service: String,
        vip: SocketAddr,
        kind: &'static str,
    },

    #[error(
        "service \"{service}\": backend {backend} is {kind} address; a backend must be a unicast address the LB can tunnel to"
    )]
    UnusableBackendAddress {
        service: String,
        backend: SocketAddr,
        kind: &'static str,
    },

    #[error(
        "service \"{service}\": backend {backend} uses port {backend_port} but the VIP port is {vip_port}; \
         with direct server return the packet keeps the VIP port, so give the backend port {vip_port}"
    )]
    BackendPortMismatch {
        service: String,
        backend: SocketAddr,
        backend_port: u16,
        vip_port: u16,
    },

    #[error(
        "service \"{service}\": backend {backend} is {backend_family} but VIP {vip} is {vip_family}; \
         IPv4 VIPs are tunnelled with IPIP and IPv6 VIPs with ip6ip6, so give a backend of the VIP's family"
    )]
    BackendFamilyMismatch {
        service: String,
        backend: SocketAddr,
        vip: SocketAddr,
        backend_family: &'static str,
        vip_family: &'static str,
    },

    #[error(
        "service \"{service}\" has {count} backends but at most {max} are supported per service; remove backends or split the service"
    )]
    TooManyBackends {
        service: String,
        count: usize,
        max: u32,
    },

    #[error(
        "service \"{service}\": backend {backend} has weight {weight}; weights go from 0 to {max}"
    )]
    WeightTooLarge {
        service: String,
        backend: SocketAddr,
        weight: u32,
        max: u32,
    },

    #[error(
        "service \"{service}\": backend {addr} is stored under {key}; the key must equal the backend's address"
    )]
    BackendKeyMismatch {
        service: String,
        key: SocketAddr,
        addr: SocketAddr,
    },

    #[error(
        "service \"{service}\": persistence_netmask {netmask} is longer than an {family} address; use at most {max}"
    )]
    PersistenceNetmaskTooLong {
        service: String,
        netmask: u8,
        family: &'static str,
        max: u8,
    },

    #[error(
        "service \"{service}\": panic_threshold {value} is above 100; it is a percentage of the backends \
         (0 turns panic mode off)"
    )]
    PanicThresholdTooHigh { service: String, value: u8 },

    #[error(
        "service \"{service}\": health check timeout_ms {timeout_ms} is longer than interval_ms {interval_ms}; \
         a check must end before the next one starts, so lower timeout_ms or raise interval_ms"
    )]
    HealthCheckTimeoutAboveInterval {
        service: String,
        timeout_ms: u32,
        interval_ms: u32,
    },

    #[error("service \"{service}\": health check {field} is 0; it must be at least 1")]
    HealthCheckZero {
        service: String,
        field: &'static str,
    },

    #[error(
        "service \"{service}\": health check expect range {low}-{high} is invalid; give HTTP status codes \
         between 100 and 599 with the low one first, e.g. \"200-399\""
    )]
    HealthCheckExpectRange {
        service: String,
        low: u16,
        high: u16,
    },

    #[error(
        "service \"{service}\": health check path \"{path}\" is invalid; it must start with '/' and hold no spaces or control characters"
    )]
    HealthCheckPath { service: String, path: String },

    #[error(
        "services \"{first}\" and \"{second}\" both use VIP {vip}; a VIP belongs to one service, so change one of them"
    )]
    DuplicateVip {
        first: String,
        second: String,
        vip: SocketAddr,
    },

    #[error("backend node \"{node}\": {source}")]
    BackendNodeName { node: String, source: ValueError },

    /// A node's JSON could not be decoded; `field` is the path of the field at fault (empty when the
    /// JSON as a whole is).
    #[error("{object}: invalid {kind} JSON: {}{message}", field_prefix(.field))]
    Json {
        object: String,
        kind: &'static str,
        field: String,
        message: String,
    },
}

impl ModelError {
    /// The part of the service the error is about.
    pub fn field(&self) -> ErrorField {
        match self {
            ModelError::InvalidServiceName { .. } => ErrorField::Name,
            ModelError::VipPortZero { .. } | ModelError::UnusableVip { .. } => ErrorField::Vip,
            ModelError::DuplicateVip { .. } => ErrorField::Vip,
            ModelError::UnusableBackendAddress { backend, .. }
            | ModelError::BackendPortMismatch { backend, .. }
            | ModelError::BackendFamilyMismatch { backend, .. }
            | ModelError::WeightTooLarge { backend, .. } => ErrorField::Backend(*backend),
            ModelError::BackendKeyMismatch { addr, .. } => ErrorField::Backend(*addr),
            ModelError::PersistenceNetmaskTooLong { .. } => ErrorField::PersistenceNetmask,
            ModelError::HealthCheckTimeoutAboveInterval { .. } => {
                ErrorField::HealthCheck("timeout_ms")
            }
            ModelError::HealthCheckZero { field, .. } => ErrorField::HealthCheck(field),
            ModelError::HealthCheckExpectRange { .. } => ErrorField::HealthCheck("expect"),
            ModelError::HealthCheckPath { .. } => ErrorField::HealthCheck("path"),
            ModelError::ServiceKeyMismatch { .. }
            | ModelError::PanicThresholdTooHigh { .. }
            | ModelError::TooManyBackends { .. }
            | ModelError::BackendNodeName { .. }
            | ModelError::Json { .. } => ErrorField::Service,
        }
    }
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}
