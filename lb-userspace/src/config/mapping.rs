//! The service mapping of `lb run --zk-format curator|serverset --zk-services FILE`: the file's
//! services (the same fields, validation and `FILE:LINE:COL` errors as `--config`), without
//! backends (the registry's instances are the backends) and with two fields of its own:
//!
//! ```toml
//! [[services]]
//! name = "web"
//! vip = "198.18.100.1:80"
//! scheduler = "maglev"
//! registry_name = "web-svc"   # optional, default: name. Curator: the service name; serverset: the path under --zk-root
//! endpoint = "http"           # optional. Curator: "port" (default) or "sslPort"; serverset: an additionalEndpoints name
//! health_check = { kind = "tcp" }
//! ```

use std::path::Path;

use super::tree::{self, Entry, Node, Value};
use super::{ConfigError, ConfigErrors, Source, check_tree};
use crate::model::ServiceSpec;

/// One service of the mapping file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedService {
    /// Validated, without backends.
    pub spec: ServiceSpec,
    /// `registry_name`, defaulting to the service's name.
    pub registry_name: String,
    pub endpoint: Option<String>,
}

/// Reads and validates a mapping file, reporting every error.
pub fn check_mapping_file(path: &Path) -> Result<Vec<MappedService>, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors(vec![ConfigError::Read {
            path: path.display().to_string(),
            error,
        }])
    })?;
    check_mapping(&text, &path.display().to_string())
}

/// The mapping's own fields of one service, taken out of its table before the shared check.
#[derive(Default)]
struct RegistryFields {
    registry_name: Option<String>,
    endpoint: Option<String>,
}

/// Parses and validates a mapping: the mapping's fields are taken out of each service table, the
/// rest is checked exactly as a `--config` file (which has no backends here).
pub fn check_mapping(text: &str, origin: &str) -> Result<Vec<MappedService>, ConfigErrors> {
    let source = Source { origin, text };
    let mut root = tree::parse(text).map_err(|e| ConfigErrors(vec![source.syntax_error(&e)]))?;
    let mut errors = Vec::new();
    let mut extra: Vec<RegistryFields> = Vec::new();
    if let Value::Table(entries) = &mut root.value
        && let Some(services) = entries.iter_mut().find(|e| e.key == "services")
        && let Value::Array(items) = &mut services.node.value
    {
        for (i, item) in items.iter_mut().enumerate() {
            extra.push(take_registry_fields(&source, item, i, &mut errors));
        }
    }
    let state = match check_tree(&source, &root) {
        Ok(state) => Some(state),
        Err(more) => {
            errors.extend(more.0);
            None
        }
    };
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.location().map(|l| (l.line, l.column)));
        return Err(ConfigErrors(errors));
    }
    let state = state.unwrap_or_default();
    // `check_tree` accepted every table, so each has a name, in file order.
    let names: Vec<String> = root
        .get("services")
        .map_or(&[][..], Node::items)
        .iter()
        .filter_map(|n| match n.get("name").map(|v| &v.value) {
            Some(Value::String(name)) => Some(name.clone()),
            _ => None,
        })
        .collect();
    Ok(names
        .into_iter()
        .zip(extra)
        .filter_map(|(name, fields)| {
            let spec = ServiceSpec::clone(state.services.get(&name)?);
            Some(MappedService {
                registry_name: fields.registry_name.unwrap_or_else(|| name.clone()),
                endpoint: fields.endpoint,
                spec,
            })
        })
        .collect())
}

/// Removes `registry_name` and `endpoint` from service table `index` (they must be strings) and
/// refuses `backends`.
fn take_registry_fields(
    source: &Source<'_>,
    item: &mut Node,
    index: usize,
    errors: &mut Vec<ConfigError>,
) -> RegistryFields {
    let mut fields = RegistryFields::default();
    let Value::Table(entries) = &mut item.value else {
        return fields;
    };
    let mut kept: Vec<Entry> = Vec::with_capacity(entries.len());
    for entry in entries.drain(..) {
        let field = format!("services[{index}].{}", entry.key);
        let slot = match entry.key.as_str() {
            "registry_name" => &mut fields.registry_name,
            "endpoint" => &mut fields.endpoint,
            "backends" => {
                errors.push(source.invalid(
                    &entry.key_span,
                    &field,
                    "a service mapping has no backends: they are the registry's instances; remove it",
                ));
                continue;
            }
            _ => {
                kept.push(entry);
                continue;
            }
        };
        match entry.node.value {
            Value::String(s) => *slot = Some(s),
            other => errors.push(source.invalid(
                &entry.node.span,
                &field,
                format!("expected a string, found {}", other.kind()),
            )),
        }
    }
    *entries = kept;
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_with_defaults_and_registry_fields() {
        let text = r#"
[[services]]
name = "web"
vip = "198.18.100.1:80"
scheduler = "wrr"
registry_name = "web-svc"
health_check = { kind = "http", path = "/ping" }

[[services]]
name = "api"
vip = "[2001:db8::100]:443"
endpoint = "sslPort"
"#;
        let mapped = check_mapping(text, "map.toml").unwrap();
        assert_eq!(mapped.len(), 2);
        assert_eq!(mapped[0].spec.name, "web");
        assert_eq!(mapped[0].registry_name, "web-svc");
        assert_eq!(mapped[0].spec.health_check.as_ref().unwrap().path, "/ping");
        assert_eq!(mapped[1].registry_name, "api");
        assert_eq!(mapped[1].endpoint.as_deref(), Some("sslPort"));
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let text = r#"[[services]]
name = "web"
vip = "198.18.100.1:80"
registry_name = 3
backends = []

[[services]]
name = "api"
vip = "198.18.100.1:80"
colour = "blue"
"#;
        let errors = check_mapping(text, "map.toml").unwrap_err().to_string();
        assert!(
            errors.contains("map.toml:4:17: services[0].registry_name: expected a string"),
            "{errors}"
        );
        assert!(
            errors.contains("map.toml:5:1: services[0].backends"),
            "{errors}"
        );
        assert!(
            errors.contains("map.toml:10:1: services[1].colour"),
            "{errors}"
        );
    }
}
