//! Apache Curator's service discovery (`curator-x-discovery`): `<root>/<service>/<instance id>`, each
//! an (ephemeral) node whose data is the `ServiceInstance` as `JsonInstanceSerializer` writes it:
//!
//! ```json
//! {"name":"web","id":"2f1c…","address":"198.18.2.11","port":80,"sslPort":null,
//!  "payload":null,"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":null}
//! ```
//!
//! Curator 5 adds `"enabled":true`. What `lb` takes: `address` (an IP literal: `lb` resolves no
//! names), `port` (or `sslPort` with `endpoint = "sslPort"` in the mapping), `enabled` (`false`:
//! draining) and the weight from the payload: a JSON object with an integer `"weight"` (0..=65535;
//! a typed payload's `"@class"` is ignored); any other payload is weight 1. The other fields are
//! read for their types only.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::{Instance, decode};
use crate::model::{BackendState, MAX_WEIGHT};

/// `endpoint` values of a Curator mapping: which port of the instance the VIP forwards to.
pub const ENDPOINTS: &[&str] = &["port", "sslPort"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceInstance {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<String>,
    address: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    ssl_port: Option<u16>,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default, rename = "registrationTimeUTC")]
    #[allow(dead_code)]
    registration_time_utc: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    service_type: Option<ServiceType>,
    #[serde(default)]
    #[allow(dead_code)]
    uri_spec: Option<serde_json::Value>,
    #[serde(default)]
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum ServiceType {
    Dynamic,
    Static,
    Permanent,
    DynamicSequential,
}

/// Reads one instance node. `registry_name` is the service's node (a different `name` in the data
/// is a warning); `ssl` picks `sslPort` over `port`.
pub fn parse_instance(
    registry_name: &str,
    data: &[u8],
    ssl: bool,
) -> Result<(Instance, Vec<String>), String> {
    let instance: ServiceInstance = decode(data, "Curator ServiceInstance")?;
    let mut warnings = Vec::new();
    if let Some(name) = &instance.name
        && name != registry_name
    {
        warnings.push(format!(
            "the instance names service \"{name}\" but is registered under \"{registry_name}\""
        ));
    }
    let address = instance
        .address
        .ok_or("missing field \"address\" (the instance's IP address)")?;
    let ip: IpAddr = address.parse().map_err(|_| {
        format!("address \"{address}\" is not an IP address (lb does not resolve host names; register the instance with its IP)")
    })?;
    let (field, port) = if ssl {
        ("sslPort", instance.ssl_port)
    } else {
        ("port", instance.port)
    };
    let port = port.ok_or_else(|| {
        format!(
            "field \"{field}\" is missing or null (the mapping forwards to the instance's {field})"
        )
    })?;
    let weight = match &instance.payload {
        Some(payload) => payload_weight(payload)?,
        None => 1,
    };
    let state = if instance.enabled == Some(false) {
        BackendState::Draining
    } else {
        BackendState::Active
    };
    Ok((
        Instance {
            addr: SocketAddr::new(ip, port),
            weight,
            state,
        },
        warnings,
    ))
}

/// The weight a payload carries: an object's integer `"weight"`, or 1.
fn payload_weight(payload: &serde_json::Value) -> Result<u32, String> {
    let Some(weight) = payload.as_object().and_then(|o| o.get("weight")) else {
        return Ok(1);
    };
    weight
        .as_u64()
        .and_then(|w| u32::try_from(w).ok())
        .filter(|w| *w <= MAX_WEIGHT)
        .ok_or_else(|| format!("payload.weight: {weight} is not an integer from 0 to {MAX_WEIGHT}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `JsonInstanceSerializer` writes for `ServiceInstance.builder().name("web")
    /// .address("198.18.2.11").port(80)` (field order and nulls as Jackson writes them).
    const CURATOR: &str = r#"{"name":"web","id":"5c0a4a9e-6f0e-4c1e-9a57-0d8f5e3b7a10","address":"198.18.2.11","port":80,"sslPort":null,"payload":null,"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":null}"#;

    fn parse(data: &str) -> Result<Instance, String> {
        parse_instance("web", data.as_bytes(), false).map(|(i, _)| i)
    }

    #[test]
    fn an_instance_as_curator_writes_it() {
        let (instance, warnings) = parse_instance("web", CURATOR.as_bytes(), false).unwrap();
        assert_eq!(instance.addr, "198.18.2.11:80".parse().unwrap());
        assert_eq!(instance.weight, 1);
        assert_eq!(instance.state, BackendState::Active);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn the_payload_weight_typed_or_not() {
        let typed = CURATOR.replace(
            r#""payload":null"#,
            r#""payload":{"@class":"com.example.InstanceDetails","weight":3,"zone":"a"}"#,
        );
        assert_eq!(parse(&typed).unwrap().weight, 3);
        let plain = CURATOR.replace(r#""payload":null"#, r#""payload":{"weight":0}"#);
        assert_eq!(parse(&plain).unwrap().weight, 0);
        let other = CURATOR.replace(r#""payload":null"#, r#""payload":"rack-7""#);
        assert_eq!(parse(&other).unwrap().weight, 1);
        for bad in [
            r#"{"weight":"3"}"#,
            r#"{"weight":-1}"#,
            r#"{"weight":65536}"#,
            r#"{"weight":1.5}"#,
        ] {
            let data = CURATOR.replace(r#""payload":null"#, &format!(r#""payload":{bad}"#));
            let err = parse(&data).unwrap_err();
            assert!(err.contains("payload.weight"), "{bad}: {err}");
        }
    }

    #[test]
    fn ipv6_ssl_port_and_disabled() {
        let data = CURATOR
            .replace("198.18.2.11", "2001:db8::11")
            .replace(r#""sslPort":null"#, r#""sslPort":443"#)
            .replace(r#""uriSpec":null"#, r#""uriSpec":null,"enabled":false"#);
        let (instance, _) = parse_instance("web", data.as_bytes(), true).unwrap();
        assert_eq!(instance.addr, "[2001:db8::11]:443".parse().unwrap());
        assert_eq!(instance.state, BackendState::Draining);
    }

    #[test]
    fn missing_fields_and_wrong_types_are_rejected() {
        let cases = [
            (
                CURATOR.replace(r#""address":"198.18.2.11","#, ""),
                "address",
            ),
            (CURATOR.replace(r#""port":80"#, r#""port":null"#), "port"),
            (CURATOR.replace(r#""port":80"#, r#""port":"80""#), "port"),
            (CURATOR.replace(r#""port":80"#, r#""port":70000"#), "port"),
            (
                CURATOR.replace("198.18.2.11", "web-1.example.com"),
                "not an IP",
            ),
            (CURATOR.replace("DYNAMIC", "EPHEMERAL"), "serviceType"),
            ("not json".to_owned(), "JSON"),
            (String::new(), "JSON"),
            ("1".to_owned(), "ServiceInstance"),
        ];
        for (data, expect) in cases {
            let err = parse(&data).unwrap_err();
            assert!(err.contains(expect), "{data}: {err}");
        }
    }

    #[test]
    fn another_service_name_is_a_warning() {
        let (_, warnings) = parse_instance("web-svc", CURATOR.as_bytes(), false).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("\"web\""), "{warnings:?}");
    }
}
