//! `/metrics` of a running `lb run`, scraped from the load balancer's namespace and read with a
//! Prometheus text-format parser: the numbers must agree with the connections the test made.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use lb_tests::config::to_toml;
use lb_tests::lab::run_in_netns;
use lb_tests::scenario::{service, status_shows, vip};
use lb_tests::{Lab, LabOptions, assert_eventually, spread};
use prometheus_parse::{Sample, Scrape, Value};

const METRICS: &str = "127.0.0.1:9464";
const CONNS: usize = 300;

/// `GET /metrics` over plain HTTP/1.1 (the daemon closes the connection after the answer).
fn get_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP header end in {text:?}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "scrape answered {head:?}");
    Ok(body.to_owned())
}

fn scrape(lab: &Lab) -> Scrape {
    let addr: SocketAddr = METRICS.parse().expect("address");
    let body = run_in_netns(&lab.lb_netns(0), || get_metrics(addr))
        .expect("lb namespace")
        .expect("scrape");
    let lines = BufReader::new(body.as_bytes()).lines();
    Scrape::parse(lines).expect("the scrape parses as Prometheus text")
}

fn number(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        // A histogram reads as its number of observations (the +Inf bucket).
        Value::Histogram(buckets) => buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map_or(f64::NAN, |b| b.count),
        _ => f64::NAN,
    }
}

/// Samples of `metric` whose labels include every pair of `labels`.
fn values(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(number)
        .collect()
}

fn one(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let v = values(scrape, metric, labels);
    assert_eq!(
        v.len(),
        1,
        "{metric}{labels:?}: expected one sample, got {v:?}"
    );
    v[0]
}

#[test]
fn metrics_agree_with_the_connections_made() {
    let svc = service("web", vip(1, false), "rr", &[1, 1, 1]).with(
        "health_check = { kind = \"tcp\", interval_ms = 200, timeout_ms = 100, rise = 2, fall = 2 }",
    );
    let mut lab = Lab::start(LabOptions {
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..LabOptions::default()
    })
    .expect("the lab starts");
    lab.start_lb(
        0,
        &to_toml(std::slice::from_ref(&svc)),
        &["--metrics", METRICS, "--log-format", "json"],
    )
    .expect("lb starts");
    assert_eventually!(
        lab.lb_status_json(0).is_ok_and(|s| status_shows(&s, &svc)),
        Duration::from_secs(10)
    );

    let spread = lab.in_client(|| spread(svc.vip, CONNS, 8)).expect("client");
    assert_eq!(spread.failures, 0, "{:?}", spread.failure_samples);

    let m = scrape(&lab);
    assert_eq!(
        one(&m, "lb_service_new_flows_total", &[("service", "web")]),
        CONNS as f64
    );
    let per_backend = values(&m, "lb_backend_new_flows_total", &[("service", "web")]);
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    assert_eq!(per_backend.iter().sum::<f64>(), CONNS as f64);
    for i in 0..3 {
        let backend = Lab::backend_addr(i, false).to_string();
        let labels = [("service", "web"), ("backend", backend.as_str())];
        // What each backend greeted is what the metrics say it got.
        let greeted = spread.count(&Lab::backend_name(i)) as f64;
        assert_eq!(
            one(&m, "lb_backend_new_flows_total", &labels),
            greeted,
            "b{i}"
        );
        assert_eq!(one(&m, "lb_backend_up", &labels), 1.0, "b{i}");
        assert!(
            one(&m, "lb_backend_packets_total", &labels) >= 3.0 * greeted,
            "b{i}"
        );
    }
    assert_eq!(one(&m, "lb_drops_total", &[("reason", "no_backend")]), 0.0);
    assert!(one(&m, "lb_config_generation", &[]) >= 1.0);
    assert!(one(&m, "lb_last_apply_duration_seconds", &[]) > 0.0);
    let flows_new = one(&m, "lb_datapath_events_total", &[("event", "flow_new")]);
    assert_eq!(flows_new, CONNS as f64);
    // A drop is one sample, under lb_drops_total; the events leave them out.
    let drop_events: Vec<&Sample> = (m.samples.iter())
        .filter(|s| s.metric == "lb_datapath_events_total")
        .filter(|s| {
            s.labels
                .get("event")
                .is_some_and(|e| e.starts_with("drop_"))
        })
        .collect();
    assert!(drop_events.is_empty(), "{drop_events:?}");
    assert!(one(&m, "lb_flow_table_capacity", &[]) >= 1024.0);
    assert!(one(&m, "lb_apply_duration_seconds", &[]) >= 1.0);
    assert_eq!(one(&m, "lb_config_last_reload_successful", &[]), 1.0);
    assert!(one(&m, "lb_config_last_reload_success_timestamp_seconds", &[]) > 1.7e9);
    assert!(one(&m, "lb_config_reloads_total", &[("result", "success")]) >= 1.0);
    for i in 0..3 {
        let backend = Lab::backend_addr(i, false).to_string();
        let labels = [("backend", backend.as_str()), ("check", "tcp")];
        let mut passed = labels.to_vec();
        passed.push(("result", "pass"));
        let passes = one(&m, "lb_health_probes_total", &passed);
        assert!(passes >= 1.0, "b{i}: {passes} passed probes");
        let timed = one(&m, "lb_health_probe_duration_seconds", &labels);
        assert!(timed >= passes, "b{i}: {timed} timed, {passes} passed");
    }

    // The daemon's log is JSON, one object per line, with values (not Rust Debug strings).
    let log = lab.lb_log(0).expect("lb log");
    let mut applied = None;
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["fields"]["message"] == "configuration applied" {
            applied = Some(v);
        }
    }
    let applied = applied.unwrap_or_else(|| panic!("no `configuration applied` in {log}"));
    assert_eq!(applied["fields"]["added"], "web", "{applied}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log}");

    // A configuration that does not validate is rejected, and said so; the last good one stays.
    let good = to_toml(std::slice::from_ref(&svc));
    lab.rewrite_config(
        0,
        "[[services]]\nname = \"web\"\nvip = \"not an address\"\n",
    )
    .expect("rewrite");
    assert_eventually!(
        one(&scrape(&lab), "lb_config_last_reload_successful", &[]) == 0.0,
        Duration::from_secs(10),
        "a rejected configuration file never showed in lb_config_last_reload_successful"
    );
    let m = scrape(&lab);
    assert!(one(&m, "lb_config_reloads_total", &[("result", "rejected")]) >= 1.0);
    assert_eq!(
        one(
            &m,
            "lb_backend_up",
            &[
                ("service", "web"),
                ("backend", &Lab::backend_addr(0, false).to_string())
            ]
        ),
        1.0
    );
    lab.rewrite_config(0, &good).expect("rewrite");
    assert_eventually!(
        one(&scrape(&lab), "lb_config_last_reload_successful", &[]) == 1.0,
        Duration::from_secs(10),
        "the good configuration again never showed as taken"
    );

    // Health state follows a stopped server.
    lab.stop_backend_server(2).expect("stop b2");
    let b2 = Lab::backend_addr(2, false).to_string();
    assert_eventually!(
        one(
            &scrape(&lab),
            "lb_backend_up",
            &[("service", "web"), ("backend", &b2)]
        ) == 0.0,
        Duration::from_secs(5),
        "b2 never reported down in the metrics"
    );
    let failed = [
        ("backend", b2.as_str()),
        ("check", "tcp"),
        ("result", "fail"),
    ];
    assert!(one(&scrape(&lab), "lb_health_probes_total", &failed) >= 2.0);
}
