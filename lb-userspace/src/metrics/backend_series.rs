//! The per-backend families of a scrape, written straight into the text: at 100,000 backends
//! they are 700,000 of its lines (≈ 50 MB), and going through `prometheus-client`'s encoders
//! (label sets behind trait objects, one row struct with two owned strings per backend) made
//! them most of a scrape. The text is exactly what `prometheus-client` writes for them (OpenMetrics,
//! prefix `lb`; a unit test compares the two).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::report::DaemonReport;
use crate::status::{BackendMapState, BackendStatus, Status, push_u64};

/// One family: name (without the prefix), help, OpenMetrics type and the value of a backend.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// Never negative (a gauge's value is clamped to `i64::MAX`).
    value: fn(&BackendStatus, &Health<'_>) -> u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// Which backends their health checks hold down, and the service of the rows being written.
struct Health<'a> {
    down: &'a HashSet<(&'a str, SocketAddr)>,
    service: &'a str,
}

impl Health<'_> {
    fn up(&self, b: &BackendStatus) -> bool {
        // Nothing down (the usual case): no address to parse.
        self.down.is_empty()
            || !b
                .socket_addr()
                .is_some_and(|addr| self.down.contains(&(self.service, addr)))
    }
}

const FAMILIES: [Family; 7] = [
    Family {
        name: "backend_packets",
        help: "Packets sent to the backend",
        kind: Kind::Counter,
        value: |b, _| b.packets,
    },
    Family {
        name: "backend_bytes",
        help: "Bytes sent to the backend",
        kind: Kind::Counter,
        value: |b, _| b.bytes,
    },
    Family {
        name: "backend_new_flows",
        help: "New flows scheduled to the backend",
        kind: Kind::Counter,
        value: |b, _| b.new_flows,
    },
    Family {
        name: "backend_active_connections",
        help: "Open connections on the backend (counted by the data plane)",
        kind: Kind::Gauge,
        value: |b, _| super::gauge(b.active_conns).unsigned_abs(),
    },
    Family {
        name: "backend_up",
        help: "1 when the backend passes its health check (or has none), 0 when it is down",
        kind: Kind::Gauge,
        value: |b, health| u64::from(health.up(b)),
    },
    Family {
        name: "backend_draining",
        help: "1 when the backend takes no new flows (draining or weight 0)",
        kind: Kind::Gauge,
        value: |b, _| u64::from(b.state == BackendMapState::Draining),
    },
    Family {
        name: "backend_weight",
        help: "Configured weight",
        kind: Kind::Gauge,
        value: |b, _| u64::from(b.weight),
    },
];

/// Appends every per-backend family of `status` to `out`.
pub(super) fn encode(out: &mut String, status: &Status, daemon: &DaemonReport) -> std::fmt::Result {
    let down: HashSet<(&str, SocketAddr)> = (daemon.health.down.iter())
        .map(|d| (d.service.as_str(), d.backend))
        .collect();
    let rows: usize = status.services.iter().map(|s| s.backends.len()).sum();
    out.reserve(rows * FAMILIES.len() * 80);
    for family in &FAMILIES {
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        writeln!(out, "# HELP lb_{} {}", family.name, family.help)?;
        writeln!(out, "# TYPE lb_{} {kind}", family.name)?;
        let suffix = if family.kind == Kind::Counter {
            "_total"
        } else {
            ""
        };
        for s in &status.services {
            let health = Health {
                down: &down,
                service: &s.name,
            };
            for b in &s.backends {
                out.push_str("lb_");
                out.push_str(family.name);
                out.push_str(suffix);
                out.push_str("{service=\"");
                push_label_value(out, &s.name);
                out.push_str("\",backend=\"");
                push_label_value(out, &b.addr);
                out.push_str("\"} ");
                push_u64(out, (family.value)(b, &health));
                out.push('\n');
            }
        }
    }
    Ok(())
}

