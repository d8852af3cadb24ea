//! `lb flows`: the flow table, one line per flow (like `ipvsadm -L -c`), read from the pinned maps
//! (no daemon needed): client, VIP and service, backend, state, and how long the flow has been idle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use lb_common::{
    BackendEntry, FLOW_F_CLOSED, FLOW_F_ESTABLISHED, FlowEntry, FlowKey, ServiceMeta, VipKey,
};
use serde::{Deserialize, Serialize};

use crate::dataplane::{MapsView, now_coarse_ns};
use crate::status::{meta_name, socket_addr as addr};

/// One flow as `lb flows` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRow {
    /// `IP:PORT` of the client.
    pub client: String,
    pub vip: String,
    /// The service of the VIP (`None`: no service holds that VIP any more).
    pub service: Option<String>,
    pub backend_id: u32,
    /// `IP:PORT` of the backend (`None`: its entry was released).
    pub backend: Option<String>,
    pub state: FlowState,
    /// Seconds since the flow's last packet (refreshed at most once a second by the program).
    pub idle_s: f64,
}

/// What the XDP program has seen of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// Only the client's SYN so far.
    HalfOpen,
    Established,
    /// The client sent FIN or RST.
    Closed,
}

impl FlowState {
    fn of(e: &FlowEntry) -> FlowState {
        if e.flags & FLOW_F_CLOSED != 0 {
            FlowState::Closed
        } else if e.flags & FLOW_F_ESTABLISHED != 0 {
            FlowState::Established
        } else {
            FlowState::HalfOpen
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FlowState::HalfOpen => "half-open",
            FlowState::Established => "established",
            FlowState::Closed => "closed",
        }
    }
}

/// Which flows to list.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    pub service: Option<String>,
    pub backend: Option<SocketAddr>,
}

/// What the rows are built from: the maps' contents, read once.
pub struct FlowTable {
    pub flows: Vec<(FlowKey, FlowEntry)>,
    pub services: BTreeMap<VipKey, (u32, ServiceMeta)>,
    pub backends: BTreeMap<u32, BackendEntry>,
    /// `CLOCK_MONOTONIC_COARSE` now, in ns (the flows' clock).
    pub now_ns: u64,
}

impl FlowTable {
    pub fn read(maps: &MapsView) -> anyhow::Result<FlowTable> {
        let mut services = BTreeMap::new();
        for (key, entry) in maps.services()? {
            services.insert(key, (entry.id, maps.service_meta(entry.id)?));
        }
        let flows = maps.flows()?;
        let mut backends = BTreeMap::new();
        for (_, f) in &flows {
            if let std::collections::btree_map::Entry::Vacant(v) = backends.entry(f.backend_id)
                && let Ok(b) = maps.backend(f.backend_id)
            {
                v.insert(b);
            }
        }
        Ok(FlowTable {
            flows,
            services,
            backends,
            now_ns: now_coarse_ns(),
        })
    }

    /// The rows `filter` selects, by service, then client. A filter naming a service that no VIP
    /// holds is an error that lists the services there are.
    pub fn rows(&self, filter: &FlowFilter) -> anyhow::Result<Vec<FlowRow>> {
        if let Some(name) = &filter.service {
            let names: Vec<String> = self.services.values().map(|(_, m)| meta_name(m)).collect();
            if !names.contains(name) {
                bail!(
                    "no service {name} in the maps (there are: {})",
                    names.join(", ")
                );
            }
        }
        let mut rows: Vec<FlowRow> = self
            .flows
            .iter()
            .map(|(k, e)| self.row(k, e))
            .filter(|r| filter.service.is_none() || r.service == filter.service)
            .filter(|r| {
                filter
                    .backend
                    .is_none_or(|b| r.backend.as_deref() == Some(&b.to_string()))
            })
            .collect();
        rows.sort_by(|a, b| (&a.service, &a.client).cmp(&(&b.service, &b.client)));
        Ok(rows)
    }

    fn row(&self, k: &FlowKey, e: &FlowEntry) -> FlowRow {
        let vip = VipKey {
            addr: k.dst,
            port_be: k.dport_be,
            proto: k.proto,
            family: k.family,
        };
        FlowRow {
            client: addr(k.src, k.family, k.sport_be),
            vip: addr(k.dst, k.family, k.dport_be),
            service: self.services.get(&vip).map(|(_, m)| meta_name(m)),
            backend_id: e.backend_id,
            backend: self
                .backends
                .get(&e.backend_id)
                .filter(|b| b.flags & lb_common::BACKEND_F_VALID != 0)
                .map(|b| addr(b.addr, b.family, b.port_be)),
            state: FlowState::of(e),
            idle_s: self.now_ns.saturating_sub(e.last_seen_ns) as f64 / 1e9,
        }
    }
}

