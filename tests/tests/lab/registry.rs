//! `lb run --zk-format curator` in the lab: instances registered in Apache Curator's
//! service-discovery layout (`<root>/<service>/<id>`, `JsonInstanceSerializer`'s JSON, written
//! here with zkCli as persistent nodes; the ZooKeeper tests in `tests/zk/registry.rs` cover
//! ephemeral instances and their sessions) receive real TCP connections through the XDP balancer,
//! weighted by the payload's `weight`; a malformed instance is rejected while the others serve.

use std::net::SocketAddr;

use lb_tests::config::{BackendConfig, ServiceConfig};
use lb_tests::scenario::{service, vip, zookeeper};
use lb_tests::zk_lab::{APPLY_TIMEOUT as APPLY, ZkLab};
use lb_tests::{Lab, LabOptions, assert_eventually, spread};

fn b(i: usize) -> SocketAddr {
    Lab::backend_addr(i, false)
}

fn curator_instance(id: &str, addr: SocketAddr, payload: &str) -> String {
    format!(
        r#"{{"name":"web-svc","id":"{id}","address":"{}","port":{},"sslPort":null,"payload":{payload},"registrationTimeUTC":1764720000000,"serviceType":"DYNAMIC","uriSpec":null}}"#,
        addr.ip(),
        addr.port()
    )
}

/// The mapping file, removed on drop.
struct Mapping(std::path::PathBuf);

impl Drop for Mapping {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn curator_registered_instances_take_weighted_traffic() {
    let mut t = ZkLab::start(LabOptions {
        lbs: 1,
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..LabOptions::default()
    })
    .expect("the lab with ZooKeeper starts");
    let vip = vip(1, false);
    let mapping =
        Mapping(std::env::temp_dir().join(format!("lb-lab-registry-{}.toml", std::process::id())));
    std::fs::write(
        &mapping.0,
        format!(
            "[[services]]\nname = \"web\"\nvip = \"{vip}\"\nscheduler = \"wrr\"\nregistry_name = \"web-svc\"\n"
        ),
    )
    .unwrap();

    t.zkcli(&["create", "/discovery", ""]).unwrap();
    t.zkcli(&["create", "/discovery/web-svc", ""]).unwrap();
    let instances = [
        ("i0", b(0), "null"),
        (
            "i1",
            b(1),
            r#"{"@class":"com.example.InstanceDetails","weight":3}"#,
        ),
        ("i2", b(2), r#"{"weight":1}"#),
    ];
    for (id, addr, payload) in instances {
        let data = curator_instance(id, addr, payload);
        t.zkcli(&["create", &format!("/discovery/web-svc/{id}"), &data])
            .unwrap();
    }
    t.zkcli(&[
        "create",
        "/discovery/web-svc/bad",
        r#"{"name":"web-svc","id":"bad","port":80}"#,
    ])
    .unwrap();

    let map = mapping.0.to_str().unwrap();
    t.start_lb(
        0,
        &[
            "--zk-root",
            "/discovery",
            "--zk-format",
            "curator",
            "--zk-services",
            map,
        ],
    )
    .unwrap();
    let three = service("web", vip, "wrr", &[1, 3, 1]);
    t.wait_serves(0, &three).unwrap();
    assert_eventually!(
        zookeeper(&t.status(0).unwrap()).current_rejections == 1,
        APPLY,
        "{:#?}",
        t.status(0).unwrap().daemon
    );
    let s = t.lab.in_client(|| spread(vip, 500, 4)).unwrap();
    assert_eq!(s.failures, 0, "{:?}", s.failure_samples);
    // wrr 1:3:1 → 100:300:100.
    assert!(
        s.count("b1") > 220 && s.count("b0") > 50 && s.count("b2") > 50,
        "{s:?}"
    );

    // An instance deregisters (1 of 3: below the mass-removal share): no new connection reaches it.
    t.zkcli(&["delete", "/discovery/web-svc/i2"]).unwrap();
    let two = ServiceConfig::new(
        "web",
        vip,
        "wrr",
        vec![
            BackendConfig::active(b(0), 1),
            BackendConfig::active(b(1), 3),
        ],
    );
    t.wait_serves(0, &two).unwrap();
    let s = t.lab.in_client(|| spread(vip, 200, 4)).unwrap();
    assert_eq!(s.failures, 0, "{:?}", s.failure_samples);
    assert_eq!(s.count("b2"), 0, "{s:?}");
    assert!(s.count("b0") > 20 && s.count("b1") > 100, "{s:?}");
}