/// A label value as OpenMetrics quotes it (`\`, `"` and newlines escaped).
fn push_label_value(out: &mut String, value: &str) {
    if !value.bytes().any(|c| matches!(c, b'\\' | b'"' | b'\n')) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::text::encode as encode_text;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
    use prometheus_client::metrics::MetricType;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::report::{BackendRef, SourceStatus};
    use crate::status::{ServiceStatus, Status};

    /// One backend's series, as the collector that wrote them before held it.
    #[derive(Debug)]
    struct BackendRow {
        service: String,
        backend: String,
        packets: u64,
        bytes: u64,
        new_flows: u64,
        active_conns: i64,
        up: i64,
        draining: i64,
        weight: i64,
    }

    /// A per-backend family: name, help, and its value in a row.
    type Series<T> = (&'static str, &'static str, fn(&BackendRow) -> T);

    /// The collector `backend_series` replaced: what `prometheus-client` itself writes for the rows.
    #[derive(Debug)]
    struct BackendRows(Vec<BackendRow>);

    impl Collector for BackendRows {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
            let counters: [Series<u64>; 3] = [
                ("backend_packets", "Packets sent to the backend", |b| {
                    b.packets
                }),
                ("backend_bytes", "Bytes sent to the backend", |b| b.bytes),
                (
                    "backend_new_flows",
                    "New flows scheduled to the backend",
                    |b| b.new_flows,
                ),
            ];
            for (name, help, value) in counters {
                let mut family =
                    encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for b in &self.0 {
                    let labels = [
                        ("service", b.service.as_str()),
                        ("backend", b.backend.as_str()),
                    ];
                    ConstCounter::new(value(b)).encode(family.encode_family(&labels)?)?;
                }
            }
            let gauges: [Series<i64>; 4] = [
                (
                    "backend_active_connections",
                    "Open connections on the backend (counted by the data plane)",
                    |b| b.active_conns,
                ),
                (
                    "backend_up",
                    "1 when the backend passes its health check (or has none), 0 when it is down",
                    |b| b.up,
                ),
                (
                    "backend_draining",
                    "1 when the backend takes no new flows (draining or weight 0)",
                    |b| b.draining,
                ),
                ("backend_weight", "Configured weight", |b| b.weight),
            ];
            for (name, help, value) in gauges {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for b in &self.0 {
                    let labels = [
                        ("service", b.service.as_str()),
                        ("backend", b.backend.as_str()),
                    ];
                    ConstGauge::new(value(b)).encode(family.encode_family(&labels)?)?;
                }
            }
            Ok(())
        }
    }

    fn rows(status: &Status, daemon: &DaemonReport) -> Vec<BackendRow> {
        let mut rows = Vec::new();
        for s in &status.services {
            rows.extend(s.backends.iter().map(|b| {
                BackendRow {
                    service: s.name.clone(),
                    backend: b.addr.clone(),
                    packets: b.packets,
                    bytes: b.bytes,
                    new_flows: b.new_flows,
                    active_conns: super::super::gauge(b.active_conns),
                    up: i64::from(
                        !b.socket_addr()
                            .is_some_and(|addr| daemon.is_down(&s.name, addr)),
                    ),
                    draining: i64::from(b.state == BackendMapState::Draining),
                    weight: i64::from(b.weight),
                }
            }));
        }
        rows
    }

    fn backend(addr: &str, weight: u32, state: BackendMapState, n: u64) -> BackendStatus {
        BackendStatus {
            id: n as u32,
            addr: addr.to_owned(),
            weight,
            state,
            active_conns: n.wrapping_sub(2),
            packets: n * 1000,
            bytes: n * 100_000,
            new_flows: n,
        }
    }

    fn service(name: &str, backends: Vec<BackendStatus>) -> ServiceStatus {
        ServiceStatus {
            name: name.to_owned(),
            id: 0,
            vip: "198.18.100.1:80".into(),
            scheduler: "maglev".into(),
            generation: 1,
            table_len: 7,
            persistence_timeout_s: 0,
            packets: 0,
            bytes: 0,
            new_flows: 0,
            drops: 0,
            backends,
        }
    }

    #[test]
    fn the_families_are_what_prometheus_client_writes_for_them() {
        let status = Status {
            schema_version: crate::report::SCHEMA_VERSION,
            services: vec![
                service(
                    "web",
                    vec![
                        backend("198.18.2.11:80", 2, BackendMapState::Active, 1),
                        backend("198.18.2.12:80", 0, BackendMapState::Draining, 2),
                        backend("198.18.2.13:80", 1, BackendMapState::Down, 3),
                    ],
                ),
                service(
                    "odd\\\"name\n",
                    vec![backend(
                        "[2001:db8::11]:443",
                        65_535,
                        BackendMapState::Active,
                        0,
                    )],
                ),
                service("empty", Vec::new()),
            ],
            counters: Default::default(),
            flows: 0,
            flow_table_capacity: 1024,
            daemon: None,
            attached: Vec::new(),
            manager_pid: None,
            unmanaged_since_unix_ms: None,
        };
        let mut daemon = crate::report::tests::report(SourceStatus::Zookeeper(
            crate::report::tests::zk_status(),
        ));
        for (service, backend) in [("web", "198.18.2.13:80"), ("other", "198.18.2.11:80")] {
            daemon.health.down.push(BackendRef {
                service: service.into(),
                backend: backend.parse().unwrap(),
            });
        }
        let mut written = String::new();
        encode(&mut written, &status, &daemon).unwrap();
        let mut reference = Registry::with_prefix("lb");
        reference.register_collector(Box::new(BackendRows(rows(&status, &daemon))));
        let mut want = String::new();
        encode_text(&mut want, &reference).unwrap();
        assert_eq!(written + "# EOF\n", want);
        assert!(want.contains("lb_backend_up{service=\"web\",backend=\"198.18.2.13:80\"} 0\n"));
    }
}
