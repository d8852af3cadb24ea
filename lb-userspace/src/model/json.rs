//! The JSON forms of services and backends stored in ZooKeeper.
//!
//! A service is the node `/<root>/services/<name>` whose data is
//! `{"vip": "198.18.100.1:80", "proto": "tcp", "scheduler": "maglev", "persistence_timeout_s": 0,
//! "persistence_netmask": 32, "health_check": {...}, "panic_threshold": 50}`; its backends are the child nodes named
//! `IP:PORT` (`[2001:db8::11]:80` for IPv6) with data `{"weight": 3, "state": "active"}` or no data.
//! The fields are those of the configuration file ([`super::fields`]); unknown fields are not errors
//! (a newer writer may add some) but are returned as warnings.

use serde::de::DeserializeOwned;

use super::fields::{BackendFields, ServiceFields};
use super::{BackendSpec, ModelError, ServiceSpec, parse_socket_addr};

/// Reads a service node (without its backends) and validates it. Returns the service and warnings
/// about fields it did not know.
pub fn service_from_json(
    name: &str,
    data: &[u8],
) -> Result<(ServiceSpec, Vec<String>), ModelError> {
    let object = format!("service \"{name}\"");
    let (fields, mut unknown): (ServiceFields, _) = decode(data, &object, "service")?;
    unknown.extend(fields.name.is_some().then(|| "name".to_owned()));
    unknown.extend(fields.backends.is_some().then(|| "backends".to_owned()));
    let spec = fields.to_spec(name);
    spec.validate()?;
    Ok((spec, unknown_field_warnings(&object, &unknown)))
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
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok((BackendSpec::new(addr), Vec::new()));
    }
    let object = format!("backend {addr}");
    let (fields, mut unknown): (BackendFields, _) = decode(data, &object, "backend")?;
    unknown.extend(fields.addr.is_some().then(|| "addr".to_owned()));
    Ok((
        fields.to_spec(addr),
        unknown_field_warnings(&object, &unknown),
    ))
}

/// Decodes one node's JSON; returns the value and the paths of the fields it did not know
/// (`colour`, `health_check.retries`). An error names the field it is about.
fn decode<T: DeserializeOwned>(
    data: &[u8],
    object: &str,
    kind: &'static str,
) -> Result<(T, Vec<String>), ModelError> {
    let error = |field: String, message: String| ModelError::Json {
        object: object.to_owned(),
        kind,
        field,
        message,
    };
    let mut unknown = Vec::new();
    let mut json = serde_json::Deserializer::from_slice(data);
    let mut skipped = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let decoded =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(&mut json, &mut skipped));
    let value: T = decoded.map_err(|e| {
        let field = match e.path().to_string() {
            root if root == "." => String::new(),
            path => path,
        };
        error(field, e.into_inner().to_string())
    })?;
    json.end()
        .map_err(|e| error(String::new(), e.to_string()))?;
    Ok((value, unknown))
}

/// `service "web": health_check: unknown field "retries" ignored`.
fn unknown_field_warnings(object: &str, unknown: &[String]) -> Vec<String> {
    unknown
        .iter()
        .map(|path| {
            let (parent, field) = match path.rsplit_once('.') {
                Some((parent, field)) => (format!("{parent}: "), field),
                None => (String::new(), path.as_str()),
            };
            format!("{object}: {parent}unknown field \"{field}\" ignored")
        })
        .collect()
}
