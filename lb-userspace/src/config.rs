//! The static configuration file of `lb run --config FILE` (TOML).
//!
//! ```toml
//! # every field except name, vip and backends[].addr is optional
//! [[services]]
//! name = "web"
//! vip = "198.18.100.1:80"            # IPv6: "[2001:db8:100::1]:80"
//! proto = "tcp"
//! scheduler = "maglev"               # rr | wrr | random | wrandom | least-conn | maglev
//! persistence_timeout_s = 0
//! persistence_netmask = 32
//! health_check = { kind = "tcp", interval_ms = 1000, timeout_ms = 500, rise = 2, fall = 3 }
//! # http: health_check = { kind = "http", path = "/healthz", expect = "200-399" }  (or expect = 200)
//! panic_threshold = 0                # percent; below this share healthy, send to all (0 = off)
//! backends = [
//!   { addr = "198.18.2.11:80", weight = 1 },
//!   { addr = "198.18.2.12:80", weight = 2, state = "draining" },
//! ]
//! ```
//!
//! The file is written by an operator, so it is read strictly: unknown fields are errors, and every
//! error names `FILE:LINE:COLUMN` and the field path (`services[0].scheduler`). A file with any error
//! is rejected as a whole.
//!
//! The fields, their types, defaults and ranges are ZooKeeper's too (`model::fields`): the file is
//! decoded through the same serde definitions, by a deserializer over the spanned TOML tree that
//! tags every error with the line and field it is about (`config::de`).

mod de;
mod mapping;
mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

use lb_common::VipKey;

use serde::Deserialize;

use crate::model::fields::ServiceFields;
use crate::model::{DesiredState, ErrorField, ModelError, ServiceSpec};
use de::{DecodeError, NodeDeserializer};
pub use mapping::{MappedService, check_mapping, check_mapping_file};
use tree::{Node, Value};

/// A place in a configuration file; shown as `FILE:LINE:COLUMN` (both 1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub origin: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.origin, self.line, self.column)
    }
}

/// Why a configuration file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration file: {error}")]
    Read { path: String, error: std::io::Error },
    /// Not TOML at all.
    #[error("{location}: {message}")]
    Syntax { location: Location, message: String },
    /// A field is missing, unknown, of the wrong type or out of range.
    #[error("{location}: {field}: {message}")]
    Invalid {
        location: Location,
        field: String,
        message: String,
    },
    /// The service breaks a rule of the model (port mismatch, duplicate VIP, ...).
    #[error("{location}: {field}: {error}")]
    Model {
        location: Location,
        field: String,
        error: Box<ModelError>,
    },
}

impl ConfigError {
    /// Where in the file the error is, if it is about the file's content.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { location, .. }
            | ConfigError::Invalid { location, .. }
            | ConfigError::Model { location, .. } => Some(location),
        }
    }
}

/// Reads and validates a configuration file.
pub fn load_config_file(path: &Path) -> Result<DesiredState, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.display().to_string(),
        error,
    })?;
    parse_config(&text, &path.display().to_string())
}

/// Parses and validates a configuration; `origin` names the file in error messages. The verdict is
/// [`check_config`]'s; the error is its first one.
pub fn parse_config(text: &str, origin: &str) -> Result<DesiredState, ConfigError> {
    check_config(text, origin).map_err(ConfigErrors::into_first)
}

/// Every error of a rejected file, in file order (never empty).
#[derive(Debug)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    fn into_first(self) -> ConfigError {
        // `check_config` never returns an empty list.
        self.0
            .into_iter()
            .next()
            .unwrap_or_else(|| ConfigError::Syntax {
                location: Location {
                    origin: String::new(),
                    line: 1,
                    column: 1,
                },
                message: "rejected without a reason".to_owned(),
            })
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Reads and validates a configuration file, reporting every error (`lb config check`).
pub fn check_config_file(path: &Path) -> Result<DesiredState, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors(vec![ConfigError::Read {
            path: path.display().to_string(),
            error,
        }])
    })?;
    check_config(&text, &path.display().to_string())
}

