//! One table of services, each decoded by both sources: the configuration file (TOML, strict) and
//! ZooKeeper (JSON, a node per service and per backend). Both must accept the same services, build
//! the same spec, and reject the same ones naming the same field.

use serde_json::{Value, json};

use crate::config::{ConfigError, parse_config};
use crate::model::{ErrorField, ModelError, ServiceSpec, backend_from_json, service_from_json};
use crate::zk::schema::parse_backend_node_name;

/// What both decoders must make of a case.
#[derive(Debug)]
enum Outcome {
    Accept,
    /// Rejected, about this field (relative to the service: `vip`, `backends[0].weight`, `` for
    /// the service as a whole).
    Reject(&'static str),
    /// An unknown field: an error in the file, a warning in ZooKeeper, both naming it.
    Unknown(&'static str),
}
use Outcome::{Accept, Reject, Unknown};

struct Case {
    what: &'static str,
    /// The service's fields (no name, no backends).
    service: Value,
    /// `(address, fields)` of each backend.
    backends: Vec<(&'static str, Value)>,
    outcome: Outcome,
}

fn case(what: &'static str, service: Value, outcome: Outcome) -> Case {
    Case {
        what,
        service,
        backends: Vec::new(),
        outcome,
    }
}

fn with_backend(what: &'static str, addr: &'static str, fields: Value, outcome: Outcome) -> Case {
    Case {
        what,
        service: json!({"vip": VIP}),
        backends: vec![(addr, fields)],
        outcome,
    }
}

const VIP: &str = "198.18.100.1:80";

fn health(check: Value) -> Value {
    json!({"vip": VIP, "health_check": check})
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        case("minimal", json!({"vip": VIP}), Accept),
        Case {
            what: "every field",
            service: json!({
                "vip": VIP, "proto": "tcp", "scheduler": "wrr", "persistence_timeout_s": 300,
                "persistence_netmask": 24, "panic_threshold": 50,
                "health_check": {"kind": "http", "path": "/ready", "expect": "200-299",
                                 "interval_ms": 2000, "timeout_ms": 700, "rise": 1, "fall": 4},
            }),
            backends: vec![
                ("198.18.2.11:80", json!({"weight": 3})),
                ("198.18.2.12:80", json!({"weight": 0, "state": "draining"})),
                ("198.18.2.13:80", json!({})),
            ],
            outcome: Accept,
        },
        case(
            "IPv6",
            json!({"vip": "[2001:db8:100::1]:443", "persistence_netmask": 64}),
            Accept,
        ),
        // vip
        case("vip missing", json!({"proto": "tcp"}), Reject("")),
        case("vip an integer", json!({"vip": 80}), Reject("vip")),
        case(
            "vip without port",
            json!({"vip": "198.18.100.1"}),
            Reject("vip"),
        ),
        case(
            "vip port 0",
            json!({"vip": "198.18.100.1:0"}),
            Reject("vip"),
        ),
        case(
            "vip multicast",
            json!({"vip": "[ff02::1]:80"}),
            Reject("vip"),
        ),
        // proto, scheduler
        case(
            "proto udp",
            json!({"vip": VIP, "proto": "udp"}),
            Reject("proto"),
        ),
        case(
            "proto a number",
            json!({"vip": VIP, "proto": 6}),
            Reject("proto"),
        ),
        case(
            "unknown scheduler",
            json!({"vip": VIP, "scheduler": "fast"}),
            Reject("scheduler"),
        ),
        case(
            "scheduler a list",
            json!({"vip": VIP, "scheduler": ["rr"]}),
            Reject("scheduler"),
        ),
        // persistence, panic threshold
        case(
            "timeout negative",
            json!({"vip": VIP, "persistence_timeout_s": -1}),
            Reject("persistence_timeout_s"),
        ),
        case(
            "timeout too large",
            json!({"vip": VIP, "persistence_timeout_s": 4_294_967_296_u64}),
            Reject("persistence_timeout_s"),
        ),
        case(
            "timeout a string",
            json!({"vip": VIP, "persistence_timeout_s": "300"}),
            Reject("persistence_timeout_s"),
        ),
        case(
            "timeout a float",
            json!({"vip": VIP, "persistence_timeout_s": 1.5}),
            Reject("persistence_timeout_s"),
        ),
        case(
            "netmask above 128",
            json!({"vip": VIP, "persistence_netmask": 200}),
            Reject("persistence_netmask"),
        ),
        case(
            "netmask longer than IPv4",
            json!({"vip": VIP, "persistence_netmask": 33}),
            Reject("persistence_netmask"),
        ),
        case(
            "panic threshold 100",
            json!({"vip": VIP, "panic_threshold": 100}),
            Accept,
        ),
        case(
            "panic threshold 101",
            json!({"vip": VIP, "panic_threshold": 101}),
            Reject("panic_threshold"),
        ),
        case(
            "panic threshold a boolean",
            json!({"vip": VIP, "panic_threshold": true}),
            Reject("panic_threshold"),
        ),
        // health checks
        case("empty health check", health(json!({})), Accept),
        case("tcp health check", health(json!({"kind": "tcp"})), Accept),
        case(
            "expect an integer",
            health(json!({"kind": "http", "expect": 200})),
            Accept,
        ),
        case(
            "expect one code",
            health(json!({"kind": "http", "expect": "204"})),
            Accept,
        ),
        case(
            "expect a range",
            health(json!({"kind": "http", "expect": "200-399"})),
            Accept,
        ),
        case(
            "expect words",
            health(json!({"expect": "ok"})),
            Reject("health_check.expect"),
        ),
        case(
            "expect reversed",
            health(json!({"kind": "http", "expect": "399-200"})),
            Reject("health_check.expect"),
        ),
        case(
            "expect not a status",
            health(json!({"kind": "http", "expect": 42})),
            Reject("health_check.expect"),
        ),
        case(
            "expect above u16",
            health(json!({"expect": 70000})),
            Reject("health_check.expect"),
        ),
        case(
            "expect a boolean",
            health(json!({"expect": true})),
            Reject("health_check.expect"),
        ),
        case(
            "health check a string",
            json!({"vip": VIP, "health_check": "tcp"}),
            Reject("health_check"),
        ),
        case(
            "kind icmp",
            health(json!({"kind": "icmp"})),
            Reject("health_check.kind"),
        ),
        case(
            "path without slash",
            health(json!({"kind": "http", "path": "ready"})),
            Reject("health_check.path"),
        ),
        case(
            "path a number",
            health(json!({"path": 1})),
            Reject("health_check.path"),
        ),
        case(
            "rise 0",
            health(json!({"rise": 0})),
            Reject("health_check.rise"),
        ),
        case(
            "fall 0",
            health(json!({"fall": 0})),
            Reject("health_check.fall"),
        ),
        case(
            "timeout above interval",
            health(json!({"interval_ms": 100, "timeout_ms": 200})),
            Reject("health_check.timeout_ms"),
        ),
        case(
            "interval a string",
            health(json!({"interval_ms": "1000"})),
            Reject("health_check.interval_ms"),
        ),
        case(
            "interval negative",
            health(json!({"interval_ms": -5})),
            Reject("health_check.interval_ms"),
        ),
        // unknown fields
        case(
            "unknown service field",
            json!({"vip": VIP, "colour": "blue"}),
            Unknown("colour"),
        ),
        case(
            "unknown health check field",
            health(json!({"retries": 3})),
            Unknown("health_check.retries"),
        ),
        with_backend(
            "unknown backend field",
            "198.18.2.11:80",
            json!({"zone": "a"}),
            Unknown("backends[0].zone"),
        ),
        // backends
        with_backend("weight 0", "198.18.2.11:80", json!({"weight": 0}), Accept),
        with_backend(
            "weight 65535",
            "198.18.2.11:80",
            json!({"weight": 65535}),
            Accept,
        ),
        with_backend(
            "weight 70000",
            "198.18.2.11:80",
            json!({"weight": 70000}),
            Reject("backends[0].weight"),
        ),
        with_backend(
            "weight negative",
            "198.18.2.11:80",
            json!({"weight": -1}),
            Reject("backends[0].weight"),
        ),
        with_backend(
            "weight a string",
            "198.18.2.11:80",
            json!({"weight": "3"}),
            Reject("backends[0].weight"),
        ),
        with_backend(
            "state draining",
            "198.18.2.11:80",
            json!({"state": "draining"}),
            Accept,
        ),
        with_backend(
            "state down",
            "198.18.2.11:80",
            json!({"state": "down"}),
            Reject("backends[0].state"),
        ),
        with_backend(
            "state a number",
            "198.18.2.11:80",
            json!({"state": 1}),
            Reject("backends[0].state"),
        ),
        with_backend(
            "address without port",
            "198.18.2.11",
            json!({}),
            Reject("backends[0].addr"),
        ),
        with_backend(
            "address not an IP",
            "backend-1:80",
            json!({}),
            Reject("backends[0].addr"),
        ),
        with_backend(
            "address port mismatch",
            "198.18.2.11:8080",
            json!({}),
            Reject("backends[0].addr"),
        ),
        with_backend(
            "address other family",
            "[2001:db8::11]:80",
            json!({}),
            Reject("backends[0].addr"),
        ),
        with_backend(
            "address multicast",
            "224.0.0.1:80",
            json!({}),
            Reject("backends[0].addr"),
        ),
    ];
    for scheduler in ["rr", "wrr", "random", "wrandom", "least-conn", "maglev"] {
        cases.push(case(
            "every scheduler",
            json!({"vip": VIP, "scheduler": scheduler}),
            Accept,
        ));
    }
    cases
}

/// What a decoder made of a case: the spec, or the field it rejected, or the unknown fields it warned about.
#[derive(Debug, PartialEq)]
enum Decoded {
    Spec(ServiceSpec),
    Rejected(String),
    Warned(Vec<String>),
}

fn through_toml(case: &Case) -> Decoded {
    let mut service = case.service.clone();
    service["name"] = json!("web");
    if !case.backends.is_empty() {
        let backends: Vec<Value> = case
            .backends
            .iter()
            .map(|(addr, fields)| {
                let mut b = fields.clone();
                b["addr"] = json!(addr);
                b
            })
            .collect();
        service["backends"] = Value::Array(backends);
    }
    let text = toml::to_string(&json!({"services": [service]})).expect("a TOML form");
    match parse_config(&text, "web.toml") {
        Ok(mut state) => Decoded::Spec(ServiceSpec::clone(
            &state.services.remove("web").expect("the service"),
        )),
        Err(ConfigError::Invalid { field, .. } | ConfigError::Model { field, .. }) => {
            let field = field.strip_prefix("services[0]").unwrap_or(&field);
            Decoded::Rejected(field.strip_prefix('.').unwrap_or(field).to_owned())
        }
        Err(e) => panic!("{}: {e}\n{text}", case.what),
    }
}

/// The field a ZooKeeper error is about; `backend` is the index of the backend node it came from.
fn json_field(error: &ModelError, case: &Case, backend: Option<usize>) -> String {
    let in_backend = |field: &str| match backend {
        Some(i) => format!("backends[{i}].{field}"),
        None => field.to_owned(),
    };
    match error {
        ModelError::Json { field, .. } => in_backend(field),
        ModelError::BackendNodeName { .. } => in_backend("addr"),
        other => match other.field() {
            ErrorField::Service => String::new(),
            ErrorField::Name => "name".into(),
            ErrorField::Vip => "vip".into(),
            ErrorField::Proto => "proto".into(),
            ErrorField::Scheduler => "scheduler".into(),
            ErrorField::PersistenceNetmask => "persistence_netmask".into(),
            ErrorField::HealthCheck(sub) => format!("health_check.{sub}"),
            ErrorField::Backend(addr) => {
                let i = case
                    .backends
                    .iter()
                    .position(|(a, _)| a.parse().ok() == Some(addr))
                    .expect("a backend of the case");
                format!("backends[{i}].addr")
            }
        },
    }
}

/// As the ZooKeeper source reads a service node and its backend nodes.
fn through_json(case: &Case) -> Decoded {
    let data = serde_json::to_vec(&case.service).expect("JSON");
    let (mut spec, mut warnings) = match service_from_json("web", &data) {
        Ok(ok) => ok,
        Err(e) => return Decoded::Rejected(json_field(&e, case, None)),
    };
    for (i, (addr, fields)) in case.backends.iter().enumerate() {
        let data = serde_json::to_vec(fields).expect("JSON");
        if parse_backend_node_name(addr).is_err() {
            return Decoded::Rejected(format!("backends[{i}].addr"));
        }
        let (backend, backend_warnings) = match backend_from_json(addr, &data) {
            Ok(ok) => ok,
            Err(e) => return Decoded::Rejected(json_field(&e, case, Some(i))),
        };
        warnings.extend(
            backend_warnings
                .iter()
                .map(|w| format!("backends[{i}] {w}")),
        );
        spec = spec.with_backend(backend);
        if let Err(e) = spec.validate() {
            return Decoded::Rejected(json_field(&e, case, Some(i)));
        }
    }
    if warnings.is_empty() {
        Decoded::Spec(spec)
    } else {
        Decoded::Warned(warnings)
    }
}

#[test]
fn the_file_and_zookeeper_decode_every_case_alike() {
    let mut failures = Vec::new();
    for case in cases() {
        let (toml, json) = (through_toml(&case), through_json(&case));
        let agree = match (&case.outcome, &toml, &json) {
            (Accept, Decoded::Spec(a), Decoded::Spec(b)) => a == b,
            (Reject(field), Decoded::Rejected(a), Decoded::Rejected(b)) => a == field && b == field,
            (Unknown(path), Decoded::Rejected(a), Decoded::Warned(warnings)) => {
                let (parent, name) = path.rsplit_once('.').unwrap_or(("", path));
                let named = warnings.iter().any(|w| {
                    w.contains(&format!("unknown field \"{name}\"")) && w.contains(parent)
                });
                a == path && named && warnings.len() == 1
            }
            _ => false,
        };
        if !agree {
            failures.push(format!(
                "{}: want {:?}\n  file: {toml:?}\n  zookeeper: {json:?}",
                case.what, case.outcome
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn expect_as_an_integer_is_one_code_in_both() {
    let case = case(
        "expect 204",
        health(json!({"kind": "http", "expect": 204})),
        Accept,
    );
    for decoded in [through_toml(&case), through_json(&case)] {
        let Decoded::Spec(spec) = decoded else {
            panic!("{decoded:?}")
        };
        assert_eq!(spec.health_check.map(|c| c.expect), Some((204, 204)));
    }
}
