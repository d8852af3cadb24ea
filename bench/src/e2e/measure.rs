//! One measurement: a `wrk` run in the client namespace with the CPU and packet counters read
//! around it, and the checks that the packets took the mode's path.

use super::cpu::{MachineCpu, process_jiffies};
use super::lab::{ActiveMode, BACKENDS, E2eLab};
use super::links::tx_packets;
use super::mode::Mode;
use super::wrk::{WrkResult, WrkRun};

/// What one run did.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub mode: Mode,
    pub close: bool,
    pub wrk: WrkResult,
    /// Machine-wide CPU over the run.
    pub machine: MachineCpu,
    /// CPU of the LB namespace's process (HAProxy, `lb run`), jiffies.
    pub lb_process: Option<u64>,
    /// Packets the router sent toward the LB.
    pub to_lb: u64,
    /// Packets the router sent toward each backend.
    pub to_backends: Vec<u64>,
    /// Packets the `lb` service forwarded (`lb status`), DNATed packets (nftables: one per
    /// connection).
    pub balancer_count: Option<u64>,
}

/// Runs `wrk` once in `mode` and reads the counters around it.
pub fn measure(
    lab: &E2eLab,
    mode: Mode,
    active: &ActiveMode,
    wrk: &WrkRun,
) -> anyhow::Result<Measurement> {
    let router = lab.lab().router_netns();
    let ports = E2eLab::router_ports();
    let balancer_count = || -> anyhow::Result<Option<u64>> {
        Ok(match active {
            ActiveMode::Lb { .. } => Some(lab.lb_service_packets()?),
            ActiveMode::Nftables(nft) => Some(nft.dnat_packets()?),
            _ => None,
        })
    };
    let pkts_before = tx_packets(&router, &ports)?;
    let count_before = balancer_count()?;
    let proc_before = active.lb_process().map(process_jiffies).transpose()?;
    let cpu_before = MachineCpu::read()?;
    let result = wrk.run_in(&lab.lab().client_netns())?;
    let machine = MachineCpu::read()?.since(&cpu_before);
    let proc_after = active.lb_process().map(process_jiffies).transpose()?;
    let count_after = balancer_count()?;
    let pkts_after = tx_packets(&router, &ports)?;
    let delta: Vec<u64> = pkts_after
        .iter()
        .zip(&pkts_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    Ok(Measurement {
        mode,
        close: wrk.close,
        wrk: result,
        machine,
        lb_process: proc_after
            .zip(proc_before)
            .map(|(a, b)| a.saturating_sub(b)),
        to_lb: delta[0],
        to_backends: delta[1..].to_vec(),
        balancer_count: count_after
            .zip(count_before)
            .map(|(a, b)| a.saturating_sub(b)),
    })
}

/// What is wrong with a measurement: packets that did not take the mode's path, a balancer that
/// did not count the connections, no requests at all. Empty: it went through the mode.
pub fn problems(m: &Measurement) -> Vec<String> {
    let mut out = Vec::new();
    let name = m.mode.name();
    let kind = if m.close { "close" } else { "keep-alive" };
    let requests = m.wrk.requests;
    if requests == 0 {
        out.push(format!("{name} ({kind}): wrk completed no request"));
        return out;
    }
    // Every request is at least one client packet toward the VIP; a few stray packets (ARP,
    // neighbour discovery) are not traffic.
    let stray = (requests / 100).max(50);
    if matches!(m.mode, Mode::Direct | Mode::DirectEcmp) {
        if m.to_lb > stray {
            out.push(format!(
                "{name} ({kind}): {} packets went to the LB (at most {stray} expected)",
                m.to_lb
            ));
        }
    } else if m.to_lb < requests {
        out.push(format!(
            "{name} ({kind}): {} packets to the LB for {requests} requests",
            m.to_lb
        ));
    }
    for (i, &sent) in m.to_backends.iter().enumerate() {
        let least = if m.mode.spreads() {
            requests / (2 * BACKENDS as u64)
        } else if i == 0 {
            requests
        } else {
            0
        };
        if sent < least {
            out.push(format!(
                "{name} ({kind}): backend b{i} got {sent} packets for {requests} requests \
                 (at least {least} expected)"
            ));
        }
        if !m.mode.spreads() && i > 0 && sent > stray {
            out.push(format!(
                "{name} ({kind}): backend b{i} got {sent} packets; the mode uses b0 only"
            ));
        }
    }
    if m.mode.lb_scheduler().is_some() && m.balancer_count.is_none() {
        out.push(format!(
            "{name} ({kind}): no `lb status` packet count of the service was read"
        ));
    }
    // `lb` counts every packet (≥ 1 per request), nftables the first packet of each connection.
    if let Some(count) = m.balancer_count
        && (m.close || m.mode != Mode::Nftables)
        && count < requests
    {
        out.push(format!(
            "{name} ({kind}): the balancer counted {count} packets for {requests} requests"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(mode: Mode, to_lb: u64, to_backends: Vec<u64>, count: Option<u64>) -> Measurement {
        Measurement {
            mode,
            close: true,
            wrk: WrkResult {
                requests: 1000,
                per_second: 200.0,
                errors: 0,
            },
            machine: MachineCpu::default(),
            lb_process: None,
            to_lb,
            to_backends,
            balancer_count: count,
        }
    }

    #[test]
    fn a_spread_mode_through_the_lb_passes() {
        assert!(problems(&m(Mode::LbRr, 5000, vec![1700; 3], Some(1000))).is_empty());
    }

    #[test]
    fn lb_on_backend_0_alone_passes() {
        let one = m(Mode::LbRr1Backend, 5000, vec![5000, 3, 0], Some(5000));
        assert!(problems(&one).is_empty(), "{:?}", problems(&one));
    }

    #[test]
    fn lb_1_backend_spreading_over_every_backend_is_caught() {
        let p = problems(&m(Mode::LbRr1Backend, 5000, vec![1700; 3], Some(5000)));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("b1 got 1700 packets; the mode uses b0 only"),
            "{p:?}"
        );
        assert!(
            p[1].contains("b2 got 1700 packets; the mode uses b0 only"),
            "{p:?}"
        );
        // Fewer packets to b0 than requests: not all went there.
        let p = problems(&m(Mode::LbRr1Backend, 5000, vec![900, 0, 0], Some(5000)));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("b0 got 900 packets"), "{p:?}");
    }

    #[test]
    fn lb_1_backend_whose_service_did_not_count_is_caught() {
        let p = problems(&m(Mode::LbRr1Backend, 5000, vec![5000, 0, 0], Some(0)));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("counted 0 packets"), "{p:?}");
        let p = problems(&m(Mode::LbRr1Backend, 5000, vec![5000, 0, 0], None));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("no `lb status` packet count"), "{p:?}");
    }

    #[test]
    fn direct_traffic_through_the_lb_is_caught() {
        let p = problems(&m(Mode::Direct, 3000, vec![3000, 0, 0], None));
        assert_eq!(p.len(), 1, "{p:?}");
    }

    #[test]
    fn floor_on_several_backends_is_caught() {
        let p = problems(&m(Mode::Floor, 3000, vec![1000, 1000, 1000], None));
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn an_lb_that_counted_too_few_connections_is_caught() {
        let p = problems(&m(Mode::LbMaglev, 5000, vec![1700; 3], Some(10)));
        assert_eq!(p.len(), 1, "{p:?}");
    }
}