/// Parses and validates a configuration, going on after an error so that every service's errors
/// are reported; a file with any error is rejected as a whole.
pub fn check_config(text: &str, origin: &str) -> Result<DesiredState, ConfigErrors> {
    let source = Source { origin, text };
    let root = tree::parse(text).map_err(|e| ConfigErrors(vec![source.syntax_error(&e)]))?;
    check_tree(&source, &root)
}

/// Checks a parsed file: every service against the model and the services before it.
fn check_tree(source: &Source<'_>, root: &Node) -> Result<DesiredState, ConfigErrors> {
    let source = *source;
    let nodes = root.get("services").map_or(&[][..], Node::items);
    let mut errors = Vec::new();
    let fields: Vec<Option<ServiceFields>> = match FileFields::deserialize(NodeDeserializer {
        node: root,
        path: String::new(),
    }) {
        Ok(file) => file.services.into_iter().map(Some).collect(),
        Err(e) if in_a_service(&e) => nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                ServiceFields::deserialize(NodeDeserializer {
                    node,
                    path: format!("services[{i}]"),
                })
                .map_err(|e| errors.push(source.decode_error(e)))
                .ok()
            })
            .collect(),
        Err(e) => return Err(ConfigErrors(vec![source.decode_error(e)])),
    };

    let mut state = DesiredState::default();
    let mut names: BTreeMap<String, Range<usize>> = BTreeMap::new();
    let mut vips: BTreeMap<VipKey, String> = BTreeMap::new();
    for (index, (fields, node)) in fields.iter().zip(nodes).enumerate() {
        let Some(fields) = fields else { continue };
        match checked_service(&source, fields, node, index, &names, &vips) {
            Ok((spec, name_span)) => {
                names.insert(spec.name.clone(), name_span);
                vips.insert(spec.vip_key(), spec.name.clone());
                state.insert(spec);
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.location().map(|l| (l.line, l.column)));
        return Err(ConfigErrors(errors));
    }
    debug_assert_eq!(state.validate(), Ok(()));
    Ok(state)
}

/// Is a whole-file decoding error about a value inside `services[i]`?
fn in_a_service(e: &DecodeError) -> bool {
    e.place
        .as_ref()
        .is_some_and(|(_, path)| path.starts_with("services["))
}

/// Builds service `index` and checks it against the model and against the services before it.
fn checked_service(
    source: &Source<'_>,
    fields: &ServiceFields,
    node: &Node,
    index: usize,
    names: &BTreeMap<String, Range<usize>>,
    vips: &BTreeMap<VipKey, String>,
) -> Result<(ServiceSpec, Range<usize>), ConfigError> {
    let (spec, spans) = service(source, fields, node, index)?;
    if let Some(first) = names.get(&spec.name) {
        return Err(source.invalid(
            &spans.name,
            &format!("services[{index}].name"),
            format!(
                "service name \"{}\" is used twice (first at {}); service names must be unique",
                spec.name,
                source.location(first.start)
            ),
        ));
    }
    spec.validate()
        .map_err(|error| spans.model_error(source, index, error))?;
    if let Some(first) = vips.get(&spec.vip_key()) {
        let error = ModelError::DuplicateVip {
            first: first.clone(),
            second: spec.name.clone(),
            vip: spec.vip,
        };
        return Err(spans.model_error(source, index, error));
    }
    Ok((spec, spans.name))
}

/// The whole file.
#[derive(Deserialize)]
#[serde(expecting = "a table")]
struct FileFields {
    #[serde(default)]
    services: Vec<ServiceFields>,
}

