//! The lab itself, without a load balancer: it comes up, the client reaches every backend through the
//! router in both families, and nothing of it is left after `Drop`.

use lb_tests::{Lab, LabOptions, hold, spread};

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lab_comes_up_routes_to_backends_and_leaves_nothing() {
    let opts = LabOptions {
        backends: 3,
        decap: false,
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..Default::default()
    };
    let lab = Lab::start(opts).expect("lab starts");
    let prefix = lab.netns_prefix();
    let pin_root = lab.pin_root_path();
    let dir = lab.dir().to_path_buf();
    assert_eq!(
        netns_list().matches(&prefix).count(),
        2 + 1 + 3,
        "client, router, lb0, b0..b2"
    );

    for i in 0..3 {
        for v6 in [false, true] {
            let addr = Lab::backend_addr(i, v6);
            let s = lab
                .in_client(|| spread(addr, 10, 4))
                .expect("client namespace");
            assert_eq!(s.failures, 0, "{addr}: {:?}", s.failure_samples);
            assert_eq!(s.count(&Lab::backend_name(i)), 10, "{addr}: {s:?}");
        }
    }

    // A held connection echoes, and stays usable from outside the client thread.
    let mut held = lab
        .in_client(|| hold(Lab::backend_addr(1, true), 2))
        .expect("netns")
        .expect("hold");
    for c in &mut held {
        assert_eq!(c.ping().expect("ping"), "b1");
    }
    drop(held);

    drop(lab);
    assert!(
        !netns_list().contains(&prefix),
        "namespaces left behind: {}",
        netns_list()
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!pin_root.exists(), "{} left behind", pin_root.display());
}

#[test]
fn stopped_backend_server_refuses_and_restarts() {
    let opts = LabOptions {
        backends: 1,
        decap: false,
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..Default::default()
    };
    let mut lab = Lab::start(opts).expect("lab starts");
    let addr = Lab::backend_addr(0, false);
    lab.stop_backend_server(0).expect("stop");
    let s = lab.in_client(|| spread(addr, 3, 1)).expect("netns");
    assert_eq!(s.failures, 3, "{s:?}");
    lab.start_backend_server(0).expect("restart");
    let s = lab.in_client(|| spread(addr, 3, 1)).expect("netns");
    assert_eq!(s.count("b0"), 3, "{s:?}");
}
