//! `lb status`: what the data plane is doing, read from the pinned maps (no daemon needed), plus
//! the running daemon's report (see `report`).
//!
//! `lb status --json` prints one [`Status`] document: `schema_version` ([`SCHEMA_VERSION`]),
//! `services` (each with its `backends`), `counters` (every data-plane counter by name), `flows`, and
//! `daemon` (a [`DaemonView`]; absent when no daemon writes a status file for these pins). Readers
//! decode it with [`Status::from_json`], which refuses other versions and missing fields.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use lb_common::{
    BACKEND_F_DOWN, BACKEND_F_DRAINING, BACKEND_F_VALID, Scheduler, ServiceEntry, ServiceMeta,
    VipKey,
};
use serde::{Deserialize, Serialize};

use crate::dataplane::MapsView;
use crate::report::{self, DaemonView, ReportError, SCHEMA_VERSION};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    pub services: Vec<ServiceStatus>,
    /// Every data-plane counter, by name (`drop_*` are the drop reasons).
    pub counters: BTreeMap<String, u64>,
    /// Entries in the flow table (established, half-open and closing).
    pub flows: usize,
    /// Connections the flow table is rated for (`--flow-table-size`); beyond it the oldest flow of a full bucket pair is evicted.
    #[serde(default)]
    pub flow_table_capacity: u32,
    /// What the running daemon reports; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonView>,
    /// Interfaces whose balancer link is pinned here: the program runs there, daemon or not.
    #[serde(default)]
    pub attached: Vec<String>,
    /// The pid of the `lb` managing these pins (holding their lock); `None`: none does.
    #[serde(default)]
    pub manager_pid: Option<u32>,
    /// Attached with no daemon managing it since about then (the last daemon's last report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmanaged_since_unix_ms: Option<u64>,
}

impl Status {
    /// Decodes `lb status --json`.
    pub fn from_json(text: &str) -> Result<Status, ReportError> {
        report::decode("`lb status --json`", text)
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.services.iter().find(|s| s.name == name)
    }

    /// A backend of a service, by address.
    pub fn backend(&self, service: &str, addr: SocketAddr) -> Option<&BackendStatus> {
        self.service(service)?
            .backends
            .iter()
            .find(|b| b.socket_addr() == Some(addr))
    }

    /// A counter by name; `None` when the data plane has no counter of that name.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters.get(name).copied()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub id: u32,
    pub vip: String,
    pub scheduler: String,
    pub generation: u32,
    pub table_len: u32,
    pub persistence_timeout_s: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub id: u32,
    /// `IP:PORT` (`<family N>` for an entry of unknown family).
    pub addr: String,
    pub weight: u32,
    pub state: BackendMapState,
    pub active_conns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl BackendStatus {
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr.parse().ok()
    }
}

/// A backend's state in the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendMapState {
    Active,
    /// No new flows (draining, or weight 0).
    Draining,
    /// Failed its health check.
    Down,
}

impl BackendMapState {
    pub fn name(self) -> &'static str {
        match self {
            BackendMapState::Active => "active",
            BackendMapState::Draining => "draining",
            BackendMapState::Down => "down",
        }
    }
}

pub(crate) fn socket_addr(words: [u32; 4], family: u8, port_be: u16) -> String {
    let port = u16::from_be(port_be);
    match lb_common::addr::from_words(words, family) {
        Some(IpAddr::V4(ip)) => v4_socket_addr(ip, port),
        Some(ip) => SocketAddr::new(ip, port).to_string(),
        None => format!("<family {family}>"),
    }
}

/// What `SocketAddrV4`'s `Display` writes, without the formatting machinery: at 100,000 backends
/// `to_string` was a sixth of `lb status` and of a scrape.
fn v4_socket_addr(ip: Ipv4Addr, port: u16) -> String {
    let mut out = String::with_capacity(21);
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_u64(&mut out, u64::from(octet));
    }
    out.push(':');
    push_u64(&mut out, u64::from(port));
    out
}