/// Builds service `index` from its decoded fields and notes where its parts are in the file.
fn service(
    source: &Source<'_>,
    fields: &ServiceFields,
    node: &Node,
    index: usize,
) -> Result<(ServiceSpec, ServiceSpans), ConfigError> {
    let path = format!("services[{index}]");
    let (Some(name), Some(name_node)) = (&fields.name, node.get("name")) else {
        return Err(source.invalid(&node.span, &path, "missing field \"name\""));
    };
    let spans_of = |node: Option<&Node>| -> BTreeMap<String, Range<usize>> {
        match node.map(|n| &n.value) {
            Some(Value::Table(entries)) => entries
                .iter()
                .map(|e| (e.key.clone(), e.node.span.clone()))
                .collect(),
            _ => BTreeMap::new(),
        }
    };
    let mut spans = ServiceSpans {
        table: node.span.clone(),
        name: name_node.span.clone(),
        fields: spans_of(Some(node)),
        health_check: spans_of(node.get("health_check")),
        backends: BTreeMap::new(),
    };
    let mut spec = fields.to_spec(name);
    let backend_nodes = node.get("backends").map_or(&[][..], Node::items);
    for (i, (backend, backend_node)) in fields
        .backends
        .iter()
        .flatten()
        .zip(backend_nodes)
        .enumerate()
    {
        let field = format!("{path}.backends[{i}]");
        let (Some(addr), Some(addr_node)) = (backend.addr, backend_node.get("addr")) else {
            return Err(source.invalid(&backend_node.span, &field, "missing field \"addr\""));
        };
        if let Some((first, _)) = spans.backends.get(&addr) {
            return Err(source.invalid(
                &addr_node.span,
                &format!("{field}.addr"),
                format!(
                    "backend {addr} is listed twice (first as {path}.backends[{first}]); list each backend once"
                ),
            ));
        }
        spans.backends.insert(addr, (i, addr_node.span.clone()));
        spec.backends.insert(addr, backend.to_spec(addr));
    }
    Ok((spec, spans))
}

/// The text being read, for turning byte offsets into locations.
#[derive(Clone, Copy)]
struct Source<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn location(&self, offset: usize) -> Location {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            origin: self.origin.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }

    fn invalid(&self, span: &Range<usize>, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            location: self.location(span.start),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn syntax_error(&self, error: &toml::de::Error) -> ConfigError {
        let message = if error.message().contains("$__toml_private_datetime") {
            // toml's own message names its internal datetime marker; say what is wrong instead.
            "dates and times are not valid values in this file".to_owned()
        } else {
            error.message().trim_end().to_owned()
        };
        ConfigError::Syntax {
            location: self.location(error.span().map_or(0, |s| s.start)),
            message,
        }
    }

    fn decode_error(&self, error: DecodeError) -> ConfigError {
        let (span, field) = error.place.unwrap_or_default();
        ConfigError::Invalid {
            location: self.location(span.start),
            field,
            message: error.message,
        }
    }
}

/// Where a service's parts are in the file, for pointing model errors at lines.
struct ServiceSpans {
    table: Range<usize>,
    name: Range<usize>,
    fields: BTreeMap<String, Range<usize>>,
    health_check: BTreeMap<String, Range<usize>>,
    /// Address → (index in `backends`, span of its `addr`).
    backends: BTreeMap<SocketAddr, (usize, Range<usize>)>,
}

impl ServiceSpans {
    /// Places a model error of service `index` at the line of the field it is about.
    fn model_error(&self, source: &Source<'_>, index: usize, error: ModelError) -> ConfigError {
        let service = format!("services[{index}]");
        let (field, span) = match error.field() {
            ErrorField::Service => (service, Some(&self.table)),
            ErrorField::Name => (format!("{service}.name"), Some(&self.name)),
            ErrorField::Vip => (format!("{service}.vip"), self.fields.get("vip")),
            ErrorField::Proto => (format!("{service}.proto"), self.fields.get("proto")),
            ErrorField::Scheduler => (format!("{service}.scheduler"), self.fields.get("scheduler")),
            ErrorField::PersistenceNetmask => (
                format!("{service}.persistence_netmask"),
                self.fields.get("persistence_netmask"),
            ),
            ErrorField::HealthCheck(sub) => match self.health_check.get(sub) {
                Some(span) => (format!("{service}.health_check.{sub}"), Some(span)),
                None => (
                    format!("{service}.health_check"),
                    self.fields.get("health_check"),
                ),
            },
            ErrorField::Backend(addr) => match self.backends.get(&addr) {
                Some((i, span)) => (format!("{service}.backends[{i}].addr"), Some(span)),
                None => (format!("{service}.backends"), self.fields.get("backends")),
            },
        };
        ConfigError::Model {
            location: source.location(span.unwrap_or(&self.table).start),
            field,
            error: Box::new(error),
        }
    }
}

#[cfg(test)]
mod tests;
