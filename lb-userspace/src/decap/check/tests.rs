use super::*;

const VIP: &str = "198.18.100.1";
const VIP6: &str = "2001:db8:100::1";

fn opts(vips: &[&str]) -> CheckOptions {
    CheckOptions {
        iface: "eth0".into(),
        vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
        client_mtu: 1500,
        pin_dir: "/sys/fs/bpf/lb-decap".into(),
    }
}

/// A backend set up as the README says: every check ok.
fn good_host() -> HostFacts {
    let mut sysctls = BTreeMap::new();
    for (k, v) in [
        ("all.arp_ignore", 1),
        ("all.arp_announce", 2),
        ("all.rp_filter", 2),
        ("eth0.arp_ignore", 0),
        ("eth0.arp_announce", 0),
        ("eth0.rp_filter", 0),
        ("lo.rp_filter", 0),
    ] {
        sysctls.insert(format!("net.ipv4.conf.{k}"), v);
    }
    HostFacts {
        mtu: Some(1500),
        addrs: vec![
            ("lo".into(), "127.0.0.1".parse().unwrap()),
            ("lo".into(), VIP.parse().unwrap()),
            ("lo".into(), VIP6.parse().unwrap()),
            ("eth0".into(), "198.18.2.11".parse().unwrap()),
        ],
        sysctls,
        default_v4: Some(DefaultRoute {
            via: Some("198.18.2.1".into()),
            advmss: Some(1440),
        }),
        default_v6: Some(DefaultRoute {
            via: Some("2001:db8:2::1".into()),
            advmss: Some(1400),
        }),
        xdp_attached: true,
        decap_pinned: true,
        kernel_tunnels: BTreeMap::new(),
    }
}

fn failures(findings: &[Finding]) -> Vec<&Finding> {
    findings
        .iter()
        .filter(|f| f.verdict != Verdict::Ok)
        .collect()
}

#[test]
fn a_host_set_up_as_documented_passes_every_check() {
    let findings = check(&opts(&[]), &good_host());
    assert!(failures(&findings).is_empty(), "{}", render(&findings));
    // VIPs default to lo's addresses: both families are checked.
    let text = render(&findings);
    assert!(text.contains("VIP 198.18.100.1 is on lo"), "{text}");
    assert!(text.contains("VIP 2001:db8:100::1 is on lo"), "{text}");
    assert!(text.contains("IPv6: MTU 1500"), "{text}");
    assert!(text.lines().all(|l| l.starts_with("ok  ")), "{text}");
}

#[test]
fn a_missing_vip_or_one_on_the_wrong_interface_names_the_ip_command() {
    let mut host = good_host();
    host.addrs
        .push(("eth0".into(), "198.18.100.2".parse().unwrap()));
    let findings = check(&opts(&[VIP, "198.18.100.2", "198.18.100.3"]), &host);
    let bad = failures(&findings);
    assert_eq!(bad.len(), 2, "{}", render(&findings));
    assert_eq!(
        bad[0].fix,
        "ip addr del 198.18.100.2/32 dev eth0; ip addr add 198.18.100.2/32 dev lo"
    );
    assert_eq!(bad[1].fix, "ip addr add 198.18.100.3/32 dev lo");
    host.addrs
        .retain(|(dev, ip)| dev != "lo" || ip.is_loopback());
    let findings = check(&opts(&[]), &host);
    assert!(
        findings[0].what.starts_with("no VIP on lo"),
        "{}",
        render(&findings)
    );
}

#[test]
fn arp_settings_take_the_larger_of_all_and_the_interface() {
    let mut host = good_host();
    host.sysctls
        .insert("net.ipv4.conf.all.arp_ignore".into(), 0);
    host.sysctls
        .insert("net.ipv4.conf.eth0.arp_ignore".into(), 1);
    assert!(failures(&check(&opts(&[VIP]), &host)).is_empty());
    host.sysctls
        .insert("net.ipv4.conf.eth0.arp_ignore".into(), 0);
    host.sysctls
        .insert("net.ipv4.conf.all.arp_announce".into(), 1);
    let findings = check(&opts(&[VIP]), &host);
    let bad = failures(&findings);
    assert_eq!(bad.len(), 2, "{}", render(&findings));
    assert!(
        bad[0].fix.contains("net.ipv4.conf.all.arp_ignore=1"),
        "{}",
        bad[0].fix
    );
    assert!(
        bad[0].fix.contains("net.ipv4.conf.eth0.arp_ignore=1"),
        "{}",
        bad[0].fix
    );
    assert!(
        bad[1].fix.contains("net.ipv4.conf.all.arp_announce=2"),
        "{}",
        bad[1].fix
    );
    // IPv6 VIPs alone need no ARP settings.
    assert!(failures(&check(&opts(&[VIP6]), &host)).is_empty());
}

