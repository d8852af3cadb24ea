use std::net::SocketAddr;

use lb_common::Scheduler;

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn web() -> ServiceSpec {
    ServiceSpec::new("web", addr("198.18.100.1:80"))
        .with_backend(BackendSpec::new(addr("198.18.2.11:80")))
        .with_backend(BackendSpec {
            weight: 2,
            ..BackendSpec::new(addr("198.18.2.12:80"))
        })
}

fn web6() -> ServiceSpec {
    ServiceSpec::new("web6", addr("[2001:db8:100::1]:443"))
        .with_backend(BackendSpec::new(addr("[2001:db8::11]:443")))
}

fn state(services: impl IntoIterator<Item = ServiceSpec>) -> DesiredState {
    DesiredState::of(services)
}

#[test]
fn defaults() {
    let s = ServiceSpec::new("web", addr("198.18.100.1:80"));
    assert_eq!(s.proto, Proto::Tcp);
    assert_eq!(s.scheduler, Scheduler::Maglev);
    assert_eq!(s.persistence_timeout_s, 0);
    assert_eq!(s.persistence_netmask, None);
    assert_eq!(s.health_check, None);
    assert!(s.backends.is_empty());
    let b = BackendSpec::new(addr("198.18.2.11:80"));
    assert_eq!((b.weight, b.state), (1, BackendState::Active));
    let h = HealthCheckSpec::default();
    assert_eq!(h.kind, HealthCheckKind::Tcp);
    assert_eq!(h.path, "/healthz");
    assert_eq!(h.expect, (200, 399));
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.rise, h.fall),
        (1000, 500, 2, 3)
    );
}

#[test]
fn good_services_validate() {
    web().validate().expect("v4 service");
    web6().validate().expect("v6 service");
    let mut s = web();
    s.health_check = Some(HealthCheckSpec {
        kind: HealthCheckKind::Http,
        ..HealthCheckSpec::default()
    });
    s.persistence_netmask = Some(0);
    s.validate().expect("http check, netmask 0");
    state([web(), web6()]).validate().expect("two services");
    DesiredState::default().validate().expect("empty state");
}

#[test]
fn persist_prefix_len_defaults_to_the_full_address() {
    assert_eq!(web().persist_prefix_len(), 32);
    assert_eq!(web6().persist_prefix_len(), 128);
    let mut s = web();
    s.persistence_netmask = Some(24);
    assert_eq!(s.persist_prefix_len(), 24);
}

#[test]
fn vip_key_is_in_network_order() {
    let key = web().vip_key();
    assert_eq!(key.port_be, 80u16.to_be());
    assert_eq!(key.proto, lb_common::IPPROTO_TCP);
    assert_eq!(key.family, lb_common::AF_INET);
    assert_eq!(key.addr[0].to_ne_bytes(), [198, 18, 100, 1]);
    assert_eq!(web6().vip_key().family, lb_common::AF_INET6);
}

#[test]
fn takes_new_flows_only_when_active_with_weight() {
    let b = BackendSpec::new(addr("198.18.2.11:80"));
    assert!(b.takes_new_flows());
    assert!(
        !BackendSpec {
            weight: 0,
            ..b.clone()
        }
        .takes_new_flows()
    );
    assert!(
        !BackendSpec {
            state: BackendState::Draining,
            ..b
        }
        .takes_new_flows()
    );
}

#[test]
fn rejects_bad_service_names() {
    for name in ["", ".", "..", "a b", "web/1", "wéb", &"x".repeat(64)] {
        let s = ServiceSpec {
            name: name.to_owned(),
            ..web()
        };
        let err = s.validate().expect_err(name);
        assert!(
            matches!(err, ModelError::InvalidServiceName { .. }),
            "{name:?}: {err}"
        );
        assert_eq!(err.field(), ErrorField::Name);
    }
    let ok = ServiceSpec {
        name: "A-z_0.9".to_owned() + &"x".repeat(56),
        ..web()
    };
    ok.validate().expect("63 bytes of allowed characters");
}

#[test]
fn rejects_vip_port_zero() {
    let s = ServiceSpec::new("web", addr("198.18.100.1:0"));
    let err = s.validate().expect_err("port 0");
    assert!(matches!(err, ModelError::VipPortZero { .. }), "{err}");
    assert!(err.to_string().contains("\"web\""), "{err}");
}

#[test]
fn rejects_unspecified_multicast_and_broadcast_vips() {
    for vip in [
        "0.0.0.0:80",
        "224.0.0.1:80",
        "255.255.255.255:80",
        "[::]:80",
        "[ff02::1]:80",
    ] {
        let err = ServiceSpec::new("web", addr(vip))
            .validate()
            .expect_err(vip);
        assert!(
            matches!(err, ModelError::UnusableVip { .. }),
            "{vip}: {err}"
        );
        assert_eq!(err.field(), ErrorField::Vip);
    }
}