pub fn run(pin_dir: &Path, filter: &FlowFilter, json: bool) -> anyhow::Result<()> {
    let maps = MapsView::open_pinned(pin_dir)?;
    let table = FlowTable::read(&maps)
        .with_context(|| format!("reading the flow table pinned under {}", pin_dir.display()))?;
    let rows = table.rows(filter)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render(&rows));
    }
    Ok(())
}

/// The table (like `ipvsadm -L -c -n`).
pub fn render(rows: &[FlowRow]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<16} {:<46} {:<46} {:<46} {:<11} {:>8}",
        "SERVICE", "CLIENT", "VIP", "BACKEND", "STATE", "IDLE"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:<16} {:<46} {:<46} {:<46} {:<11} {:>7.1}s",
            r.service.as_deref().unwrap_or("-"),
            r.client,
            r.vip,
            r.backend
                .clone()
                .unwrap_or_else(|| format!("<released id {}>", r.backend_id)),
            r.state.name(),
            r.idle_s
        );
    }
    let _ = writeln!(o, "{} flows", rows.len());
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{backend_entry, service_meta};
    use lb_common::{BACKEND_F_VALID, FLOW_F_COUNTED, IPPROTO_TCP};

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn key(client: &str, vip: &str) -> FlowKey {
        let (c, v) = (sa(client), sa(vip));
        let (src, family) = lb_common::addr::to_words(c.ip());
        FlowKey {
            src,
            dst: lb_common::addr::to_words(v.ip()).0,
            sport_be: c.port().to_be(),
            dport_be: v.port().to_be(),
            proto: IPPROTO_TCP,
            family,
            _pad: [0; 2],
        }
    }

    fn table() -> FlowTable {
        let web = crate::model::ServiceSpec::new("web", sa("198.18.100.1:80"));
        let flow = |backend_id, flags, last_seen_ns| FlowEntry {
            backend_id,
            flags,
            last_seen_ns,
        };
        FlowTable {
            flows: vec![
                (
                    key("198.18.0.9:40000", "198.18.100.1:80"),
                    flow(1, FLOW_F_COUNTED | FLOW_F_ESTABLISHED, 7_000_000_000),
                ),
                (
                    key("198.18.0.8:40001", "198.18.100.1:80"),
                    flow(2, 0, 9_500_000_000),
                ),
                (
                    key("198.18.0.7:40002", "198.18.100.9:80"),
                    flow(3, FLOW_F_CLOSED, 10_000_000_000),
                ),
            ],
            services: BTreeMap::from([(web.vip_key(), (0, service_meta(&web)))]),
            backends: BTreeMap::from([
                (
                    1,
                    backend_entry(&sa("198.18.2.11:80"), 0, 1, BACKEND_F_VALID),
                ),
                (
                    2,
                    backend_entry(&sa("198.18.2.12:80"), 0, 1, BACKEND_F_VALID),
                ),
            ]),
            now_ns: 10_000_000_000,
        }
    }

    #[test]
    fn rows_name_service_backend_state_and_idle_time_sorted_and_filtered() {
        let t = table();
        let all = t.rows(&FlowFilter::default()).expect("rows");
        let summary: Vec<(Option<&str>, &str, Option<&str>, FlowState)> = all
            .iter()
            .map(|r| {
                (
                    r.service.as_deref(),
                    r.client.as_str(),
                    r.backend.as_deref(),
                    r.state,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (None, "198.18.0.7:40002", None, FlowState::Closed),
                (
                    Some("web"),
                    "198.18.0.8:40001",
                    Some("198.18.2.12:80"),
                    FlowState::HalfOpen
                ),
                (
                    Some("web"),
                    "198.18.0.9:40000",
                    Some("198.18.2.11:80"),
                    FlowState::Established
                ),
            ]
        );
        assert_eq!(all[2].idle_s, 3.0);
        let web = FlowFilter {
            service: Some("web".into()),
            ..Default::default()
        };
        assert_eq!(t.rows(&web).expect("rows").len(), 2);
        let one = FlowFilter {
            backend: Some(sa("198.18.2.11:80")),
            ..Default::default()
        };
        let rows = t.rows(&one).expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].client, "198.18.0.9:40000");
        let text = render(&rows);
        assert!(
            text.contains("established") && text.ends_with("1 flows\n"),
            "{text}"
        );
        let err = t
            .rows(&FlowFilter {
                service: Some("api".into()),
                ..Default::default()
            })
            .expect_err("no such service");
        assert!(err.to_string().contains("there are: web"), "{err}");
    }
}