#[test]
fn strict_rp_filter_fails_on_each_interface_it_is_set_on() {
    let mut host = good_host();
    host.sysctls.insert("net.ipv4.conf.all.rp_filter".into(), 1);
    host.sysctls.insert("net.ipv4.conf.lo.rp_filter".into(), 1);
    let findings = check(&opts(&[VIP]), &host);
    let bad = failures(&findings);
    assert_eq!(bad.len(), 2, "{}", render(&findings));
    assert!(
        bad[0].what.contains("client's source address"),
        "{}",
        bad[0].what
    );
    assert!(
        bad[0]
            .fix
            .starts_with("sysctl -w net.ipv4.conf.all.rp_filter=2")
    );
    assert!(
        bad[1]
            .fix
            .starts_with("sysctl -w net.ipv4.conf.lo.rp_filter=2")
    );
}

#[test]
fn the_mss_must_leave_room_for_the_tunnel_header() {
    let mut host = good_host();
    host.default_v4 = Some(DefaultRoute {
        via: Some("198.18.2.1".into()),
        advmss: None,
    });
    host.default_v6 = None;
    let findings = check(&opts(&[VIP, VIP6]), &host);
    let bad = failures(&findings);
    assert_eq!(bad.len(), 2, "{}", render(&findings));
    // MSS 1460 + 40 + 20 = 1520 > 1500; IPv6: 1440 + 60 + 40 = 1540.
    assert!(bad[0].what.contains("MSS 1460") && bad[0].what.contains("1520 bytes in IPIP"));
    assert!(
        bad[0]
            .fix
            .contains("ip route change default via 198.18.2.1 dev eth0 advmss 1440"),
        "{}",
        bad[0].fix
    );
    assert!(
        bad[1].what.contains("1540 bytes in ip6ip6"),
        "{}",
        bad[1].what
    );
    assert!(bad[1].fix.contains("advmss 1400"), "{}", bad[1].fix);
    // A jumbo backend network carries internet clients' full segments.
    host.mtu = Some(9000);
    assert!(failures(&check(&opts(&[VIP, VIP6]), &host)).is_empty());
}

#[test]
fn something_must_decapsulate() {
    let mut host = good_host();
    host.xdp_attached = false;
    host.decap_pinned = false;
    let findings = check(&opts(&[VIP]), &host);
    let bad = failures(&findings);
    assert_eq!(bad.len(), 1, "{}", render(&findings));
    assert!(
        bad[0].fix.starts_with("run `lb decap --iface eth0`"),
        "{}",
        bad[0].fix
    );
    host.kernel_tunnels.insert("tunl0".into(), true);
    host.sysctls
        .insert("net.ipv4.conf.tunl0.rp_filter".into(), 1);
    let findings = check(&opts(&[VIP]), &host);
    let bad = failures(&findings);
    assert_eq!(bad.len(), 1, "{}", render(&findings));
    assert!(bad[0].what.contains("on tunl0"), "{}", bad[0].what);
    host.xdp_attached = true;
    host.sysctls
        .insert("net.ipv4.conf.tunl0.rp_filter".into(), 0);
    let findings = check(&opts(&[VIP]), &host);
    assert_eq!(failures(&findings)[0].verdict, Verdict::Warn);
}

#[test]
fn a_missing_interface_is_the_only_finding() {
    let host = HostFacts::default();
    let findings = check(&opts(&[VIP]), &host);
    assert_eq!(findings.len(), 1);
    assert!(findings[0].what.contains("eth0 does not exist"));
}

#[test]
fn default_routes_are_parsed_from_ip_route() {
    let routes = "198.18.2.0/24 proto kernel scope link src 198.18.2.11\n\
                  default via 198.18.2.1 linkdown advmss 1400 \n";
    assert_eq!(
        parse_default_route(routes),
        Some(DefaultRoute {
            via: Some("198.18.2.1".into()),
            advmss: Some(1400)
        })
    );
    assert_eq!(parse_default_route("198.18.2.0/24 dev eth0\n"), None);
}

#[test]
fn links_are_parsed_from_ip_link() {
    let link = "3: eth0@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1600 xdpgeneric qdisc noqueue \
                state UP\n    link/ether 4e:78:97:82:8a:76 brd ff:ff:ff:ff:ff:ff\n    \
                prog/xdp id 57 name lb_decap tag 0123456789abcdef jited\n";
    assert_eq!(link_mtu(link), Some(1600));
    assert!(link_is_up(link));
    assert!(!link_is_up(
        "5: tunl0@NONE: <NOARP> mtu 1480 qdisc noop state DOWN"
    ));
}
