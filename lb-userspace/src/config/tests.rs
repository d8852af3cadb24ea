use std::net::SocketAddr;

use lb_common::Scheduler;

use super::*;
use crate::model::{BackendSpec, BackendState, HealthCheckKind, HealthCheckSpec, Proto};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// Parses `text` as `web.toml` and returns the error's text.
fn error(text: &str) -> String {
    match parse_config(text, "web.toml") {
        Ok(state) => panic!("accepted: {state:?}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that `text` is rejected at `line:column`, about `field`, with a message containing `want`.
#[track_caller]
fn assert_rejected(text: &str, line: usize, column: usize, field: &str, want: &str) {
    let msg = error(text);
    let prefix = format!("web.toml:{line}:{column}: {field}: ");
    assert!(
        msg.starts_with(&prefix),
        "{msg:?} does not start with {prefix:?}"
    );
    assert!(msg.contains(want), "{msg:?} lacks {want:?}");
}

const FULL: &str = r#"# every field
[[services]]
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

[[services.backends]]
addr = "[2001:db8::11]:443"

[[services.backends]]
addr = "[2001:db8::12]:443"
weight = 0
state = "active"

[services.health_check]
kind = "tcp"
"#;

#[test]
fn reads_a_file_with_every_field() {
    let state = parse_config(FULL, "web.toml").expect("valid file");
    assert_eq!(state.services.len(), 2);

    let web = &state.services["web"];
    assert_eq!(web.vip, addr("198.18.100.1:80"));
    assert_eq!(web.proto, Proto::Tcp);
    assert_eq!(web.scheduler, Scheduler::WeightedRoundRobin);
    assert_eq!(web.persistence_timeout_s, 300);
    assert_eq!(web.persistence_netmask, Some(24));
    assert_eq!(
        web.health_check,
        Some(HealthCheckSpec {
            kind: HealthCheckKind::Http,
            path: "/ready".into(),
            expect: (200, 299),
            interval_ms: 2000,
            timeout_ms: 700,
            rise: 1,
            fall: 4,
        })
    );
    let b = &web.backends;
    assert_eq!(b.len(), 2);
    assert_eq!(
        b[&addr("198.18.2.11:80")],
        BackendSpec::new(addr("198.18.2.11:80"))
    );
    assert_eq!(b[&addr("198.18.2.12:80")].weight, 2);
    assert_eq!(b[&addr("198.18.2.12:80")].state, BackendState::Draining);

    let api = &state.services["api6"];
    assert_eq!(api.scheduler, Scheduler::Maglev, "default scheduler");
    assert_eq!(api.persistence_netmask, None);
    assert_eq!(api.health_check, Some(HealthCheckSpec::default()));
    assert_eq!(api.backends.len(), 2);
    assert_eq!(api.backends[&addr("[2001:db8::12]:443")].weight, 0);
}

#[test]
fn minimal_service_takes_defaults() {
    let state = parse_config(
        "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\n",
        "web.toml",
    )
    .expect("valid");
    assert_eq!(
        *state.services["web"],
        ServiceSpec::new("web", addr("198.18.100.1:80"))
    );
}

#[test]
fn empty_file_has_no_services() {
    for text in ["", "# nothing yet\n", "services = []\n"] {
        let state = parse_config(text, "web.toml").expect(text);
        assert!(state.services.is_empty(), "{text:?}");
    }
}

#[test]
fn unknown_scheduler_names_line_column_and_field() {
    let text = "# web\n\n[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\n\nscheduler = \"fast\"\n";
    assert_eq!(
        error(text),
        "web.toml:7:13: services[0].scheduler: unknown scheduler \"fast\" (expected one of rr, wrr, \
         random, wrandom, least-conn, maglev)"
    );
}

const HEAD: &str = "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\n";

#[test]
fn unknown_fields_are_errors_at_their_key() {
    assert_rejected(
        &format!("{HEAD}colour = \"blue\"\n"),
        4,
        1,
        "services[0].colour",
        "unknown field \"colour\", expected one of name, vip, proto, scheduler",
    );
    assert_rejected(
        &format!("{HEAD}backends = [ {{ addr = \"198.18.2.11:80\", wieght = 2 }} ]\n"),
        4,
        41,
        "services[0].backends[0].wieght",
        "expected one of addr, weight, state",
    );
    assert_rejected(
        &format!("{HEAD}[services.health_check]\nretries = 3\n"),
        5,
        1,
        "services[0].health_check.retries",
        "unknown field \"retries\"",
    );
    assert_rejected(
        "servers = []\n",
        1,
        1,
        "servers",
        "expected one of services",
    );
}

#[test]
fn missing_required_fields_point_at_their_table() {
    assert_rejected(
        "\n[[services]]\nvip = \"198.18.100.1:80\"\n",
        2,
        1,
        "services[0]",
        "missing field \"name\"",
    );
    assert_rejected(
        "[[services]]\nname = \"web\"\n",
        1,
        1,
        "services[0]",
        "missing field \"vip\"",
    );
    assert_rejected(
        &format!("{HEAD}[[services.backends]]\nweight = 1\n"),
        4,
        1,
        "services[0].backends[0]",
        "missing field \"addr\"",
    );
}

#[test]
fn wrong_types_and_ranges() {
    assert_rejected(
        "[[services]]\nname = \"web\"\nvip = 80\n",
        3,
        7,
        "services[0].vip",
        "expected a string, found an integer",
    );
    assert_rejected(
        "[[services]]\nname = \"web\"\nvip = \"198.18.100.1\"\n",
        3,
        7,
        "services[0].vip",
        "invalid VIP \"198.18.100.1\": expected IP:PORT",
    );
    assert_rejected(
        &format!("{HEAD}backends = [ {{ addr = \"198.18.2.11:80\", weight = \"3\" }} ]\n"),
        4,
        50,
        "services[0].backends[0].weight",
        "expected an integer, found a string",
    );
    assert_rejected(
        &format!("{HEAD}backends = [ {{ addr = \"198.18.2.11:80\", weight = 70000 }} ]\n"),
        4,
        50,
        "services[0].backends[0].weight",
        "70000 is out of range; it must be between 0 and 65535",
    );
    assert_rejected(
        &format!("{HEAD}persistence_timeout_s = -1\n"),
        4,
        25,
        "services[0].persistence_timeout_s",
        "between 0 and 4294967295",
    );
    assert_rejected(
        &format!("{HEAD}persistence_netmask = 200\n"),
        4,
        23,
        "services[0].persistence_netmask",
        "between 0 and 128",
    );
    assert_rejected(
        &format!("{HEAD}health_check = \"tcp\"\n"),
        4,
        16,
        "services[0].health_check",
        "expected a table, found a string",
    );
    assert_rejected(
        "services = { name = \"web\" }\n",
        1,
        12,
        "services",
        "expected an array, found a table",
    );
    assert_rejected(
        &format!("{HEAD}backends = [ {{ addr = \"198.18.2.11:80\", state = \"down\" }} ]\n"),
        4,
        49,
        "services[0].backends[0].state",
        "unknown backend state \"down\" (expected one of active, draining)",
    );
    assert_rejected(
        &format!("{HEAD}proto = \"udp\"\n"),
        4,
        9,
        "services[0].proto",
        "TCP only",
    );
    assert_rejected(
        &format!("{HEAD}health_check = {{ kind = \"icmp\" }}\n"),
        4,
        25,
        "services[0].health_check.kind",
        "unknown health check kind \"icmp\"",
    );
}

#[test]
fn syntax_errors_name_their_location() {
    let msg = error("[[services]]\nname = \"web\nvip = 1\n");
    assert!(msg.starts_with("web.toml:2:"), "{msg}");
    let msg = error("[[services]]\nname = \"web\"\nname = \"api\"\n");
    assert!(msg.starts_with("web.toml:3:1: "), "{msg}");
    assert!(msg.contains("duplicate key"), "{msg}");
    let msg = error(&format!("{HEAD}persistence_timeout_s = 1979-05-27\n"));
    assert_eq!(
        msg,
        "web.toml:4:25: dates and times are not valid values in this file"
    );
}

#[test]
fn duplicate_service_names_are_rejected() {
    let text = "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\n\n\
                [[services]]\nname = \"web\"\nvip = \"198.18.100.2:80\"\n";
    assert_rejected(
        text,
        6,
        8,
        "services[1].name",
        "service name \"web\" is used twice (first at web.toml:2:8)",
    );
}

#[test]
fn duplicate_vip_rejects_the_file_naming_both_services() {
    let text = "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\n\n\
                [[services]]\nname = \"www\"\nvip = \"198.18.100.1:80\"\n";
    assert_rejected(
        text,
        7,
        7,
        "services[1].vip",
        "services \"web\" and \"www\" both use VIP 198.18.100.1:80",
    );
}

#[test]
fn duplicate_backends_are_rejected() {
    let text = format!(
        "{HEAD}backends = [\n  {{ addr = \"198.18.2.11:80\" }},\n  {{ addr = \"198.18.2.11:80\", weight = 2 }},\n]\n"
    );
    assert_rejected(
        &text,
        6,
        12,
        "services[0].backends[1].addr",
        "backend 198.18.2.11:80 is listed twice (first as services[0].backends[0])",
    );
}

#[test]
fn model_errors_carry_the_line_of_the_offending_part() {
    // Backend port differs from the VIP port: the backend's line.
    let text = format!(
        "{HEAD}backends = [\n  {{ addr = \"198.18.2.11:80\" }},\n  {{ addr = \"198.18.2.12:8080\" }},\n]\n"
    );
    assert_rejected(
        &text,
        6,
        12,
        "services[0].backends[1].addr",
        "backend 198.18.2.12:8080 uses port 8080 but the VIP port is 80",
    );
    // Backend of the other family.
    assert_rejected(
        &format!("{HEAD}[[services.backends]]\naddr = \"[2001:db8::11]:80\"\n"),
        5,
        8,
        "services[0].backends[0].addr",
        "is IPv6 but VIP 198.18.100.1:80 is IPv4",
    );
    // Netmask longer than an IPv4 address.
    assert_rejected(
        &format!("{HEAD}persistence_netmask = 33\n"),
        4,
        23,
        "services[0].persistence_netmask",
        "persistence_netmask 33 is longer than an IPv4 address",
    );
    // Health check timeout above the interval: the timeout's line.
    assert_rejected(
        &format!("{HEAD}[services.health_check]\ninterval_ms = 100\ntimeout_ms = 200\n"),
        6,
        14,
        "services[0].health_check.timeout_ms",
        "timeout_ms 200 is longer than interval_ms 100",
    );
    assert_rejected(
        &format!("{HEAD}health_check = {{ rise = 0 }}\n"),
        4,
        25,
        "services[0].health_check.rise",
        "health check rise is 0",
    );
    assert_rejected(
        &format!("{HEAD}health_check = {{ kind = \"http\", expect = \"399-200\" }}\n"),
        4,
        42,
        "services[0].health_check.expect",
        "expect range 399-200 is invalid",
    );
    // Invalid name, port 0, multicast VIP.
    assert_rejected(
        "[[services]]\nname = \"my web\"\nvip = \"198.18.100.1:80\"\n",
        2,
        8,
        "services[0].name",
        "service name \"my web\" is invalid",
    );
    assert_rejected(
        "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:0\"\n",
        3,
        7,
        "services[0].vip",
        "has port 0",
    );
    assert_rejected(
        "[[services]]\nname = \"web\"\nvip = \"[ff02::1]:80\"\n",
        3,
        7,
        "services[0].vip",
        "is a multicast address",
    );
}

/// Removes the file it names when dropped, even if the test fails.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn loads_a_file_and_names_it_in_errors() {
    let path = std::env::temp_dir().join(format!("lb-config-test-{}.toml", std::process::id()));
    let file = TempFile(path);
    std::fs::write(&file.0, FULL).expect("write temp file");
    let state = load_config_file(&file.0).expect("valid file");
    assert_eq!(state.services.len(), 2);

    std::fs::write(&file.0, "[[services]]\nname = 1\n").expect("write temp file");
    let err = load_config_file(&file.0).expect_err("bad file");
    let want = format!(
        "{}:2:8: services[0].name: expected a string",
        file.0.display()
    );
    assert!(err.to_string().starts_with(&want), "{err}");
    assert_eq!(err.location().map(|l| l.line), Some(2));

    let missing = file.0.with_extension("missing");
    let err = load_config_file(&missing).expect_err("missing file");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .contains("cannot read the configuration file"),
        "{err}"
    );
    assert!(
        err.to_string().starts_with(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn panic_threshold_is_a_percentage() {
    let text = "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\npanic_threshold = 50\n";
    let state = parse_config(text, "web.toml").expect("valid");
    assert_eq!(state.services["web"].panic_threshold, 50);
    let minimal = "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\n";
    let state = parse_config(minimal, "web.toml").expect("valid");
    assert_eq!(state.services["web"].panic_threshold, 0, "off by default");
    assert_rejected(
        "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\npanic_threshold = 101\n",
        4,
        19,
        "services[0].panic_threshold",
        "between 0 and 100",
    );
}

#[test]
fn check_reports_every_error_in_file_order_and_parse_gives_the_first() {
    let text = r#"
[[services]]
name = "web"
vip = "198.18.100.1:80"
scheduler = "bogus"
backends = [ { addr = "198.18.2.11:80" } ]

[[services]]
name = "api"
vip = "198.18.100.2:81"
backends = [ { addr = "198.18.2.11:80", weight = -1 } ]

[[services]]
name = "ok"
vip = "198.18.100.3:80"
backends = [ { addr = "198.18.2.12:80" } ]

[[services]]
name = "ok"
vip = "198.18.100.4:80"
backends = [ { addr = "198.18.2.13:8080" } ]
"#;
    let errors = check_config(text, "web.toml").expect_err("four services, three bad");
    let lines: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("web.toml:5:13: services[0].scheduler: unknown scheduler"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("web.toml:11:50: services[1].backends[0].weight: -1 is out of range"),
        "{lines:#?}"
    );
    assert!(
        lines[2].starts_with("web.toml:19:8: services[3].name: service name \"ok\" is used twice"),
        "{lines:#?}"
    );
    assert_eq!(
        error(text),
        lines[0],
        "the daemon's error is the check's first"
    );
    assert_eq!(errors.to_string(), lines.join("\n"));
}

#[test]
fn check_accepts_what_parse_accepts() {
    let checked = check_config(FULL, "web.toml").expect("valid file");
    assert_eq!(checked, parse_config(FULL, "web.toml").expect("valid file"));
}

#[test]
fn check_stops_at_a_syntax_error_and_at_a_bad_top_level() {
    let errors = check_config("[[services]\nname = ", "web.toml").expect_err("not TOML");
    assert_eq!(errors.errors().len(), 1);
    let errors = check_config("services = 3\n", "web.toml").expect_err("not an array");
    assert_eq!(errors.errors().len(), 1, "{errors}");
    assert!(errors.to_string().starts_with("web.toml:1:"), "{errors}");
}
