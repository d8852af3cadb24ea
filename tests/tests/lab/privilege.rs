//! Least privilege: `lb run` started with exactly `privilege::LOAD_REQUIRED` forwards real TCP and,
//! once attached, holds only `privilege::RUN_KEPT`; without one required capability it refuses,
//! naming it. The daemon runs as uid 0 with reduced capability sets (`setpriv`): the lab's
//! directories and /run/lb belong to root, and a uid-0 process without CAP_DAC_OVERRIDE reaches
//! only what root owns, like the unit's `User=lb` reaches only what lb owns (README).

use lb_tests::config::to_toml;
use lb_tests::scenario::{service, status_shows, vip};
use lb_tests::{Lab, LabOptions, assert_eventually, spread};
use lb_userspace::privilege::{Capability, LOAD_REQUIRED, RUN_KEPT};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(10);

fn mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1 << c.number))
}

/// `setpriv` leaving `lb run` (uid 0) with `caps` and nothing else.
fn with_only(caps: &[&Capability]) -> Vec<String> {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.name.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--inh-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
        "--".into(),
    ]
}

fn start_lab(wrapper: Vec<String>, backends: usize) -> Lab {
    Lab::start(LabOptions {
        backends,
        decap: backends > 0,
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        lb_run_wrapper: wrapper,
        ..Default::default()
    })
    .expect("the lab starts")
}

/// The `Cap*` and `NoNewPrivs` lines of a process's status, as numbers.
fn cap_sets(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.starts_with("Cap") || *k == "NoNewPrivs")
        .map(|(k, v)| {
            (
                k.to_string(),
                u64::from_str_radix(v.trim(), 16).expect("hex"),
            )
        })
        .collect()
}

fn daemon_pid(lab: &Lab) -> u32 {
    lab.lb_status_json(0)
        .expect("lb status")
        .daemon
        .expect("the daemon in the status")
        .report
        .pid
}

fn serve_and_check_traffic(lab: &mut Lab) {
    let svc = service("web", vip(1, false), "rr", &[1, 1, 1]);
    lab.start_lb(0, &to_toml(std::slice::from_ref(&svc)), &[])
        .expect("lb run starts");
    assert_eventually!(
        lab.lb_status_json(0).is_ok_and(|s| status_shows(&s, &svc)),
        SETTLE,
        "lb0 never showed web"
    );
    let s = lab.in_client(|| spread(svc.vip, 30, 4)).expect("client");
    assert_eq!(s.failures, 0, "{:?}", s.failure_samples);
    assert_eq!(s.per_backend.values().sum::<usize>(), 30, "{s:?}");
}

#[test]
fn privilege_lb_run_with_only_the_required_capabilities_forwards_and_keeps_only_net_admin() {
    let mut lab = start_lab(with_only(&LOAD_REQUIRED.iter().collect::<Vec<_>>()), 3);
    serve_and_check_traffic(&mut lab);
    let caps = cap_sets(daemon_pid(&lab));
    let kept = mask(RUN_KEPT);
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(caps[set], kept, "{set}: {caps:x?}");
    }
    // Without CAP_SETPCAP the bounding set stays as started; no_new_privs keeps an exec (of `ip`,
    // as uid 0) from regaining the rest.
    assert_eq!(caps["CapBnd"], mask(LOAD_REQUIRED), "{caps:x?}");
    assert_eq!(caps["NoNewPrivs"], 1, "{caps:x?}");
    let log = lab.lb_log(0).expect("log");
    assert!(
        log.contains("dropped the capabilities the daemon no longer needs"),
        "{log}"
    );
}

#[test]
fn privilege_lb_run_as_root_also_shrinks_its_bounding_set() {
    let mut lab = start_lab(Vec::new(), 3);
    serve_and_check_traffic(&mut lab);
    let caps = cap_sets(daemon_pid(&lab));
    let kept = mask(RUN_KEPT);
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
        assert_eq!(caps[set], kept, "{set}: {caps:x?}");
    }
}

#[test]
fn privilege_lb_run_without_a_required_capability_refuses_naming_it() {
    for missing in LOAD_REQUIRED {
        let others: Vec<&Capability> = LOAD_REQUIRED.iter().filter(|c| *c != missing).collect();
        let mut lab = start_lab(with_only(&others), 1);
        let svc = service("web", vip(1, false), "rr", &[1]);
        let err = lab
            .start_lb(0, &to_toml(std::slice::from_ref(&svc)), &[])
            .expect_err("lb run must refuse");
        let text = format!("{err:#}");
        let expected = format!("lb run lacks {}, which it needs", missing.name);
        assert!(text.contains(&expected), "{expected:?} not in: {text}");
        assert!(
            !lab.lb_has_xdp(0).expect("ip link"),
            "a program was attached"
        );
    }
}
