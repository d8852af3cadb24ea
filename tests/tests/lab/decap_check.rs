//! `lb decap --check` on a lab backend (its own namespace, `lb decap` running): with bad settings it
//! exits 1 and names each fix; once the fixes it printed are applied it exits 0.

use lb_tests::{Lab, LabOptions};
use lb_userspace::decap::check::{CheckReport, Verdict};

/// A VIP the lab does not put on the backend's `lo`.
const MISSING_VIP: &str = "198.18.100.9";

/// Runs a command in the backend's namespace; fails the test when it fails.
fn in_ns(ns: &str, program: &str, args: &[&str]) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{program} {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `ip … route change default … advmss N` command of a fix line (it ends at the first comma).
fn route_fix<'a>(report: &'a str, family: &str) -> Vec<&'a str> {
    let start = format!("ip {family}route change default via ");
    let line = report
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains(&start))
        .unwrap_or_else(|| panic!("no `{start}` fix in:\n{report}"));
    let from = line.find(&start).expect("the line holds the command");
    let cmd = line[from..].split(',').next().unwrap_or_default();
    cmd.split_whitespace().skip(1).collect()
}

#[test]
fn decap_check_names_each_fix_and_passes_once_they_are_applied() {
    let opts = LabOptions {
        backends: 1,
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..Default::default()
    };
    let lab = Lab::start(opts).expect("lab starts");
    let ns = lab.backend_netns(0);
    let pin_dir = lab.decap_pin_dir(0);
    let vip4 = Lab::vip_v4(1).to_string();
    let vip6 = Lab::vip_v6(1).to_string();
    // The lab's links carry 1500 bytes, like the clients': a full-sized client packet does not fit
    // the tunnel, so the backend's MSS must be lowered.
    let args = [
        "decap",
        "--check",
        "--iface",
        "eth0",
        "--pin-dir",
        pin_dir.to_str().unwrap(),
        "--vip",
        &vip4,
        "--vip",
        &vip6,
        "--vip",
        MISSING_VIP,
        "--client-mtu",
        "1500",
    ];
    in_ns(
        &ns,
        "sysctl",
        &["-q", "-w", "net.ipv4.conf.all.rp_filter=1"],
    );

    let (status, report) = lab.run_lb_status_in(&ns, &args).expect("lb decap --check");
    assert_eq!(status.code(), Some(1), "{report}");
    for line in report.lines() {
        assert!(
            line.starts_with("ok    ") || line.starts_with("FAIL  "),
            "{line}"
        );
    }
    let fails = |needle: &str| {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("FAIL") && l.contains(needle)),
            "no FAIL naming `{needle}`:\n{report}"
        );
    };
    fails(&format!("ip addr add {MISSING_VIP}/32 dev lo"));
    fails("sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.eth0.arp_ignore=1");
    fails("sysctl -w net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.eth0.arp_announce=2");
    fails("rp_filter=1 (strict) on all");
    fails("sysctl -w net.ipv4.conf.all.rp_filter=2");
    fails("1520 bytes in IPIP");
    fails("1540 bytes in ip6ip6");
    let ok = |needle: &str| {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(needle)),
            "no ok line `{needle}`:\n{report}"
        );
    };
    ok(&format!("VIP {vip4} is on lo"));
    ok(&format!("VIP {vip6} is on lo"));
    ok("lb decap runs on eth0");
    ok("rp_filter=0 on eth0");

    // The fixes, as printed.
    in_ns(
        &ns,
        "sysctl",
        &[
            "-q",
            "-w",
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.all.rp_filter=2",
        ],
    );
    in_ns(
        &ns,
        "ip",
        &["addr", "add", &format!("{MISSING_VIP}/32"), "dev", "lo"],
    );
    let v4 = route_fix(&report, "");
    assert!(v4.ends_with(&["advmss", "1440"]), "{v4:?}");
    in_ns(&ns, "ip", &v4);
    let v6 = route_fix(&report, "-6 ");
    assert!(v6.ends_with(&["advmss", "1400"]), "{v6:?}");
    in_ns(&ns, "ip", &v6);

    let (status, report) = lab.run_lb_status_in(&ns, &args).expect("lb decap --check");
    assert!(status.success(), "{report}");
    assert!(report.lines().all(|l| l.starts_with("ok    ")), "{report}");
    assert!(
        report.contains("MSS 1440 (the default route's advmss)"),
        "{report}"
    );

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (status, json) = lab.run_lb_status_in(&ns, &json_args).expect("--json");
    assert!(status.success(), "{json}");
    let parsed: CheckReport = serde_json::from_str(&json).expect("the report decodes");
    assert!(parsed.ok);
    assert_eq!(parsed.iface, "eth0");
    assert!(parsed.checks.iter().all(|c| c.verdict == Verdict::Ok));
    assert!(parsed.checks.len() >= 10, "{json}");
}
