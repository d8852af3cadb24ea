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

mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

use lb_common::VipKey;

use crate::model::{
    BackendSpec, BackendState, DesiredState, ErrorField, HealthCheckKind, HealthCheckSpec,
    MAX_PANIC_THRESHOLD, MAX_WEIGHT, ModelError, Proto, ServiceSpec, parse_expect, parse_scheduler,
    parse_socket_addr,
};
use tree::{Entry, Node, Value};

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

/// Parses and validates a configuration; `origin` names the file in error messages.
pub fn parse_config(text: &str, origin: &str) -> Result<DesiredState, ConfigError> {
    let source = Source { origin, text };
    let root = tree::parse(text).map_err(|e| source.syntax_error(&e))?;
    let root = Table {
        path: String::new(),
        span: 0..0,
        entries: &root,
    };
    root.reject_unknown(&source, &["services"])?;
    let services = match root.get("services") {
        Some(node) => source.array(node, "services")?,
        None => &[],
    };

    let mut state = DesiredState::default();
    let mut names: BTreeMap<String, Range<usize>> = BTreeMap::new();
    let mut vips: BTreeMap<VipKey, String> = BTreeMap::new();
    for (index, node) in services.iter().enumerate() {
        let decoded = decode_service(&source, node, index)?;
        let spec = decoded.spec;
        if let Some(first) = names.get(&spec.name) {
            return Err(source.invalid(
                &decoded.spans.name,
                &format!("services[{index}].name"),
                format!(
                    "service name \"{}\" is used twice (first at {}); service names must be unique",
                    spec.name,
                    source.location(first.start)
                ),
            ));
        }
        spec.validate()
            .map_err(|error| decoded.spans.model_error(&source, index, error))?;
        if let Some(first) = vips.insert(spec.vip_key(), spec.name.clone()) {
            let error = ModelError::DuplicateVip {
                first,
                second: spec.name.clone(),
                vip: spec.vip,
            };
            return Err(decoded.spans.model_error(&source, index, error));
        }
        names.insert(spec.name.clone(), decoded.spans.name.clone());
        state.services.insert(spec.name.clone(), spec);
    }
    debug_assert_eq!(state.validate(), Ok(()));
    Ok(state)
}

/// The text being read, for turning byte offsets into locations.
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

    fn wrong_type(&self, node: &Node, field: &str, expected: &str) -> ConfigError {
        self.invalid(
            &node.span,
            field,
            format!("expected {expected}, found {}", node.value.kind()),
        )
    }

    fn string<'n>(&self, node: &'n Node, field: &str) -> Result<&'n str, ConfigError> {
        match &node.value {
            Value::String(s) => Ok(s),
            _ => Err(self.wrong_type(node, field, "a string")),
        }
    }

    fn integer(&self, node: &Node, field: &str, min: i64, max: i64) -> Result<i64, ConfigError> {
        match node.value {
            Value::Integer(v) if (min..=max).contains(&v) => Ok(v),
            Value::Integer(v) => Err(self.invalid(
                &node.span,
                field,
                format!("{v} is out of range; it must be between {min} and {max}"),
            )),
            _ => Err(self.wrong_type(node, field, "an integer")),
        }
    }

    fn u32(&self, node: &Node, field: &str) -> Result<u32, ConfigError> {
        let v = self.integer(node, field, 0, i64::from(u32::MAX))?;
        Ok(u32::try_from(v).unwrap_or(u32::MAX))
    }

    fn array<'n>(&self, node: &'n Node, field: &str) -> Result<&'n [Node], ConfigError> {
        match &node.value {
            Value::Array(items) => Ok(items),
            _ => Err(self.wrong_type(node, field, "an array")),
        }
    }

    fn table<'n>(&self, node: &'n Node, path: String) -> Result<Table<'n>, ConfigError> {
        match &node.value {
            Value::Table(entries) => Ok(Table {
                path,
                span: node.span.clone(),
                entries,
            }),
            _ => Err(self.wrong_type(node, &path, "a table")),
        }
    }
}

