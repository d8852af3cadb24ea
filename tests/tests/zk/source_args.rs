//! `lb run` takes its services from exactly one of `--config` and `--zk`; both or neither is a clear
//! error before anything is loaded (so these run without root).

use std::process::Command;

fn lb_run(args: &[&str]) -> (bool, String) {
    let out = Command::new(lb_tests::lab::lb_bin().unwrap())
        .args(["run", "--iface", "lo"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn both_sources_are_refused() {
    let (ok, err) = lb_run(&["--config", "/etc/lb.toml", "--zk", "127.0.0.1:2181"]);
    assert!(!ok);
    assert!(
        err.contains("both --config /etc/lb.toml and --zk 127.0.0.1:2181"),
        "{err}"
    );
    assert!(err.contains("give only one"), "{err}");
}

#[test]
fn no_source_is_refused() {
    let (ok, err) = lb_run(&[]);
    assert!(!ok);
    assert!(err.contains("no configuration source"), "{err}");
    assert!(
        err.contains("--config FILE") && err.contains("--zk HOST:PORT"),
        "{err}"
    );
}

#[test]
fn bad_zookeeper_options_are_refused() {
    let (ok, err) = lb_run(&["--zk", "127.0.0.1:2181", "--zk-root", "lb"]);
    assert!(!ok);
    assert!(err.contains("ZooKeeper root \"lb\" is invalid"), "{err}");
    let (ok, err) = lb_run(&["--zk", "127.0.0.1:2181", "--zk-guard-share", "1.5"]);
    assert!(!ok);
    assert!(
        err.contains("--zk-guard-share 1.5 is outside 0..=1"),
        "{err}"
    );
    let (ok, err) = lb_run(&[
        "--zk",
        "127.0.0.1:2181",
        "--zk-auth-file",
        "/nonexistent/auth",
    ]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/auth"), "{err}");
}

#[test]
fn registry_formats_need_a_mapping_and_the_mapping_needs_one() {
    let (ok, err) = lb_run(&["--zk", "127.0.0.1:2181", "--zk-format", "curator"]);
    assert!(!ok);
    assert!(
        err.contains("--zk-format curator needs --zk-services FILE"),
        "{err}"
    );
    let (ok, err) = lb_run(&["--zk", "127.0.0.1:2181", "--zk-services", "/etc/map.toml"]);
    assert!(!ok);
    assert!(
        err.contains("--zk-services /etc/map.toml is for --zk-format curator or serverset"),
        "{err}"
    );
    let (ok, err) = lb_run(&["--config", "/etc/lb.toml", "--zk-format", "serverset"]);
    assert!(!ok);
    assert!(err.contains("give --zk HOSTS too"), "{err}");

    let mapping = crate::config_check::TempConfig::new(
        "registry-map.toml",
        "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\nendpoint = \"http\"\nbackends = []\n",
    );
    let path = mapping.arg();
    let args = [
        "--zk",
        "127.0.0.1:2181",
        "--zk-format",
        "curator",
        "--zk-services",
        path,
    ];
    let (ok, err) = lb_run(&args);
    assert!(!ok);
    assert!(
        err.contains(&format!("{path}:5:1: services[0].backends")),
        "{err}"
    );
    std::fs::write(
        path,
        "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\nendpoint = \"http\"\n",
    )
    .unwrap();
    let (ok, err) = lb_run(&args);
    assert!(!ok);
    assert!(
        err.contains("endpoint \"http\" is not one of port, sslPort"),
        "{err}"
    );
}
