//! The lab's process handling, with a stand-in for `lb` (a shell script), so it is tested without the
//! XDP program: `start_lb` waits for `lb status`, reports a daemon that dies with its log, and
//! `rewrite_config` delivers SIGHUP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_tests::{Lab, LabOptions, assert_eventually};

/// A script standing in for `lb`: `run` marks its pin dir ready (a directory: bpffs holds no plain
/// files) and logs each SIGHUP; `status` answers once ready. With `FAKE_LB_FAIL` in its path's name,
/// `run` fails at once.
const FAKE_LB: &str = r#"#!/bin/bash
cmd="$1"; shift
pin=""; config=""
while [ $# -gt 0 ]; do
  case "$1" in
    --pin-dir) pin="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    *) shift ;;
  esac
done
case "$cmd" in
  run)
    case "$0" in *fail*) echo "error: cannot attach to eth0: boom" >&2; exit 1 ;; esac
    trap 'echo "SIGHUP: reloading $(cat "$config")"' HUP
    trap 'echo "terminating"; exit 0' TERM
    mkdir -p "$pin/ready"
    echo "running with $(cat "$config")"
    for _ in $(seq 1 600); do sleep 0.1; done ;;
  status)
    [ -d "$pin/ready" ] || { echo "no maps pinned under $pin" >&2; exit 1; }
    echo '{"schema_version":1,"services":[],"counters":{},"flows":0}' ;;
  *) exit 2 ;;
esac
"#;

/// Removes the script when the test ends.
struct FakeLb(PathBuf);

impl FakeLb {
    fn new(name: &str) -> FakeLb {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("lbt-{}-{name}", std::process::id()));
        std::fs::write(&path, FAKE_LB).expect("write the fake lb");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make the fake lb executable");
        FakeLb(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for FakeLb {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn lab_with(fake: &FakeLb) -> Lab {
    Lab::start(LabOptions {
        backends: 1,
        decap: false,
        lb_bin: Some(fake.path().to_path_buf()),
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        wait_for_xdp: false,
        ..Default::default()
    })
    .expect("the lab starts")
}

#[test]
fn start_lb_waits_for_status_and_rewrite_config_signals() {
    let fake = FakeLb::new("ok");
    let mut lab = lab_with(&fake);
    let pin_root = lab.pin_root_path();
    lab.start_lb(0, "# first\n", &["--src-v4", "198.18.3.2"])
        .expect("fake lb starts");
    assert!(lab.lb_pin_dir(0).join("ready").is_dir());
    assert_eq!(lab.lb_status_json(0).expect("status").flows, 0);
    assert!(lab.lb_log(0).expect("log").contains("running with # first"));

    lab.rewrite_config(0, "# second\n").expect("rewrite");
    assert_eventually!(
        lab.lb_log(0)
            .is_ok_and(|l| l.contains("SIGHUP: reloading # second")),
        Duration::from_secs(5)
    );
    assert!(
        !lab.lb_config_path(0).with_extension("toml.tmp").exists(),
        "the temporary file was renamed"
    );
    assert!(
        lab.start_lb(0, "", &[]).is_err(),
        "one daemon per load balancer"
    );
    assert!(
        lab.start_lb(1, "", &[]).is_err(),
        "the lab has one load balancer"
    );

    lab.stop_lb(0).expect("stop");
    assert!(
        lab.rewrite_config(0, "# third\n").is_err(),
        "a stopped daemon cannot be signalled"
    );
    drop(lab);
    assert!(!pin_root.exists(), "{} left behind", pin_root.display());
}

#[test]
fn a_daemon_that_dies_is_reported_with_its_log() {
    let fake = FakeLb::new("fail");
    let mut lab = lab_with(&fake);
    let err = lab.start_lb(0, "", &[]).expect_err("the fake lb fails");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("boom"),
        "the error carries the log tail: {msg}"
    );
    assert!(msg.contains("lb0"), "the error names the daemon: {msg}");
}