/// A table being decoded, with the field path that leads to it (`services[0]`).
struct Table<'n> {
    path: String,
    span: Range<usize>,
    entries: &'n [Entry],
}

impl<'n> Table<'n> {
    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.node)
    }

    fn require(&self, source: &Source<'_>, key: &str) -> Result<&'n Node, ConfigError> {
        self.get(key).ok_or_else(|| {
            source.invalid(&self.span, &self.path, format!("missing field \"{key}\""))
        })
    }

    fn reject_unknown(&self, source: &Source<'_>, known: &[&str]) -> Result<(), ConfigError> {
        match self
            .entries
            .iter()
            .find(|e| !known.contains(&e.key.as_str()))
        {
            Some(entry) => Err(source.invalid(
                &entry.key_span,
                &self.field(&entry.key),
                format!(
                    "unknown field \"{}\", expected one of {}",
                    entry.key,
                    known.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }
}

const SERVICE_FIELDS: &[&str] = &[
    "name",
    "vip",
    "proto",
    "scheduler",
    "persistence_timeout_s",
    "persistence_netmask",
    "health_check",
    "panic_threshold",
    "backends",
];
const HEALTH_CHECK_FIELDS: &[&str] = &[
    "kind",
    "path",
    "expect",
    "interval_ms",
    "timeout_ms",
    "rise",
    "fall",
];
const BACKEND_FIELDS: &[&str] = &["addr", "weight", "state"];

/// A service read from the file and where its parts are, for pointing model errors at lines.
struct DecodedService {
    spec: ServiceSpec,
    spans: ServiceSpans,
}

struct ServiceSpans {
    table: Range<usize>,
    name: Range<usize>,
    fields: BTreeMap<&'static str, Range<usize>>,
    health_check: BTreeMap<&'static str, Range<usize>>,
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

fn decode_service(
    source: &Source<'_>,
    node: &Node,
    index: usize,
) -> Result<DecodedService, ConfigError> {
    let table = source.table(node, format!("services[{index}]"))?;
    table.reject_unknown(source, SERVICE_FIELDS)?;
    let value_error = |node: &Node, field: &str, error: crate::model::ValueError| {
        source.invalid(&node.span, &table.field(field), error.to_string())
    };

    let name_node = table.require(source, "name")?;
    let name = source.string(name_node, &table.field("name"))?;
    let vip_node = table.require(source, "vip")?;
    let vip = parse_socket_addr("VIP", source.string(vip_node, &table.field("vip"))?)
        .map_err(|e| value_error(vip_node, "vip", e))?;
    let mut spec = ServiceSpec::new(name, vip);
    let mut spans = ServiceSpans {
        table: table.span.clone(),
        name: name_node.span.clone(),
        fields: SERVICE_FIELDS
            .iter()
            .filter_map(|f| table.get(f).map(|n| (*f, n.span.clone())))
            .collect(),
        health_check: BTreeMap::new(),
        backends: BTreeMap::new(),
    };

    if let Some(node) = table.get("proto") {
        spec.proto = Proto::from_name(source.string(node, &table.field("proto"))?)
            .map_err(|e| value_error(node, "proto", e))?;
    }
    if let Some(node) = table.get("scheduler") {
        spec.scheduler = parse_scheduler(source.string(node, &table.field("scheduler"))?)
            .map_err(|e| value_error(node, "scheduler", e))?;
    }
    if let Some(node) = table.get("persistence_timeout_s") {
        spec.persistence_timeout_s = source.u32(node, &table.field("persistence_timeout_s"))?;
    }
    if let Some(node) = table.get("persistence_netmask") {
        let bits = source.integer(node, &table.field("persistence_netmask"), 0, 128)?;
        spec.persistence_netmask = Some(u8::try_from(bits).unwrap_or(u8::MAX));
    }
    if let Some(node) = table.get("panic_threshold") {
        let field = table.field("panic_threshold");
        let percent = source.integer(node, &field, 0, i64::from(MAX_PANIC_THRESHOLD))?;
        spec.panic_threshold = u8::try_from(percent).unwrap_or(MAX_PANIC_THRESHOLD);
    }
    if let Some(node) = table.get("health_check") {
        let check = source.table(node, table.field("health_check"))?;
        spec.health_check = Some(decode_health_check(source, &check)?);
        spans.health_check = HEALTH_CHECK_FIELDS
            .iter()
            .filter_map(|f| check.get(f).map(|n| (*f, n.span.clone())))
            .collect();
    }
    if let Some(node) = table.get("backends") {
        let field = table.field("backends");
        for (i, node) in source.array(node, &field)?.iter().enumerate() {
            let backend = source.table(node, format!("{field}[{i}]"))?;
            let (spec_backend, addr_span) = decode_backend(source, &backend)?;
            let addr = spec_backend.addr;
            if let Some((first, _)) = spans.backends.get(&addr) {
                return Err(source.invalid(
                    &addr_span,
                    &backend.field("addr"),
                    format!(
                        "backend {addr} is listed twice (first as {field}[{first}]); list each backend once"
                    ),
                ));
            }
            spans.backends.insert(addr, (i, addr_span));
            spec.backends.insert(addr, spec_backend);
        }
    }
    Ok(DecodedService { spec, spans })
}

fn decode_health_check(
    source: &Source<'_>,
    table: &Table<'_>,
) -> Result<HealthCheckSpec, ConfigError> {
    table.reject_unknown(source, HEALTH_CHECK_FIELDS)?;
    let mut check = HealthCheckSpec::default();
    if let Some(node) = table.get("kind") {
        check.kind = HealthCheckKind::from_name(source.string(node, &table.field("kind"))?)
            .map_err(|e| source.invalid(&node.span, &table.field("kind"), e.to_string()))?;
    }
    if let Some(node) = table.get("path") {
        check.path = source.string(node, &table.field("path"))?.to_owned();
    }
    if let Some(node) = table.get("expect") {
        let field = table.field("expect");
        check.expect = match &node.value {
            // `expect = 200` is one status code.
            Value::Integer(_) => {
                let code = source.integer(node, &field, 0, i64::from(u16::MAX))?;
                let code = u16::try_from(code).unwrap_or(u16::MAX);
                (code, code)
            }
            _ => parse_expect(source.string(node, &field)?)
                .map_err(|e| source.invalid(&node.span, &field, e.to_string()))?,
        };
    }
    for (key, slot) in [
        ("interval_ms", &mut check.interval_ms),
        ("timeout_ms", &mut check.timeout_ms),
        ("rise", &mut check.rise),
        ("fall", &mut check.fall),
    ] {
        if let Some(node) = table.get(key) {
            *slot = source.u32(node, &table.field(key))?;
        }
    }
    Ok(check)
}

fn decode_backend(
    source: &Source<'_>,
    table: &Table<'_>,
) -> Result<(BackendSpec, Range<usize>), ConfigError> {
    table.reject_unknown(source, BACKEND_FIELDS)?;
    let addr_node = table.require(source, "addr")?;
    let addr = parse_socket_addr(
        "backend address",
        source.string(addr_node, &table.field("addr"))?,
    )
    .map_err(|e| source.invalid(&addr_node.span, &table.field("addr"), e.to_string()))?;
    let mut backend = BackendSpec::new(addr);
    if let Some(node) = table.get("weight") {
        let weight = source.integer(node, &table.field("weight"), 0, i64::from(MAX_WEIGHT))?;
        backend.weight = u32::try_from(weight).unwrap_or(MAX_WEIGHT);
    }
    if let Some(node) = table.get("state") {
        backend.state = BackendState::from_name(source.string(node, &table.field("state"))?)
            .map_err(|e| source.invalid(&node.span, &table.field("state"), e.to_string()))?;
    }
    Ok((backend, addr_node.span.clone()))
}

#[cfg(test)]
mod tests;
