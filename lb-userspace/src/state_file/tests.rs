use super::*;
use crate::model::{BackendSpec, BackendState, HealthCheckKind, HealthCheckSpec, ServiceSpec};
use lb_common::Scheduler;

/// Every field away from its default, in both families.
fn saved() -> SavedState {
    let mut web = ServiceSpec::new("web", "198.18.100.1:80".parse().unwrap());
    web.scheduler = Scheduler::WeightedRoundRobin;
    web.persistence_timeout_s = 300;
    web.persistence_netmask = Some(24);
    web.panic_threshold = 40;
    web.health_check = Some(HealthCheckSpec {
        kind: HealthCheckKind::Http,
        path: "/ready".to_owned(),
        expect: (200, 204),
        interval_ms: 250,
        timeout_ms: 100,
        rise: 4,
        fall: 5,
    });
    let mut heavy = BackendSpec::new("198.18.2.11:80".parse().unwrap());
    heavy.weight = 7;
    let mut draining = BackendSpec::new("198.18.2.12:80".parse().unwrap());
    draining.state = BackendState::Draining;
    web = web.with_backend(heavy).with_backend(draining);
    let v6 = ServiceSpec::new("v6", "[2001:db8::100]:443".parse().unwrap())
        .with_backend(BackendSpec::new("[2001:db8::11]:443".parse().unwrap()));
    SavedState {
        desired: DesiredState::of([web, v6]),
        down: vec![BackendRef {
            service: "web".to_owned(),
            backend: "198.18.2.12:80".parse().unwrap(),
        }],
        written_unix_ms: 1_764_000_000_000,
    }
}

fn path() -> PathBuf {
    PathBuf::from("/var/lib/lb/test.state.json")
}

fn decode_text(text: &str) -> Result<SavedState, StateFileError> {
    decode(&path(), text)
}

#[test]
fn every_field_round_trips() {
    let saved = saved();
    let text = String::from_utf8(encode(&saved)).unwrap();
    assert_eq!(decode_text(&text).unwrap(), saved);
    assert!(text.contains("\"scheduler\": \"wrr\""), "{text}");
    assert!(text.contains("\"expect\": \"200-204\""), "{text}");
}

#[test]
fn the_services_are_the_configuration_files_fields() {
    // The same services written as a TOML configuration decode to the same specs.
    let toml = r#"
[[services]]
name = "v6"
vip = "[2001:db8::100]:443"
backends = [{ addr = "[2001:db8::11]:443" }]
"#;
    let from_file = crate::config::parse_config(toml, "lb.toml").unwrap();
    let mut state = saved();
    state.desired.services.remove("web");
    state.down.clear();
    let text = String::from_utf8(encode(&state)).unwrap();
    assert_eq!(decode_text(&text).unwrap().desired, from_file);
}

#[test]
fn only_down_backends_still_checked_are_restored() {
    let mut saved = saved();
    saved.down.push(BackendRef {
        service: "v6".to_owned(),
        backend: "[2001:db8::11]:443".parse().unwrap(),
    });
    saved.down.push(BackendRef {
        service: "gone".to_owned(),
        backend: "198.18.2.11:80".parse().unwrap(),
    });
    let targets = saved.down_targets();
    assert_eq!(
        targets.len(),
        1,
        "v6 has no check, gone is gone: {targets:?}"
    );
    assert_eq!(targets[0].addr, "198.18.2.12:80".parse().unwrap());
    assert_eq!(targets[0].check.path, "/ready");
}

#[test]
fn another_version_is_named_as_such() {
    let text = String::from_utf8(encode(&saved())).unwrap();
    let other = text.replacen("\"state_version\": 1", "\"state_version\": 2", 1);
    let e = decode_text(&other).unwrap_err();
    assert!(matches!(e, StateFileError::Version { found: 2, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("/var/lib/lb/test.state.json"), "{msg}");
    assert!(msg.contains("version 2"), "{msg}");
}

#[test]
fn corrupt_files_are_errors_naming_the_file_and_the_field() {
    let good = String::from_utf8(encode(&saved())).unwrap();
    let cases = [
        ("", ""),
        ("{\"state_version\": 1", ""),
        ("not json at all", ""),
        (&good[..good.len() / 2], ""),
        (
            &good.replacen("\"weight\": 7", "\"weight\": 70000", 1),
            "services[1].backends[0].weight",
        ),
        (
            &good.replacen("\"198.18.100.1:80\"", "\"nowhere\"", 1),
            "services[1].vip",
        ),
        (
            &good.replacen("\"name\": \"v6\",", "", 1),
            "services[0].name",
        ),
    ];
    for (text, field) in cases {
        let e = decode_text(text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/var/lib/lb/test.state.json"), "{msg}");
        assert!(matches!(e, StateFileError::Decode { .. }), "{msg}");
        assert!(msg.contains(field), "{field} in {msg}");
    }
}

#[test]
fn a_state_the_model_rejects_is_invalid() {
    let text = String::from_utf8(encode(&saved())).unwrap();
    // Both services on one VIP.
    let clash = text
        .replace("[2001:db8::100]:443", "198.18.100.1:80")
        .replace("[2001:db8::11]:443", "198.18.2.13:80");
    let e = decode_text(&clash).unwrap_err();
    assert!(matches!(e, StateFileError::Invalid { .. }), "{e}");
}

#[test]
fn reads_what_it_wrote_and_none_when_absent() {
    let dir = std::env::temp_dir().join(format!("lb-state-file-{}", std::process::id()));
    let file = dir.join("lb.state.json");
    assert!(read(&file).unwrap().is_none());
    write(&file, &saved()).unwrap();
    assert_eq!(read(&file).unwrap(), Some(saved()));
    std::fs::write(&file, b"{").unwrap();
    assert!(read(&file).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
