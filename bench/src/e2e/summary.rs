//! From measurements to figures: per mode, the median over the rounds of new connections per
//! second (`Connection: close`) and keep-alive requests per second, their ratios to `direct` and
//! `floor`, CPU per 1,000 connections, and the goals.

use super::cpu::ticks_per_second;
use super::measure::Measurement;
use super::mode::Mode;

/// One mode's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct ModeFigures {
    pub mode: Mode,
    /// Median over the rounds.
    pub conn_per_s: f64,
    pub req_per_s: f64,
    /// Every round's figure, in round order.
    pub conn_rounds: Vec<f64>,
    pub req_rounds: Vec<f64>,
    /// Over the close runs: ms of CPU per 1,000 connections, machine-wide (busy, of it softirq
    /// and system) and the LB namespace's process.
    pub busy_ms_per_kconn: f64,
    pub softirq_ms_per_kconn: f64,
    pub system_ms_per_kconn: f64,
    pub lb_process_ms_per_kconn: Option<f64>,
    /// wrk errors (socket errors + non-2xx) over every run of the mode, and its requests.
    pub errors: u64,
    pub requests: u64,
}

/// Figures of every mode that has measurements, in [`Mode::ALL`] order.
pub fn figures(all: &[Measurement]) -> Vec<ModeFigures> {
    let hz = ticks_per_second();
    Mode::ALL
        .iter()
        .filter_map(|&mode| {
            let of = |close: bool| -> Vec<&Measurement> {
                all.iter()
                    .filter(|m| m.mode == mode && m.close == close)
                    .collect()
            };
            let (close, keep) = (of(true), of(false));
            if close.is_empty() && keep.is_empty() {
                return None;
            }
            let conn_rounds: Vec<f64> = close.iter().map(|m| m.wrk.per_second).collect();
            let req_rounds: Vec<f64> = keep.iter().map(|m| m.wrk.per_second).collect();
            let conns: u64 = close.iter().map(|m| m.wrk.requests).sum();
            let per_kconn = |jiffies: u64| {
                if conns == 0 {
                    0.0
                } else {
                    jiffies as f64 * 1000.0 / hz * 1000.0 / conns as f64
                }
            };
            let lb_jiffies: Option<u64> = close.iter().map(|m| m.lb_process).sum();
            Some(ModeFigures {
                mode,
                conn_per_s: median(&conn_rounds),
                req_per_s: median(&req_rounds),
                busy_ms_per_kconn: per_kconn(close.iter().map(|m| m.machine.busy).sum()),
                softirq_ms_per_kconn: per_kconn(close.iter().map(|m| m.machine.softirq).sum()),
                system_ms_per_kconn: per_kconn(close.iter().map(|m| m.machine.system).sum()),
                lb_process_ms_per_kconn: lb_jiffies.map(per_kconn),
                conn_rounds,
                req_rounds,
                errors: close.iter().chain(&keep).map(|m| m.wrk.errors).sum(),
                requests: close.iter().chain(&keep).map(|m| m.wrk.requests).sum(),
            })
        })
        .collect()
}

/// The median (mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `a / b`, `None` when `b` is 0.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// One goal of the issue and whether this run met it.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub text: String,
    pub measured: Option<f64>,
    pub target: f64,
}

impl Goal {
    pub fn met(&self) -> bool {
        self.measured.is_some_and(|m| m >= self.target)
    }
}

