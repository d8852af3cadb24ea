//! Property tests of the parsers that read outside input: the TOML configuration, the service and
//! backend znodes (JSON data, node names) and `lb register --check` URLs. Arbitrary and mutated valid
//! inputs never panic, and a rejection's message names what was wrong: the key, the field or the
//! offending value. 256 cases per property (`PROPTEST_CASES` overrides): well under a second.

use std::net::SocketAddr;

use lb_userspace::config::check_config;
use lb_userspace::model::{backend_from_json, service_from_json};
use lb_userspace::register::LocalCheck;
use lb_userspace::zk::schema::{backend_node_name, parse_backend_node_name};
use proptest::prelude::*;

/// A valid configuration whose every `key = value` line is a mutation point (one per line).
const VALID_TOML: &str = r#"[[services]]
name = "web"
vip = "198.18.100.1:80"
proto = "tcp"
scheduler = "wrr"
persistence_timeout_s = 300
persistence_netmask = 24
health_check = { kind = "http", path = "/ready", expect = "200-299", interval_ms = 2000, timeout_ms = 700, rise = 1, fall = 4 }
backends = [
  { addr = "198.18.2.11:80", weight = 1 },
  { addr = "198.18.2.12:80", weight = 2, state = "draining" },
]

[[services]]
name = "api6"
vip = "[2001:db8:100::1]:443"
scheduler = "maglev"

[[services.backends]]
addr = "[2001:db8::11]:443"
weight = 3
state = "active"
"#;

const VALID_SERVICE_JSON: &str = r#"{"vip": "198.18.100.1:80", "proto": "tcp", "scheduler": "wrr", "persistence_timeout_s": 300, "persistence_netmask": 24, "health_check": {"kind": "http", "path": "/ready", "expect": "200-299", "interval_ms": 2000, "timeout_ms": 1000, "rise": 1, "fall": 5}}"#;

/// Values of every type and many wrong ranges, TOML and JSON alike.
fn wrong_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("99999999999".to_owned()),
        Just("4294967296".to_owned()),
        Just("1.5".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("\"198.18.100.1:81\"".to_owned()),
        Just("\"[2001:db8::1]:80\"".to_owned()),
        Just("\"nope\"".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-z0-9:./\\-\\[\\] ]{0,12}".prop_map(|s| format!("\"{s}\"")),
    ]
}

/// Whether `message` names the key (in any case: "the VIP port") or the value (its text, or its
/// text without quotes).
fn names(message: &str, key: &str, value: &str) -> bool {
    let bare = value.trim_matches('"');
    message.to_lowercase().contains(&key.to_lowercase())
        || (!bare.is_empty() && message.contains(bare))
}

/// The `key = value` lines of `text` (mutation points): (line index, key).
fn keyed_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let (k, v) = l.split_once(" = ")?;
            let k = k.trim();
            // An array spread over lines is no single value to replace.
            (!k.starts_with('{') && !k.contains(' ') && v.trim() != "[").then(|| (i, k.to_owned()))
        })
        .collect()
}

fn replace_line(text: &str, index: usize, line: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines[index] = line;
    lines.join("\n") + "\n"
}

#[test]
fn the_base_inputs_are_valid() {
    check_config(VALID_TOML, "lb.toml").expect("the base configuration is valid");
    service_from_json("web", VALID_SERVICE_JSON.as_bytes()).expect("the base service is valid");
    assert!(keyed_lines(VALID_TOML).len() > 10);
}

