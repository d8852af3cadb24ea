//! Prometheus metrics on `/metrics` (`lb run --metrics 127.0.0.1:9464`), in the OpenMetrics text
//! format of `prometheus-client`.
//!
//! Traffic, connections and drop counters live in the eBPF maps, so every scrape reads them (through
//! the pins, like `lb status`) and renders a fresh registry; what only the daemon knows (health,
//! generation, apply duration, ZooKeeper session, flow count of the last sweep) comes from the
//! [`DaemonReport`] the daemon publishes on a watch channel (the same report it writes for
//! `lb status`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

mod backend_series;

use crate::dataplane::MapsView;
use crate::report::{DaemonReport, SourceStatus, ZkConnection};
use crate::status::{Status, collect_without_flows};

/// The content type of a scrape.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest request head the server reads (hyper's smallest buffer).
const MAX_REQUEST: usize = 8 * 1024;
/// A client gets this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A counter family registered under `name` (rendered `lb_<name>_total`).
fn counters(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauges(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Renders one scrape (pure: maps already read).
pub fn render(status: &Status, daemon: &DaemonReport) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("lb");
    gauges(
        &mut r,
        "build_info",
        "1, labelled with the release, the git commit and the data-plane layout version",
    )
    .get_or_create(&labels(&[
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", env!("LB_GIT_COMMIT")),
        ("layout", &lb_common::layout::LAYOUT_VERSION.to_string()),
    ]))
    .set(1);
    let svc_packets = counters(
        &mut r,
        "service_packets",
        "Packets to the service's VIP that the balancer forwarded or dropped",
    );
    let svc_bytes = counters(&mut r, "service_bytes", "Bytes of those packets");
    let svc_flows = counters(
        &mut r,
        "service_new_flows",
        "New flows (connections) scheduled",
    );
    let svc_drops = counters(
        &mut r,
        "service_drops",
        "Packets to the service that were dropped",
    );
    let svc_panic = gauges(
        &mut r,
        "service_panic",
        "1 while the service is in panic mode (too few healthy backends)",
    );
    let drops = counters(
        &mut r,
        "drops",
        "Packets dropped by the data plane, by reason",
    );
    let events = counters(
        &mut r,
        "datapath_events",
        "Every verdict and event of the XDP program by name, drops aside (they are lb_drops_total)",
    );
    let flows = Gauge::<i64>::default();
    r.register(
        "flows",
        "Entries in the flow table at the last sweep",
        flows.clone(),
    );
    let capacity = Gauge::<i64>::default();
    r.register(
        "flow_table_capacity",
        "Connections the flow table is rated for (--flow-table-size); none is evicted up to it",
        capacity.clone(),
    );
    capacity.set(i64::from(status.flow_table_capacity));
    let evictions = Counter::<u64>::default();
    r.register(
        "flow_evictions",
        "Flows the flow table evicted to make room (flow_evicted, read at each sweep; raise --flow-table-size)",
        evictions.clone(),
    );
    let generation = Gauge::<i64>::default();
    r.register(
        "config_generation",
        "Generation of the applied configuration (bumped on every change)",
        generation.clone(),
    );
    let not_applied = gauges(
        &mut r,
        "service_not_applied",
        "1 for each service the daemon could not apply (capacity or address family; see lb status)",
    );
    crate::telemetry::telemetry().register(&mut r);
    let apply = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    r.register(
        "last_apply_duration_seconds",
        "How long the last change to the data plane took",
        apply.clone(),
    );

    for s in &status.services {
        let l = labels(&[("service", &s.name)]);
        svc_packets.get_or_create(&l).inc_by(s.packets);
        svc_bytes.get_or_create(&l).inc_by(s.bytes);
        svc_flows.get_or_create(&l).inc_by(s.new_flows);
        svc_drops.get_or_create(&l).inc_by(s.drops);
        svc_panic
            .get_or_create(&l)
            .set(i64::from(daemon.health.panic.contains(&s.name)));
    }
    for (name, &v) in &status.counters {
        match name.strip_prefix("drop_") {
            Some(reason) => drops.get_or_create(&labels(&[("reason", reason)])),
            None => events.get_or_create(&labels(&[("event", name)])),
        }
        .inc_by(v);
    }
    flows.set(gauge(daemon.flows));
    evictions.inc_by(daemon.flow_evictions);
    generation.set(i64::from(daemon.generation));
    apply.set(daemon.last_apply().map_or(0.0, |d| d.as_secs_f64()));
    if let Some(a) = &daemon.announce {
        let announced = gauges(
            &mut r,
            "vip_announced",
            "1 for each VIP this daemon has handed to BIRD to announce (--announce-bird-include)",
        );
        for vip in &a.announced {
            announced
                .get_or_create(&labels(&[("vip", &vip.to_string())]))
                .set(1);
        }
    }
    for n in &daemon.not_applied {
        not_applied
            .get_or_create(&labels(&[("service", &n.service)]))
            .set(1);
    }
    if let Some(zk) = daemon.source.zookeeper_connection() {
        let state = gauges(
            &mut r,
            "zookeeper_session_state",
            "1 for the ZooKeeper session's current state",
        );
        for s in ZkConnection::ALL {
            state
                .get_or_create(&labels(&[("state", s.name())]))
                .set(i64::from(s == zk));
        }
    }
    if let SourceStatus::Zookeeper(zk) = &daemon.source {
        let rejected = Gauge::<i64>::default();
        r.register(
            "zookeeper_rejected_znodes",
            "Znodes of the current tree that failed validation and were left out (see lb status, the daemon's log)",
            rejected.clone(),
        );
        rejected.set(gauge(zk.current_rejections as u64));
        let rejections = Counter::<u64>::default();
        r.register(
            "zookeeper_rejections",
            "Distinct rejected znodes seen since start (each counted once, when first seen)",
            rejections.clone(),
        );
        rejections.inc_by(zk.rejections);
        let held = Gauge::<i64>::default();
        r.register(
            "zookeeper_held_backends",
            "Backends the mass-removal guard keeps although ZooKeeper removed them",
            held.clone(),
        );
        held.set(gauge(zk.held_backends as u64));
    }
    let mut out = String::with_capacity(256 * 1024);
    encode_registry(&mut out, &r)?;
    // After the registry's families, as the collector that wrote them before did.
    backend_series::encode(&mut out, status, daemon)?;
    encode_eof(&mut out)?;
    Ok(out)
}

/// Binds the metrics listener; `None` (with a warning) when it cannot: metrics are not worth
/// refusing to forward for.
pub async fn bind(addr: SocketAddr) -> Option<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(
                "metrics disabled: cannot listen on {addr}: {e} (choose another with --metrics ADDR, or --metrics off)"
            );
            None
        }
    }
}