/// The goals for each `lb` mode over three backends: ≥ 0.95 of `floor` on both figures,
/// ≥ 1.5× nftables and ≥ 2.5× HAProxy new connections per second. `lb rr 1 backend` is held to
/// the same 0.95 of `floor` like for like (its path and backend); its lines follow `lb rr`'s.
pub fn goals(figs: &[ModeFigures]) -> Vec<Goal> {
    let get = |mode: Mode| figs.iter().find(|f| f.mode == mode);
    let mut out = Vec::new();
    for lb in [Mode::LbRr, Mode::LbRr1Backend, Mode::LbMaglev] {
        let Some(l) = get(lb) else { continue };
        let mut goal = |text: String, peer: Option<f64>, mine: f64, target: f64| {
            out.push(Goal {
                text,
                measured: peer.and_then(|p| ratio(mine, p)),
                target,
            });
        };
        let like_for_like = if lb.spreads() {
            ""
        } else {
            " (like for like: floor's path and backend 0, not one of the issue's goals)"
        };
        let floor = get(Mode::Floor);
        goal(
            format!("{} conn/s ≥ 0.95 × floor{like_for_like}", lb.name()),
            floor.map(|f| f.conn_per_s),
            l.conn_per_s,
            0.95,
        );
        goal(
            format!(
                "{} keep-alive req/s ≥ 0.95 × floor{like_for_like}",
                lb.name()
            ),
            floor.map(|f| f.req_per_s),
            l.req_per_s,
            0.95,
        );
        // nftables and HAProxy spread over every backend: no peers of a one-backend mode.
        if !lb.spreads() {
            continue;
        }
        goal(
            format!("{} conn/s ≥ 1.5 × nftables", lb.name()),
            get(Mode::Nftables).map(|f| f.conn_per_s),
            l.conn_per_s,
            1.5,
        );
        goal(
            format!("{} conn/s ≥ 2.5 × haproxy", lb.name()),
            get(Mode::Haproxy).map(|f| f.conn_per_s),
            l.conn_per_s,
            2.5,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    fn fig(mode: Mode, conn: f64, req: f64) -> ModeFigures {
        ModeFigures {
            mode,
            conn_per_s: conn,
            req_per_s: req,
            conn_rounds: vec![conn],
            req_rounds: vec![req],
            busy_ms_per_kconn: 0.0,
            softirq_ms_per_kconn: 0.0,
            system_ms_per_kconn: 0.0,
            lb_process_ms_per_kconn: None,
            errors: 0,
            requests: 1,
        }
    }

    #[test]
    fn goals_compare_with_the_peers() {
        let figs = [
            fig(Mode::Floor, 100.0, 100.0),
            fig(Mode::LbRr, 96.0, 90.0),
            fig(Mode::Nftables, 60.0, 80.0),
            fig(Mode::Haproxy, 40.0, 50.0),
        ];
        let g = goals(&figs);
        assert_eq!(g.len(), 4);
        assert!(g[0].met(), "{:?}", g[0]);
        assert!(!g[1].met(), "{:?}", g[1]);
        assert!(g[2].met(), "{:?}", g[2]);
        assert!(!g[3].met(), "{:?}", g[3]);
    }

    #[test]
    fn lb_on_one_backend_is_compared_with_floor_alone_after_lb_rr() {
        let figs = [
            fig(Mode::Floor, 100.0, 200.0),
            fig(Mode::LbRr, 80.0, 170.0),
            fig(Mode::LbMaglev, 82.0, 180.0),
            fig(Mode::LbRr1Backend, 97.0, 180.0),
            fig(Mode::Nftables, 60.0, 80.0),
            fig(Mode::Haproxy, 40.0, 50.0),
        ];
        let g = goals(&figs);
        assert_eq!(g.len(), 10, "{g:#?}");
        // Right after lb rr's four lines, the floor ones alone, labelled as like for like.
        let like: Vec<usize> = (0..g.len())
            .filter(|&i| g[i].text.contains("like for like"))
            .collect();
        assert_eq!(like, [4, 5], "{g:#?}");
        assert!(
            g[4].text
                .starts_with("lb rr 1 backend conn/s ≥ 0.95 × floor")
        );
        assert_eq!((g[4].measured, g[4].met()), (Some(0.97), true));
        assert!(
            g[5].text
                .starts_with("lb rr 1 backend keep-alive req/s ≥ 0.95 × floor")
        );
        assert_eq!((g[5].measured, g[5].met()), (Some(0.9), false));
        // The lines keep their words.
        assert_eq!(g[0].text, "lb rr conn/s ≥ 0.95 × floor");
        assert_eq!(g[6].text, "lb maglev conn/s ≥ 0.95 × floor");
        assert_eq!(g[0].measured, Some(0.8));
    }

    #[test]
    fn lb_on_one_backend_without_floor_measures_nothing() {
        let g = goals(&[fig(Mode::LbRr1Backend, 97.0, 180.0)]);
        assert_eq!(g.len(), 2, "{g:#?}");
        assert!(g.iter().all(|g| g.measured.is_none() && !g.met()));
    }
}