// proptest's default: 256 cases per property (`PROPTEST_CASES=N` for a longer run).
proptest! {

    #[test]
    fn config_never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
        let _ = check_config(&text, "lb.toml");
    }

    #[test]
    fn config_errors_carry_the_file_and_position(
        cut in 0usize..VALID_TOML.len(),
        junk in "[\\[\\]{}=\"a-z0-9,. \n]{0,8}",
    ) {
        // A valid file cut anywhere (on a character boundary), with junk appended.
        let cut = (0..=cut).rev().find(|i| VALID_TOML.is_char_boundary(*i)).unwrap_or(0);
        let text = format!("{}{junk}", &VALID_TOML[..cut]);
        if let Err(errors) = check_config(&text, "lb.toml") {
            for e in errors.errors() {
                let msg = e.to_string();
                prop_assert!(msg.starts_with("lb.toml:"), "{msg:?} does not say where");
            }
        }
    }

    #[test]
    fn a_bad_config_value_is_named(which in any::<prop::sample::Index>(), value in wrong_value()) {
        let lines = keyed_lines(VALID_TOML);
        let (index, key) = &lines[which.index(lines.len())];
        let text = replace_line(VALID_TOML, *index, &format!("{key} = {value}"));
        if let Err(errors) = check_config(&text, "lb.toml") {
            let all: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
            prop_assert!(
                all.iter().any(|m| names(m, key, &value)),
                "`{key} = {value}` rejected without naming it: {all:#?}"
            );
        }
    }

    #[test]
    fn service_json_never_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Err(e) = service_from_json("web", &data) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn a_bad_service_field_is_named(
        field in prop::sample::select(vec![
            "vip", "proto", "scheduler", "persistence_timeout_s", "persistence_netmask",
            "health_check", "kind", "path", "expect", "interval_ms", "timeout_ms", "rise", "fall",
        ]),
        value in wrong_value(),
    ) {
        // Replace the field's value (the first occurrence of `"field": `) up to its end.
        let key = format!("\"{field}\": ");
        let start = VALID_SERVICE_JSON.find(&key).expect("the field is in the base") + key.len();
        let rest = &VALID_SERVICE_JSON[start..];
        let end = if rest.starts_with('{') {
            rest.find('}').map_or(rest.len(), |i| i + 1)
        } else {
            rest.find([',', '}']).unwrap_or(rest.len())
        };
        let data = format!("{}{value}{}", &VALID_SERVICE_JSON[..start], &rest[end..]);
        if let Err(e) = service_from_json("web", data.as_bytes()) {
            let msg = e.to_string();
            prop_assert!(names(&msg, field, &value), "{field} = {value} rejected as {msg:?}");
        }
    }

    #[test]
    fn backend_json_never_panics_and_names_the_backend(
        data in prop::collection::vec(any::<u8>(), 0..120),
    ) {
        if let Err(e) = backend_from_json("198.18.2.11:80", &data) {
            let msg = e.to_string();
            prop_assert!(msg.contains("198.18.2.11:80"), "{msg:?} does not name the backend");
        }
    }

    #[test]
    fn a_bad_backend_field_is_named(
        field in prop::sample::select(vec!["weight", "state"]),
        value in wrong_value(),
    ) {
        let data = format!("{{\"{field}\": {value}}}");
        if let Err(e) = backend_from_json("198.18.2.11:80", data.as_bytes()) {
            let msg = e.to_string();
            prop_assert!(names(&msg, field, &value), "{data} rejected as {msg:?}");
        }
    }

    #[test]
    fn node_names_never_panic_and_rejections_quote_the_name(name in "\\PC{0,40}") {
        if let Err(e) = parse_backend_node_name(&name) {
            prop_assert!(e.to_string().contains(&name), "{e} does not name {name:?}");
        }
        if let Err(e) = backend_from_json(&name, b"") {
            prop_assert!(e.to_string().contains(&name), "{e} does not name {name:?}");
        }
    }

    #[test]
    fn node_names_round_trip(addr in any::<SocketAddr>()) {
        // Scope ids and flow info are no part of a node name.
        let addr = match addr {
            SocketAddr::V6(a) => SocketAddr::new((*a.ip()).into(), a.port()),
            a => a,
        };
        prop_assert_eq!(parse_backend_node_name(&backend_node_name(addr)).ok(), Some(addr));
    }

    #[test]
    fn check_urls_never_panic_and_rejections_quote_the_flag_and_text(text in "(http://)?\\PC{0,40}") {
        let backend: SocketAddr = "198.18.2.11:80".parse().unwrap();
        if let Err(e) = LocalCheck::parse(&text, backend) {
            let msg = e.to_string();
            prop_assert!(
                msg.contains("--check") && msg.contains(&format!("{text:?}")),
                "{msg:?} does not name --check {text:?}"
            );
        }
    }

    #[test]
    fn valid_check_urls_are_accepted(addr in any::<std::net::SocketAddrV4>(), path in "(/[a-z0-9._-]{0,10}){0,3}") {
        let backend: SocketAddr = "198.18.2.11:80".parse().unwrap();
        let text = format!("http://{addr}{path}");
        prop_assert!(LocalCheck::parse(&text, backend).is_ok(), "{text} refused");
    }
}