#[test]
fn rejects_unusable_backend_addresses() {
    for backend in ["0.0.0.0:80", "239.1.1.1:80"] {
        let err = web()
            .with_backend(BackendSpec::new(addr(backend)))
            .validate()
            .expect_err(backend);
        assert!(
            matches!(err, ModelError::UnusableBackendAddress { .. }),
            "{backend}: {err}"
        );
        assert_eq!(err.field(), ErrorField::Backend(addr(backend)));
    }
}

#[test]
fn rejects_backend_port_other_than_the_vip_port() {
    let err = web()
        .with_backend(BackendSpec::new(addr("198.18.2.13:8080")))
        .validate()
        .expect_err("port mismatch");
    assert!(
        matches!(err, ModelError::BackendPortMismatch { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("198.18.2.13:8080") && msg.contains("\"web\""),
        "{msg}"
    );
}

#[test]
fn rejects_backend_of_the_other_family() {
    let err = web()
        .with_backend(BackendSpec::new(addr("[2001:db8::11]:80")))
        .validate()
        .expect_err("family mismatch");
    assert!(
        matches!(err, ModelError::BackendFamilyMismatch { .. }),
        "{err}"
    );
    let err = web6()
        .with_backend(BackendSpec::new(addr("198.18.2.11:443")))
        .validate()
        .expect_err("family mismatch");
    assert!(
        matches!(err, ModelError::BackendFamilyMismatch { .. }),
        "{err}"
    );
}

#[test]
fn rejects_too_many_backends() {
    let mut s = ServiceSpec::new("big", addr("[2001:db8:100::1]:80"));
    let max = lb_common::limits::MAX_BACKENDS_PER_SERVICE;
    for i in 0..max {
        let a = SocketAddr::new(format!("2001:db8::{:x}", i + 1).parse().expect("ip"), 80);
        s.backends.insert(a, BackendSpec::new(a));
    }
    s.validate().expect("exactly the maximum");
    let a = addr("[2001:db8::ffff:1]:80");
    let err = s
        .with_backend(BackendSpec::new(a))
        .validate()
        .expect_err("one too many");
    assert!(matches!(err, ModelError::TooManyBackends { .. }), "{err}");
}

#[test]
fn rejects_weight_above_the_maximum() {
    let a = addr("198.18.2.13:80");
    let ok = web().with_backend(BackendSpec {
        weight: MAX_WEIGHT,
        ..BackendSpec::new(a)
    });
    ok.validate().expect("maximum weight");
    let err = ok
        .with_backend(BackendSpec {
            weight: MAX_WEIGHT + 1,
            ..BackendSpec::new(a)
        })
        .validate()
        .expect_err("weight too large");
    assert!(matches!(err, ModelError::WeightTooLarge { .. }), "{err}");
}

#[test]
fn rejects_backend_stored_under_another_key() {
    let mut s = web();
    s.backends.insert(
        addr("198.18.2.99:80"),
        BackendSpec::new(addr("198.18.2.98:80")),
    );
    let err = s.validate().expect_err("key mismatch");
    assert!(
        matches!(err, ModelError::BackendKeyMismatch { .. }),
        "{err}"
    );
}

#[test]
fn rejects_persistence_netmask_longer_than_the_address() {
    let mut s = web();
    s.persistence_netmask = Some(33);
    let err = s.validate().expect_err("/33 on v4");
    assert!(
        matches!(err, ModelError::PersistenceNetmaskTooLong { .. }),
        "{err}"
    );
    let mut s = web6();
    s.persistence_netmask = Some(128);
    s.validate().expect("/128 on v6");
    s.persistence_netmask = Some(129);
    let err = s.validate().expect_err("/129 on v6");
    assert!(
        matches!(err, ModelError::PersistenceNetmaskTooLong { .. }),
        "{err}"
    );
}

fn with_check(check: HealthCheckSpec) -> Result<(), ModelError> {
    let mut s = web();
    s.health_check = Some(check);
    s.validate()
}

#[test]
fn rejects_health_check_timeout_above_interval() {
    let err = with_check(HealthCheckSpec {
        interval_ms: 100,
        timeout_ms: 101,
        ..HealthCheckSpec::default()
    })
    .expect_err("timeout > interval");
    assert!(
        matches!(err, ModelError::HealthCheckTimeoutAboveInterval { .. }),
        "{err}"
    );
    assert_eq!(err.field(), ErrorField::HealthCheck("timeout_ms"));
    with_check(HealthCheckSpec {
        interval_ms: 100,
        timeout_ms: 100,
        ..HealthCheckSpec::default()
    })
    .expect("timeout = interval");
}

#[test]
fn rejects_zero_health_check_counts_and_times() {
    let d = HealthCheckSpec::default;
    for (field, check) in [
        ("rise", HealthCheckSpec { rise: 0, ..d() }),
        ("fall", HealthCheckSpec { fall: 0, ..d() }),
        (
            "interval_ms",
            HealthCheckSpec {
                interval_ms: 0,
                ..d()
            },
        ),
        (
            "timeout_ms",
            HealthCheckSpec {
                timeout_ms: 0,
                ..d()
            },
        ),
    ] {
        let err = with_check(check).expect_err(field);
        assert_eq!(
            err,
            ModelError::HealthCheckZero {
                service: "web".into(),
                field
            }
        );
    }
}

#[test]
fn rejects_invalid_http_expect_ranges_and_paths() {
    let http = || HealthCheckSpec {
        kind: HealthCheckKind::Http,
        ..HealthCheckSpec::default()
    };
    for expect in [(400, 200), (99, 200), (200, 600), (0, 0)] {
        let err = with_check(HealthCheckSpec { expect, ..http() }).expect_err("expect");
        assert!(
            matches!(err, ModelError::HealthCheckExpectRange { .. }),
            "{expect:?}: {err}"
        );
    }
    with_check(HealthCheckSpec {
        expect: (204, 204),
        ..http()
    })
    .expect("single code");
    for path in ["healthz", "", "/a b"] {
        let err = with_check(HealthCheckSpec {
            path: path.into(),
            ..http()
        })
        .expect_err(path);
        assert!(matches!(err, ModelError::HealthCheckPath { .. }), "{err}");
    }
    // A TCP check ignores the HTTP-only fields.
    with_check(HealthCheckSpec {
        expect: (0, 0),
        path: String::new(),
        ..HealthCheckSpec::default()
    })
    .expect("tcp check ignores path and expect");
}

#[test]
fn rejects_two_services_with_one_vip_naming_both() {
    let other = ServiceSpec {
        name: "other".into(),
        ..web()
    };
    let err = state([web(), other]).validate().expect_err("duplicate VIP");
    assert_eq!(
        err,
        ModelError::DuplicateVip {
            first: "other".into(),
            second: "web".into(),
            vip: addr("198.18.100.1:80"),
        }
    );
    // Same address, other port: a different VIP.
    let other_port = ServiceSpec::new("other", addr("198.18.100.1:443"));
    state([web(), other_port]).validate().expect("other port");
}

#[test]
fn rejects_service_stored_under_another_name() {
    let mut s = state([web()]);
    let spec = s.services.remove("web").expect("web");
    s.services.insert("www".into(), spec);
    let err = s.validate().expect_err("key mismatch");
    assert!(
        matches!(err, ModelError::ServiceKeyMismatch { .. }),
        "{err}"
    );
}

#[test]
fn names_parse_and_udp_is_rejected_clearly() {
    assert_eq!(Proto::from_name("tcp"), Ok(Proto::Tcp));
    let err = Proto::from_name("udp").expect_err("udp");
    assert!(err.to_string().contains("TCP only"), "{err}");
    assert!(matches!(
        Proto::from_name("sctp"),
        Err(ValueError::Unknown { .. })
    ));
    assert_eq!(
        BackendState::from_name("draining"),
        Ok(BackendState::Draining)
    );
    assert!(BackendState::from_name("down").is_err());
    assert_eq!(
        HealthCheckKind::from_name("http"),
        Ok(HealthCheckKind::Http)
    );
    for s in Scheduler::ALL {
        assert_eq!(parse_scheduler(s.name()), Ok(s));
    }
    let err = parse_scheduler("fast").expect_err("fast");
    assert_eq!(
        err.to_string(),
        "unknown scheduler \"fast\" (expected one of rr, wrr, random, wrandom, least-conn, maglev)"
    );
    assert_eq!(parse_expect("200-399"), Ok((200, 399)));
    assert_eq!(parse_expect("204"), Ok((204, 204)));
    assert!(parse_expect("2xx").is_err());
    assert!(parse_socket_addr("VIP", "198.18.100.1").is_err());
    assert!(parse_socket_addr("VIP", "2001:db8::1:80").is_err());
}

// --- JSON (ZooKeeper) forms ---

#[test]
fn service_json_minimal_uses_defaults() {
    let (s, warnings) = service_from_json("web", br#"{"vip": "198.18.100.1:80"}"#).expect("json");
    assert_eq!(s, ServiceSpec::new("web", addr("198.18.100.1:80")));
    assert!(warnings.is_empty());
}

#[test]
fn service_json_every_field() {
    let data = br#"{"vip": "[2001:db8:100::1]:80", "proto": "tcp", "scheduler": "wrr",
        "persistence_timeout_s": 300, "persistence_netmask": 64,
        "health_check": {"kind": "http", "path": "/ready", "expect": "200-299",
                         "interval_ms": 2000, "timeout_ms": 1000, "rise": 1, "fall": 5}}"#;
    let (s, warnings) = service_from_json("api", data).expect("json");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(s.vip, addr("[2001:db8:100::1]:80"));
    assert_eq!(s.scheduler, Scheduler::WeightedRoundRobin);
    assert_eq!(
        (s.persistence_timeout_s, s.persistence_netmask),
        (300, Some(64))
    );
    assert_eq!(
        s.health_check,
        Some(HealthCheckSpec {
            kind: HealthCheckKind::Http,
            path: "/ready".into(),
            expect: (200, 299),
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 1,
            fall: 5,
        })
    );
    let (s, _) = service_from_json("t", br#"{"vip": "198.18.100.1:80", "health_check": {}}"#)
        .expect("empty health check");
    assert_eq!(s.health_check, Some(HealthCheckSpec::default()));
}

#[test]
fn service_json_unknown_fields_are_warnings() {
    let data = br#"{"vip": "198.18.100.1:80", "colour": "blue", "health_check": {"retries": 3}}"#;
    let (_, warnings) = service_from_json("web", data).expect("json");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("\"colour\""), "{warnings:?}");
    assert!(warnings[1].contains("health_check") && warnings[1].contains("\"retries\""));
}

#[test]
fn service_json_rejections() {
    let cases: [(&[u8], &str); 8] = [
        (b"", "invalid service JSON"),
        (b"{}", "missing field `vip`"),
        (br#"{"vip": "nowhere"}"#, "invalid VIP \"nowhere\""),
        (br#"{"vip": "198.18.100.1:80", "proto": "udp"}"#, "TCP only"),
        (
            br#"{"vip": "198.18.100.1:80", "scheduler": "fast"}"#,
            "unknown scheduler",
        ),
        (br#"{"vip": "198.18.100.1:0"}"#, "port 0"),
        (
            br#"{"vip": "198.18.100.1:80", "persistence_netmask": 40}"#,
            "persistence_netmask 40",
        ),
        (
            br#"{"vip": "198.18.100.1:80", "health_check": {"expect": "ok"}}"#,
            "health_check.expect",
        ),
    ];
    for (data, want) in cases {
        let err = service_from_json("web", data).expect_err(want);
        let msg = err.to_string();
        assert!(
            msg.contains(want) && msg.contains("\"web\""),
            "{msg:?} lacks {want:?}"
        );
    }
    let err = service_from_json("bad name", br#"{"vip": "198.18.100.1:80"}"#).expect_err("name");
    assert!(matches!(err, ModelError::InvalidServiceName { .. }));
}

#[test]
fn backend_json_forms() {
    let (b, w) = backend_from_json("198.18.2.11:80", b"").expect("empty data");
    assert_eq!(b, BackendSpec::new(addr("198.18.2.11:80")));
    assert!(w.is_empty());
    let (b, _) = backend_from_json("[2001:db8::11]:80", b"{}").expect("empty object");
    assert_eq!(b, BackendSpec::new(addr("[2001:db8::11]:80")));
    let (b, w) = backend_from_json(
        "198.18.2.11:80",
        br#"{"weight": 3, "state": "draining", "zone": "a"}"#,
    )
    .expect("full");
    assert_eq!((b.weight, b.state), (3, BackendState::Draining));
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("\"zone\""), "{w:?}");
}

#[test]
fn backend_json_rejections() {
    for (node, data, want) in [
        ("198.18.2.11", &b""[..], "backend node \"198.18.2.11\""),
        ("2001:db8::11:80", b"", "expected IP:PORT"),
        ("198.18.2.11:80", b"{", "invalid backend JSON"),
        (
            "198.18.2.11:80",
            br#"{"weight": 70000}"#,
            "weight: 70000 is out of range; it must be between 0 and 65535",
        ),
        (
            "198.18.2.11:80",
            br#"{"weight": -1}"#,
            "invalid backend JSON",
        ),
        (
            "198.18.2.11:80",
            br#"{"state": "down"}"#,
            "unknown backend state \"down\"",
        ),
    ] {
        let err = backend_from_json(node, data).expect_err(want);
        assert!(err.to_string().contains(want), "{err} lacks {want:?}");
    }
}

#[test]
fn service_json_panic_threshold() {
    let (s, warnings) = service_from_json(
        "web",
        br#"{"vip": "198.18.100.1:80", "panic_threshold": 30}"#,
    )
    .expect("json");
    assert_eq!(s.panic_threshold, 30);
    assert!(warnings.is_empty(), "{warnings:?}");
    let err = service_from_json(
        "web",
        br#"{"vip": "198.18.100.1:80", "panic_threshold": 120}"#,
    )
    .expect_err("above 100");
    assert!(
        err.to_string()
            .contains("panic_threshold: 120 is out of range; it must be between 0 and 100"),
        "{err}"
    );
}
