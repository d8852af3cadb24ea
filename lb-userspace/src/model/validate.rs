//! The rules a service and a desired state must follow before they reach the data plane.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::VipKey;
use lb_common::limits::MAX_BACKENDS_PER_SERVICE;

use super::{
    BackendSpec, DesiredState, HealthCheckKind, HealthCheckSpec, MAX_PANIC_THRESHOLD,
    MAX_SERVICE_NAME_LEN, MAX_WEIGHT, ModelError, ServiceSpec, address_bits, family_name,
};

pub(super) fn desired_state(state: &DesiredState) -> Result<(), ModelError> {
    let mut vips: BTreeMap<VipKey, &str> = BTreeMap::new();
    for (key, service) in &state.services {
        if *key != service.name {
            return Err(ModelError::ServiceKeyMismatch {
                key: key.clone(),
                service: service.name.clone(),
            });
        }
        service.validate()?;
        if let Some(first) = vips.insert(service.vip_key(), &service.name) {
            return Err(ModelError::DuplicateVip {
                first: first.to_owned(),
                second: service.name.clone(),
                vip: service.vip,
            });
        }
    }
    Ok(())
}

pub(super) fn service(spec: &ServiceSpec) -> Result<(), ModelError> {
    service_name(&spec.name)?;
    vip(spec)?;
    persistence(spec)?;
    if spec.panic_threshold > MAX_PANIC_THRESHOLD {
        return Err(ModelError::PanicThresholdTooHigh {
            service: spec.name.clone(),
            value: spec.panic_threshold,
        });
    }
    if let Some(check) = &spec.health_check {
        health_check(&spec.name, check)?;
    }
    if spec.backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
        return Err(ModelError::TooManyBackends {
            service: spec.name.clone(),
            count: spec.backends.len(),
            max: MAX_BACKENDS_PER_SERVICE,
        });
    }
    for (key, backend) in &spec.backends {
        if *key != backend.addr {
            return Err(ModelError::BackendKeyMismatch {
                service: spec.name.clone(),
                key: *key,
                addr: backend.addr,
            });
        }
        self::backend(spec, backend)?;
    }
    Ok(())
}

/// Service names become ZooKeeper node names and fill `ServiceMeta.name`.
pub(super) fn service_name(name: &str) -> Result<(), ModelError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_SERVICE_NAME_LEN {
        Some("it is longer than 63 bytes")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" cannot name a ZooKeeper node")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("use only letters, digits, '.', '_' and '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ModelError::InvalidServiceName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn vip(spec: &ServiceSpec) -> Result<(), ModelError> {
    if spec.vip.port() == 0 {
        return Err(ModelError::VipPortZero {
            service: spec.name.clone(),
            vip: spec.vip,
        });
    }
    if let Some(kind) = unusable_address_kind(spec.vip.ip()) {
        return Err(ModelError::UnusableVip {
            service: spec.name.clone(),
            vip: spec.vip,
            kind,
        });
    }
    Ok(())
}

fn persistence(spec: &ServiceSpec) -> Result<(), ModelError> {
    let Some(netmask) = spec.persistence_netmask else {
        return Ok(());
    };
    let max = address_bits(spec.vip.ip());
    if u32::from(netmask) > max {
        return Err(ModelError::PersistenceNetmaskTooLong {
            service: spec.name.clone(),
            netmask,
            family: family_name(spec.vip.ip()),
            max: max as u8,
        });
    }
    Ok(())
}

fn health_check(service: &str, check: &HealthCheckSpec) -> Result<(), ModelError> {
    for (field, value) in [
        ("interval_ms", check.interval_ms),
        ("timeout_ms", check.timeout_ms),
        ("rise", check.rise),
        ("fall", check.fall),
    ] {
        if value == 0 {
            return Err(ModelError::HealthCheckZero {
                service: service.to_owned(),
                field,
            });
        }
    }
    if check.timeout_ms > check.interval_ms {
        return Err(ModelError::HealthCheckTimeoutAboveInterval {
            service: service.to_owned(),
            timeout_ms: check.timeout_ms,
            interval_ms: check.interval_ms,
        });
    }
    if check.kind == HealthCheckKind::Http {
        let (low, high) = check.expect;
        if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
            return Err(ModelError::HealthCheckExpectRange {
                service: service.to_owned(),
                low,
                high,
            });
        }
        let path_ok = check.path.starts_with('/')
            && !check
                .path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control());
        if !path_ok {
            return Err(ModelError::HealthCheckPath {
                service: service.to_owned(),
                path: check.path.clone(),
            });
        }
    }
    Ok(())
}

fn backend(spec: &ServiceSpec, backend: &BackendSpec) -> Result<(), ModelError> {
    let addr = backend.addr;
    if let Some(kind) = unusable_address_kind(addr.ip()) {
        return Err(ModelError::UnusableBackendAddress {
            service: spec.name.clone(),
            backend: addr,
            kind,
        });
    }
    if addr.is_ipv4() != spec.vip.is_ipv4() {
        return Err(ModelError::BackendFamilyMismatch {
            service: spec.name.clone(),
            backend: addr,
            vip: spec.vip,
            backend_family: family_name(addr.ip()),
            vip_family: family_name(spec.vip.ip()),
        });
    }
    if addr.port() != spec.vip.port() {
        return Err(ModelError::BackendPortMismatch {
            service: spec.name.clone(),
            backend: addr,
            backend_port: addr.port(),
            vip_port: spec.vip.port(),
        });
    }
    if backend.weight > MAX_WEIGHT {
        return Err(ModelError::WeightTooLarge {
            service: spec.name.clone(),
            backend: addr,
            weight: backend.weight,
            max: MAX_WEIGHT,
        });
    }
    Ok(())
}

/// Why an address can be neither a VIP nor a tunnel endpoint, phrased for "... is {kind} address".
fn unusable_address_kind(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("an unspecified")
    } else if ip.is_multicast() {
        Some("a multicast")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast")
    } else {
        None
    }
}
