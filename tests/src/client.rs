//! Client-side helpers that drive real TCP connections to a VIP. Run them inside the client namespace
//! with [`crate::Lab::in_client`]; every network operation has a timeout, and failures are counted or
//! returned, never panicked.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

/// Timeout of every connect, read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound of the worker threads of [`spread`].
pub const MAX_CONCURRENCY: usize = 64;
/// How many failure messages a [`Spread`] keeps.
const KEPT_FAILURES: usize = 5;

/// Where the connections of a [`spread`] went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spread {
    /// Connections per backend name (what the backend's server greeted with).
    pub per_backend: BTreeMap<String, usize>,
    /// Connections that failed (connect, read or an empty greeting).
    pub failures: usize,
    /// The first few failures, for the test's message.
    pub failure_samples: Vec<String>,
}

impl Spread {
    /// Connections that reached a backend.
    pub fn succeeded(&self) -> usize {
        self.per_backend.values().sum()
    }

    /// Connections that reached `backend`.
    pub fn count(&self, backend: &str) -> usize {
        self.per_backend.get(backend).copied().unwrap_or(0)
    }

    /// `backend`'s share of the successful connections (0 when none succeeded).
    pub fn share(&self, backend: &str) -> f64 {
        let total = self.succeeded();
        if total == 0 {
            0.0
        } else {
            self.count(backend) as f64 / total as f64
        }
    }

    fn record(&mut self, result: anyhow::Result<String>) {
        match result {
            Ok(name) => *self.per_backend.entry(name).or_default() += 1,
            Err(e) => {
                self.failures += 1;
                if self.failure_samples.len() < KEPT_FAILURES {
                    self.failure_samples.push(format!("{e:#}"));
                }
            }
        }
    }
}

/// Opens `n` connections to `vip` (at most `concurrency` at a time), reads each greeting (the
/// backend's name) and closes the connection. Each connection uses a fresh source port.
pub fn spread(vip: SocketAddr, n: usize, concurrency: usize) -> Spread {
    let next = AtomicUsize::new(0);
    let result = Mutex::new(Spread::default());
    let workers = concurrency.clamp(1, MAX_CONCURRENCY).min(n.max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut local = Spread::default();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    local.record(greeting(vip));
                }
                let mut all = result
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (name, count) in local.per_backend {
                    *all.per_backend.entry(name).or_default() += count;
                }
                all.failures += local.failures;
                let room = KEPT_FAILURES.saturating_sub(all.failure_samples.len());
                all.failure_samples
                    .extend(local.failure_samples.into_iter().take(room));
            });
        }
    });
    result
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection: connect, read the greeting line, close.
fn greeting(vip: SocketAddr) -> anyhow::Result<String> {
    let (_, name) = connect(vip)?;
    Ok(name)
}

fn connect(vip: SocketAddr) -> anyhow::Result<(BufReader<TcpStream>, String)> {
    let stream = TcpStream::connect_timeout(&vip, IO_TIMEOUT)
        .with_context(|| format!("connect to {vip}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let mut reader = BufReader::new(stream);
    let name =
        read_line(&mut reader).with_context(|| format!("greeting from {vip} (local {local})"))?;
    ensure!(
        !name.is_empty(),
        "empty greeting from {vip} (local {local})"
    );
    Ok((reader, name))
}

fn read_line(reader: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut line = String::new();
    let n = reader.read_line(&mut line)?;
    ensure!(n > 0, "connection closed");
    ensure!(line.ends_with('\n'), "incomplete line {line:?}");
    Ok(line.trim_end().to_string())
}

/// A connection kept open to check that it stays on its backend.
#[derive(Debug)]
pub struct HeldConn {
    reader: BufReader<TcpStream>,
    backend: String,
    local: SocketAddr,
    pings: u64,
}

impl HeldConn {
    /// Opens a connection and reads its greeting.
    pub fn open(vip: SocketAddr) -> anyhow::Result<HeldConn> {
        let (reader, backend) = connect(vip)?;
        let local = reader.get_ref().local_addr()?;
        Ok(HeldConn {
            reader,
            backend,
            local,
            pings: 0,
        })
    }

    /// The backend that greeted this connection.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends a line and returns the name of the backend that echoed it.
    pub fn ping(&mut self) -> anyhow::Result<String> {
        self.pings += 1;
        let payload = format!("ping {}", self.pings);
        let local = self.local;
        self.reader
            .get_mut()
            .write_all(format!("{payload}\n").as_bytes())
            .with_context(|| format!("send on held connection {local}"))?;
        let line = read_line(&mut self.reader)
            .with_context(|| format!("echo on held connection {local}"))?;
        let Some((name, echoed)) = line.split_once(' ') else {
            bail!("held connection {local}: malformed echo {line:?}");
        };
        ensure!(
            echoed == payload,
            "held connection {local}: sent {payload:?}, got back {echoed:?}"
        );
        Ok(name.to_string())
    }
}

/// Opens `n` connections to `vip` one after another and keeps them open; fails on the first failure.
pub fn hold(vip: SocketAddr, n: usize) -> anyhow::Result<Vec<HeldConn>> {
    (0..n)
        .map(|i| HeldConn::open(vip).with_context(|| format!("held connection {i} of {n}")))
        .collect()
}

/// How many of `conns` each backend greeted.
pub fn held_per_backend(conns: &[HeldConn]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in conns {
        *out.entry(c.backend().to_string()).or_default() += 1;
    }
    out
}

/// What a [`ContinuousLoad`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Connections held open for the whole run.
    pub held: usize,
    /// Held connections that failed (a send or echo failed), each counted once.
    pub broken: usize,
    /// Held connections answered by another backend than the one that greeted them.
    pub moved: usize,
    /// Rounds in which every held connection was pinged.
    pub rounds: usize,
    /// New connections opened meanwhile, and how many of them failed.
    pub new_conns: usize,
    pub new_failures: usize,
    /// The first few failures, for the test's message.
    pub failure_samples: Vec<String>,
}

/// Traffic that goes on while a test does something to the load balancer: `held` connections
/// opened at the start and pinged in rounds, plus a few new connections per round. Runs on its own
/// thread in a network namespace until [`finish`](Self::finish) (or `max` passes).
pub struct ContinuousLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    rounds: std::sync::Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<anyhow::Result<LoadReport>>,
}

