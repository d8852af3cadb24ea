//! `lb top`: the `lb status` table refreshed every interval with per-second rates, like
//! `ipvsadm -L -n --rate`: connections (new flows), packets and bytes per second per service and
//! backend, next to active connections and state.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::dataplane::MapsView;
use crate::status::{Status, collect};

/// Cumulative numbers of one row (a service or a backend).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Totals {
    new_flows: u64,
    packets: u64,
    bytes: u64,
}

/// Per-second rates of one row.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub conns_per_s: f64,
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
}

/// Rows keyed by `service` or `service/backend`.
fn totals(s: &Status) -> BTreeMap<String, Totals> {
    let mut out = BTreeMap::new();
    for svc in &s.services {
        out.insert(
            svc.name.clone(),
            Totals {
                new_flows: svc.new_flows,
                packets: svc.packets,
                bytes: svc.bytes,
            },
        );
        for b in &svc.backends {
            out.insert(
                format!("{}/{}", svc.name, b.addr),
                Totals {
                    new_flows: b.new_flows,
                    packets: b.packets,
                    bytes: b.bytes,
                },
            );
        }
    }
    out
}

/// Rates between two snapshots `elapsed` apart (pure; a row that is new or whose counters went
/// backwards — a backend id reused — starts at 0).
fn rates(
    before: &BTreeMap<String, Totals>,
    after: &BTreeMap<String, Totals>,
    elapsed: Duration,
) -> BTreeMap<String, Rates> {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let per_s = |a: u64, b: u64| b.checked_sub(a).map_or(0.0, |d| d as f64 / secs);
    after
        .iter()
        .map(|(key, now)| {
            let then = before.get(key).copied().unwrap_or(*now);
            let r = Rates {
                conns_per_s: per_s(then.new_flows, now.new_flows),
                packets_per_s: per_s(then.packets, now.packets),
                bytes_per_s: per_s(then.bytes, now.bytes),
            };
            (key.clone(), r)
        })
        .collect()
}

/// One frame of the table.
fn render(
    s: &Status,
    rates: &BTreeMap<String, Rates>,
    counter_rates: &BTreeMap<String, f64>,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<44} {:<9} {:>6} {:>9} {:>10} {:>10} {:>12}",
        "SERVICE / -> BACKEND", "STATE", "WEIGHT", "ACTCONN", "CPS", "PPS", "BPS"
    );
    let row = |o: &mut String, name: &str, state: &str, weight: String, conns: String, r: Rates| {
        let _ = writeln!(
            o,
            "{name:<44} {state:<9} {weight:>6} {conns:>9} {:>10.1} {:>10.1} {:>12.0}",
            r.conns_per_s, r.packets_per_s, r.bytes_per_s
        );
    };
    for svc in &s.services {
        let r = rates.get(&svc.name).copied().unwrap_or_default();
        let conns: u64 = svc.backends.iter().map(|b| b.active_conns).sum();
        let title = format!("{} {} {}", svc.name, svc.vip, svc.scheduler);
        row(&mut o, &title, "", String::new(), conns.to_string(), r);
        for b in &svc.backends {
            let r = rates
                .get(&format!("{}/{}", svc.name, b.addr))
                .copied()
                .unwrap_or_default();
            row(
                &mut o,
                &format!("  -> {}", b.addr),
                b.state.name(),
                b.weight.to_string(),
                b.active_conns.to_string(),
                r,
            );
        }
    }
    let _ = writeln!(o, "\nflows in table: {}", s.flows);
    let busy: Vec<String> = counter_rates
        .iter()
        .filter(|(_, r)| **r > 0.0)
        .map(|(name, r)| format!("{name} {r:.1}/s"))
        .collect();
    if !busy.is_empty() {
        let _ = writeln!(o, "data plane: {}", busy.join(", "));
    }
    o
}

fn counter_totals(s: &Status) -> BTreeMap<String, u64> {
    s.counters.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// Prints `count` frames (forever without one), `interval` apart.
pub fn run(pin_dir: &Path, interval: Duration, count: Option<u64>) -> anyhow::Result<()> {
    let maps = MapsView::open_pinned(pin_dir)?;
    let read = || {
        collect(&maps)
            .with_context(|| format!("reading the maps pinned under {}", pin_dir.display()))
    };
    let clear = std::io::stdout().is_terminal();
    let mut before = read()?;
    let mut taken = Instant::now();
    let mut frames = 0u64;
    while count.is_none_or(|n| frames < n) {
        std::thread::sleep(interval);
        let now = read()?;
        let elapsed = taken.elapsed();
        taken = Instant::now();
        let secs = elapsed.as_secs_f64().max(1e-3);
        let (c0, c1) = (counter_totals(&before), counter_totals(&now));
        let counter_rates = c1
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(c0.get(k).copied().unwrap_or(*v)) as f64 / secs,
                )
            })
            .collect();
        let frame = render(
            &now,
            &rates(&totals(&before), &totals(&now), elapsed),
            &counter_rates,
        );
        let mut out = std::io::stdout().lock();
        if clear {
            // Home and clear, so the table refreshes in place.
            write!(out, "\x1b[H\x1b[2J")?;
        } else if frames > 0 {
            writeln!(out, "---")?;
        }
        write!(out, "{frame}")?;
        out.flush()?;
        before = now;
        frames += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(new_flows: u64, packets: u64, bytes: u64) -> Totals {
        Totals {
            new_flows,
            packets,
            bytes,
        }
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        let before: BTreeMap<String, Totals> = [
            ("web".to_owned(), t(10, 100, 10_000)),
            ("web/b".to_owned(), t(50, 50, 50)),
        ]
        .into();
        let after: BTreeMap<String, Totals> = [
            ("web".to_owned(), t(30, 500, 30_000)),
            // Counters went backwards (the id was reused): 0, not a huge number.
            ("web/b".to_owned(), t(0, 0, 0)),
            ("new".to_owned(), t(5, 5, 5)),
        ]
        .into();
        let r = rates(&before, &after, Duration::from_secs(2));
        assert_eq!(
            r["web"],
            Rates {
                conns_per_s: 10.0,
                packets_per_s: 200.0,
                bytes_per_s: 10_000.0
            }
        );
        assert_eq!(r["web/b"], Rates::default());
        assert_eq!(r["new"], Rates::default());
    }
}