/// `v` in decimal (`write!` costs several times more).
pub(crate) fn push_u64(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

fn clamp_conns(n: u64) -> u64 {
    if (n as i64) < 0 { 0 } else { n }
}

/// The service name a `ServiceMeta` holds (NUL-padded).
pub(crate) fn meta_name(meta: &ServiceMeta) -> String {
    let len = meta
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(meta.name.len());
    String::from_utf8_lossy(&meta.name[..len]).into_owned()
}

fn vip_string(k: &VipKey) -> String {
    socket_addr(k.addr, k.family, k.port_be)
}

/// Reads everything `lb status` shows.
pub fn collect(maps: &MapsView) -> anyhow::Result<Status> {
    let mut status = collect_without_flows(maps)?;
    status.flows = maps.flow_count()?;
    Ok(status)
}

/// Everything but the flow count, which walks the whole flow table (the metrics take it from the
/// sweeper instead).
pub fn collect_without_flows(maps: &MapsView) -> anyhow::Result<Status> {
    let capacity = maps.capacity();
    let mut services: Vec<(VipKey, ServiceEntry)> = maps.services()?;
    services.sort_by_key(|(_, e)| e.id);
    // One pass over the backend array, grouped by service.
    let mut backends_by_service: std::collections::BTreeMap<u32, Vec<BackendStatus>> =
        Default::default();
    for slot in maps.backend_slots()? {
        let b = slot.entry;
        if b.flags & BACKEND_F_VALID == 0 {
            continue;
        }
        let state = if b.flags & BACKEND_F_DOWN != 0 {
            BackendMapState::Down
        } else if b.flags & BACKEND_F_DRAINING != 0 || b.weight == 0 {
            BackendMapState::Draining
        } else {
            BackendMapState::Active
        };

        backends_by_service
            .entry(b.service_id)
            .or_default()
            .push(BackendStatus {
                id: slot.id,
                addr: socket_addr(b.addr, b.family, b.port_be),
                weight: b.weight,
                state,
                // A counter wrapped below zero by a sweeper race reads as 0 (the next sweep fixes it).
                active_conns: clamp_conns(slot.conns),
                packets: slot.stats.packets,
                bytes: slot.stats.bytes,
                new_flows: slot.stats.new_flows,
            });
    }
    let metas = maps.all_service_meta()?;
    let all_stats = maps.all_service_stats()?;
    let mut out = Vec::new();
    for (key, e) in services {
        let (Some(meta), Some(stats)) = (metas.get(e.id as usize), all_stats.get(e.id as usize))
        else {
            anyhow::bail!(
                "service entry {} has id {}, beyond the {} services the maps hold: the maps are inconsistent",
                vip_string(&key),
                e.id,
                metas.len()
            );
        };
        out.push(ServiceStatus {
            name: meta_name(meta),
            id: e.id,
            vip: vip_string(&key),
            scheduler: Scheduler::from_u32(e.scheduler)
                .map(|s| s.name().to_string())
                .unwrap_or_else(|| format!("<{}>", e.scheduler)),
            generation: e.generation,
            table_len: e.table_len,
            persistence_timeout_s: e.persist_timeout_s,
            packets: stats.packets,
            bytes: stats.bytes,
            new_flows: stats.new_flows,
            drops: stats.drops,
            backends: backends_by_service.remove(&e.id).unwrap_or_default(),
        });
    }
    let counters = maps
        .counters()?
        .into_iter()
        .map(|(c, n)| (c.name().to_string(), n))
        .collect();
    Ok(Status {
        schema_version: SCHEMA_VERSION,
        services: out,
        counters,
        flows: 0,
        flow_table_capacity: capacity.flow_table_size,
        daemon: None,
        attached: Vec::new(),
        manager_pid: None,
        unmanaged_since_unix_ms: None,
    })
}

pub fn run(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let maps = MapsView::open_pinned(pin_dir)?;
    let mut status = collect(&maps)
        .with_context(|| format!("reading the maps pinned under {}", pin_dir.display()))?;
    status.daemon = match report::read(pin_dir) {
        Ok(daemon) => daemon.map(|r| DaemonView::at(r, SystemTime::now())),
        Err(e) => {
            eprintln!("lb: warning: the daemon's state is not shown: {e}");
            None
        }
    };
    status.attached = crate::dataplane::pinned_links(pin_dir);
    status.manager_pid = crate::owner::holder(pin_dir);
    if !status.attached.is_empty() && status.manager_pid.is_none() {
        status.unmanaged_since_unix_ms = status.daemon.as_ref().map(|d| d.report.written_unix_ms);
    }
    if json {
        // Straight to stdout: at 100,000 backends the document is tens of MB. Indented for a
        // terminal, compact for a pipe (as `ip -j`): indentation doubles the bytes and the time.
        let stdout = std::io::stdout();
        let pretty = stdout.is_terminal();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
        if pretty {
            serde_json::to_writer_pretty(&mut out, &status)?;
        } else {
            serde_json::to_writer(&mut out, &status)?;
        }
        writeln!(out)?;
        out.flush()?;
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// The human-readable table (like `ipvsadm -L -n --stats`).
pub fn render(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    if !s.attached.is_empty() && s.manager_pid.is_none() {
        let since = match s.unmanaged_since_unix_ms {
            Some(t) => format!(
                "since {:.1}s ago (the last daemon's last report)",
                report::unix_ms(SystemTime::now()).saturating_sub(t) as f64 / 1000.0
            ),
            None => "since an unknown time (no daemon report)".to_owned(),
        };
        let _ = writeln!(
            o,
            "UNMANAGED {since}: the program is attached to {} and forwards on the last applied \
             state, but no `lb run` manages it (start one to adopt it, or `lb detach`)",
            s.attached.join(", ")
        );
    } else if let Some(daemon) = &s.daemon {
        o.push_str(&daemon.render());
    }
    let _ = writeln!(
        o,
        "{:<24} {:<28} {:<10} {:>5} {:>12} {:>14} {:>10} {:>8}",
        "SERVICE", "VIP", "SCHEDULER", "GEN", "PACKETS", "BYTES", "NEW FLOWS", "DROPS"
    );
    for svc in &s.services {
        let _ = writeln!(
            o,
            "{:<24} {:<28} {:<10} {:>5} {:>12} {:>14} {:>10} {:>8}",
            svc.name,
            svc.vip,
            svc.scheduler,
            svc.generation,
            svc.packets,
            svc.bytes,
            svc.new_flows,
            svc.drops
        );
        for b in &svc.backends {
            let _ = writeln!(
                o,
                "  -> {:<40} weight {:>5} {:<9} conns {:>7} packets {:>10} new flows {:>8}",
                b.addr,
                b.weight,
                b.state.name(),
                b.active_conns,
                b.packets,
                b.new_flows
            );
        }
    }
    let _ = writeln!(
        o,
        "\nflows in table: {} of {} (--flow-table-size)",
        s.flows, s.flow_table_capacity
    );
    let _ = writeln!(o, "counters:");
    for (name, v) in &s.counters {
        if *v > 0 {
            let _ = writeln!(o, "  {name:<24} {v}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::socket_addr;

    /// The shortcut for IPv4 writes what `SocketAddr`'s `Display` writes, at every digit count.
    #[test]
    fn socket_addresses_read_as_display_writes_them() {
        let v4 = [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(198, 18, 2, 11),
            Ipv4Addr::new(10, 9, 100, 255),
            Ipv4Addr::new(255, 255, 255, 255),
        ];
        let v6 = [
            Ipv6Addr::LOCALHOST,
            "2001:db8::1:0:0:1".parse().expect("an address"),
        ];
        let ips = v4.map(IpAddr::V4).into_iter().chain(v6.map(IpAddr::V6));
        for ip in ips {
            for port in [0u16, 7, 80, 443, 8080, 10000, 65535] {
                let (words, family) = lb_common::addr::to_words(ip);
                assert_eq!(
                    socket_addr(words, family, port.to_be()),
                    SocketAddr::new(ip, port).to_string()
                );
            }
        }
        assert_eq!(socket_addr([0; 4], 9, 0), "<family 9>");
    }
}