/// Serves `/metrics` until the task is dropped (hyper's HTTP/1.1 server). One request per
/// connection; a client gets [`REQUEST_TIMEOUT`] to send its request head.
pub async fn serve(listener: TcpListener, pin_dir: PathBuf, daemon: watch::Receiver<DaemonReport>) {
    let maps: Arc<Mutex<Option<MapsView>>> = Arc::default();
    let pin_dir = Arc::new(pin_dir);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (pin_dir, maps, daemon) = (pin_dir.clone(), maps.clone(), daemon.clone());
        let answer = service_fn(move |request| {
            let (pin_dir, maps, daemon) = (pin_dir.clone(), maps.clone(), daemon.clone());
            async move { Ok::<_, Infallible>(answer(&request, pin_dir, maps, daemon).await) }
        });
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(MAX_REQUEST)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), answer);
            if let Err(e) = connection.await {
                debug!(%peer, "metrics request failed: {e}");
            }
        });
    }
}

async fn answer(
    request: &Request<Incoming>,
    pin_dir: Arc<PathBuf>,
    maps: Arc<Mutex<Option<MapsView>>>,
    daemon: watch::Receiver<DaemonReport>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.method() != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        )
    } else if request.uri().path() == "/healthz" {
        if daemon.borrow().ready {
            (StatusCode::OK, "text/plain", "ready\n".to_owned())
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: no state yet (the source has delivered none and there is no state file)\n"
                    .to_owned(),
            )
        }
    } else if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics (readiness at /healthz)\n".to_owned(),
        )
    } else {
        // Reading every backend's counters takes milliseconds to hundreds of them at fleet
        // size: on a blocking thread, so ZooKeeper pings and probes never wait for a scrape.
        let scraped = tokio::task::spawn_blocking(move || {
            let mut maps = maps.lock().unwrap_or_else(PoisonError::into_inner);
            scrape(&pin_dir, &mut maps, &daemon)
        })
        .await;
        match scraped {
            Ok(Ok(body)) => (StatusCode::OK, OPENMETRICS, body),
            Ok(Err(e)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("reading the maps failed: {e:#}\n"),
            ),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("the scrape did not finish: {e}\n"),
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn scrape(
    pin_dir: &std::path::Path,
    maps: &mut Option<MapsView>,
    daemon: &watch::Receiver<DaemonReport>,
) -> anyhow::Result<String> {
    if maps.is_none() {
        *maps = Some(MapsView::open_pinned(pin_dir)?);
    }
    let Some(view) = maps.as_ref() else {
        unreachable!("opened above")
    };
    let status = collect_without_flows(view)?;
    let daemon = daemon.borrow().clone();
    Ok(render(&status, &daemon)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{BackendMapState, BackendStatus, ServiceStatus};

    /// One request on a new connection to a server without maps; returns the whole response.
    async fn exchange(request: &str) -> String {
        exchange_with(true, request).await
    }

    /// [`exchange`] with a daemon report that is `ready` or not.
    async fn exchange_with(ready: bool, request: &str) -> String {
        use crate::report::{FileStatus, SourceStatus};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut report = crate::report::tests::report(SourceStatus::File(FileStatus {
            config_file: "/etc/lb.toml".into(),
            rejected: None,
        }));
        report.ready = ready;
        let (_tx, daemon) = watch::channel(report);
        let server = tokio::spawn(serve(listener, "/nonexistent/lb-pins".into(), daemon));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .expect("the server closes the connection")
            .unwrap();
        server.abort();
        response
    }

    #[tokio::test]
    async fn serves_metrics_only_on_get_of_metrics_and_closes() {
        let scrape = exchange("GET /metrics?x=1 HTTP/1.1\r\nHost: lb\r\n\r\n").await;
        // No maps are pinned there: the scrape fails, and says why.
        assert!(scrape.starts_with("HTTP/1.1 500 "), "{scrape}");
        assert!(scrape.contains("reading the maps failed"), "{scrape}");
        let lower = scrape.to_ascii_lowercase();
        assert!(lower.contains("connection: close\r\n"), "{scrape}");
        assert!(lower.contains("content-length: "), "{scrape}");
        let elsewhere = exchange("GET / HTTP/1.1\r\nHost: lb\r\n\r\n").await;
        assert!(elsewhere.starts_with("HTTP/1.1 404 "), "{elsewhere}");
        assert!(
            elsewhere.ends_with("metrics are at /metrics (readiness at /healthz)\n"),
            "{elsewhere}"
        );
        // The test report is ready (it forwards a state).
        let health = exchange("GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n").await;
        assert!(
            health.starts_with("HTTP/1.1 200 ") && health.ends_with("ready\n"),
            "{health}"
        );
        let waiting = exchange_with(false, "GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n").await;
        assert!(waiting.starts_with("HTTP/1.1 503 "), "{waiting}");
        assert!(waiting.contains("no state yet"), "{waiting}");
        let post =
            exchange("POST /metrics HTTP/1.1\r\nHost: lb\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    }

    #[tokio::test]
    async fn a_taken_address_disables_metrics_only() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(bind(taken.local_addr().unwrap()).await.is_none());
    }

    fn zk_rejections(daemon: &DaemonReport) -> usize {
        match &daemon.source {
            SourceStatus::Zookeeper(zk) => zk.current_rejections,
            SourceStatus::File(_) => panic!("a ZooKeeper report"),
        }
    }

    #[test]
    fn renders_services_backends_and_daemon_state() {
        let status = Status {
            schema_version: crate::report::SCHEMA_VERSION,
            services: vec![ServiceStatus {
                name: "web".into(),
                id: 0,
                vip: "198.18.100.1:80".into(),
                scheduler: "rr".into(),
                generation: 3,
                table_len: 2,
                persistence_timeout_s: 0,
                packets: 10,
                bytes: 1000,
                new_flows: 2,
                drops: 1,
                backends: vec![BackendStatus {
                    id: 0,
                    addr: "198.18.2.11:80".into(),
                    weight: 2,
                    state: BackendMapState::Active,
                    active_conns: 1,
                    packets: 9,
                    bytes: 900,
                    new_flows: 2,
                }],
            }],
            counters: [("drop_no_backend".to_owned(), 1)].into_iter().collect(),
            flows: 0,
            flow_table_capacity: 1024,
            daemon: None,
            attached: Vec::new(),
            manager_pid: None,
            unmanaged_since_unix_ms: None,
        };
        let mut zk = crate::report::tests::zk_status();
        zk.connection = ZkConnection::Connected;
        let mut daemon = crate::report::tests::report(crate::report::SourceStatus::Zookeeper(zk));
        daemon.flows = 5;
        let probed: SocketAddr = "198.19.77.1:80".parse().unwrap();
        let t = crate::telemetry::telemetry();
        t.probe(probed, "tcp", true, Duration::from_millis(2));
        t.probe(probed, "tcp", false, Duration::from_millis(3));
        t.probe(probed, "tcp", false, Duration::from_millis(4));
        t.applied(Duration::from_millis(1));
        let text = render(&status, &daemon).unwrap();
        let build = format!(
            "lb_build_info{{version=\"{}\",commit=\"{}\",layout=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("LB_GIT_COMMIT"),
            lb_common::layout::LAYOUT_VERSION
        );
        assert!(
            text.lines().any(|l| l == build),
            "{build} missing in {text}"
        );
        for line in [
            "lb_service_new_flows_total{service=\"web\"} 2",
            "lb_backend_packets_total{service=\"web\",backend=\"198.18.2.11:80\"} 9",
            "lb_backend_active_connections{service=\"web\",backend=\"198.18.2.11:80\"} 1",
            "lb_backend_up{service=\"web\",backend=\"198.18.2.11:80\"} 0",
            "lb_drops_total{reason=\"no_backend\"} 1",
            "lb_config_generation 3",
            "lb_flows 5",
            "lb_service_not_applied{service=\"v6\"} 1",
            "lb_zookeeper_session_state{state=\"connected\"} 1",
            "lb_zookeeper_session_state{state=\"expired\"} 0",
            "lb_flow_table_capacity 1024",
            "lb_health_probes_total{backend=\"198.19.77.1:80\",check=\"tcp\",result=\"pass\"} 1",
            "lb_health_probes_total{backend=\"198.19.77.1:80\",check=\"tcp\",result=\"fail\"} 2",
            "lb_health_probe_duration_seconds_count{backend=\"198.19.77.1:80\",check=\"tcp\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // A drop is counted once: as a drop reason, not again as a data-plane event.
        assert!(
            !text.contains("lb_datapath_events_total{event=\"drop_"),
            "{text}"
        );
        let zk_rejected = format!("lb_zookeeper_rejected_znodes {}", zk_rejections(&daemon));
        assert!(
            text.lines().any(|l| l == zk_rejected),
            "{zk_rejected} in {text}"
        );
        let applies = text
            .lines()
            .find_map(|l| l.strip_prefix("lb_apply_duration_seconds_count "))
            .and_then(|n| n.parse::<u64>().ok());
        assert!(applies.is_some_and(|n| n >= 1), "{text}");
        t.forget_probe(probed, "tcp");
        let text = render(&status, &daemon).unwrap();
        assert!(!text.contains("198.19.77.1:80"), "{text}");
    }
}