/// New connections opened per round of a [`ContinuousLoad`].
const NEW_PER_ROUND: usize = 2;
/// Pause between rounds of a [`ContinuousLoad`].
const ROUND_PAUSE: Duration = Duration::from_millis(20);

impl ContinuousLoad {
    /// Opens `held` connections to `vip` from inside `netns` (failing if any cannot be opened),
    /// then keeps the traffic going.
    pub fn start(
        netns: &str,
        vip: SocketAddr,
        held: usize,
        max: Duration,
    ) -> anyhow::Result<ContinuousLoad> {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let netns = netns.to_owned();
        let (stop2, rounds2) = (stop.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            crate::lab::run_in_netns(&netns, || {
                let conns = hold(vip, held);
                let _ = opened_tx.send(conns.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")));
                drive(conns?, &stop2, &rounds2, vip, max)
            })?
        });
        match opened_rx.recv_timeout(IO_TIMEOUT * (held as u32 + 1)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("opening the held connections: {e}"),
            Err(_) => bail!("opening {held} held connections to {vip} took too long"),
        }
        Ok(ContinuousLoad {
            stop,
            rounds,
            thread,
        })
    }

    /// Rounds completed so far (to wait until traffic has flowed over an event).
    pub fn rounds(&self) -> usize {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Stops the traffic and returns what it saw.
    pub fn finish(self) -> anyhow::Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(report) => report,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn drive(
    mut conns: Vec<HeldConn>,
    stop: &std::sync::atomic::AtomicBool,
    rounds: &AtomicUsize,
    vip: SocketAddr,
    max: Duration,
) -> anyhow::Result<LoadReport> {
    let started = std::time::Instant::now();
    let mut report = LoadReport {
        held: conns.len(),
        ..Default::default()
    };
    let mut alive = vec![true; conns.len()];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < max {
        for (conn, alive) in conns.iter_mut().zip(&mut alive) {
            if !*alive {
                continue;
            }
            match conn.ping() {
                Ok(name) if name == conn.backend() => {}
                Ok(name) => {
                    *alive = false;
                    report.moved += 1;
                    report.note(format!(
                        "{} moved from {} to {name}",
                        conn.local, conn.backend
                    ));
                }
                Err(e) => {
                    *alive = false;
                    report.broken += 1;
                    report.note(format!("{e:#}"));
                }
            }
        }
        for _ in 0..NEW_PER_ROUND {
            report.new_conns += 1;
            if let Err(e) = greeting(vip) {
                report.new_failures += 1;
                report.note(format!("new connection: {e:#}"));
            }
        }
        report.rounds += 1;
        rounds.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(ROUND_PAUSE);
    }
    Ok(report)
}

impl LoadReport {
    fn note(&mut self, failure: String) {
        if self.failure_samples.len() < KEPT_FAILURES {
            self.failure_samples.push(failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_counts_failures_instead_of_panicking() {
        // Nothing listens on this loopback port.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let s = spread(addr, 5, 2);
        assert_eq!(s.failures, 5);
        assert_eq!(s.succeeded(), 0);
        assert_eq!(s.failure_samples.len(), 5);
    }

    #[test]
    fn spread_and_hold_against_a_loopback_greeter() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            // 6 greetings for spread, then one held connection echoing two lines.
            for _ in 0..6 {
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(b"b7\n").unwrap();
            }
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"b9\n").unwrap();
            let mut r = BufReader::new(s);
            for _ in 0..2 {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                w.write_all(format!("b9 {line}").as_bytes()).unwrap();
            }
        });
        let s = spread(addr, 6, 3);
        assert_eq!(s.count("b7"), 6, "{s:?}");
        assert_eq!(s.failures, 0);
        assert!((s.share("b7") - 1.0).abs() < f64::EPSILON);
        let mut held = hold(addr, 1).unwrap();
        assert_eq!(held[0].backend(), "b9");
        assert_eq!(held[0].ping().unwrap(), "b9");
        assert_eq!(held[0].ping().unwrap(), "b9");
        assert_eq!(held_per_backend(&held).get("b9"), Some(&1));
        server.join().unwrap();
    }
}
