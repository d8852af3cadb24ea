//! Load from the client namespace: `wrk`, time-bounded, and what its summary says.

use std::time::Duration;

use anyhow::{Context as _, bail};
use lb_tests::lab::cmd;

/// Seconds a wrk run may take past its `-d` before it is killed.
const WRK_GRACE_S: u64 = 15;

/// What one `wrk` run does.
#[derive(Clone, Debug)]
pub struct WrkRun {
    pub url: String,
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
    /// `Connection: close` on every request: each request is a new TCP connection.
    pub close: bool,
}

/// The summary of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub per_second: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

impl WrkRun {
    /// Runs `wrk` in `netns` (bounded by its own `-d` and `--timeout`).
    pub fn run_in(&self, netns: &str) -> anyhow::Result<WrkResult> {
        let threads = self.threads.to_string();
        let connections = self.connections.to_string();
        let secs = self.duration.as_secs().max(1);
        let duration = format!("{secs}s");
        // wrk ends after `-d`; `timeout` kills it should it hang (connect/read stuck past that).
        let limit = format!("{}s", secs + WRK_GRACE_S);
        let mut args = vec![
            "--signal=KILL",
            &limit,
            "wrk",
            "-t",
            &threads,
            "-c",
            &connections,
            "-d",
            &duration,
            "--timeout",
            "2s",
        ];
        if self.close {
            args.extend(["-H", "Connection: close"]);
        }
        args.push(&self.url);
        let out = cmd::in_netns(netns, "timeout", &args)
            .with_context(|| format!("wrk {} in {netns}", args.join(" ")))?;
        parse_summary(&out).with_context(|| format!("reading wrk's summary:\n{out}"))
    }
}

/// Reads `N requests in …`, `Requests/sec: R`, `Socket errors: connect a, read b, write c, timeout
/// d` and `Non-2xx or 3xx responses: n` from wrk's output.
pub fn parse_summary(out: &str) -> anyhow::Result<WrkResult> {
    let mut result = WrkResult::default();
    let mut saw_requests = false;
    let mut saw_rate = false;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            result.per_second = rest
                .trim()
                .parse()
                .with_context(|| format!("bad rate in {line:?}"))?;
            saw_rate = true;
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            result.requests = n
                .trim()
                .parse()
                .with_context(|| format!("bad count in {line:?}"))?;
            saw_requests = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let n = part.split_whitespace().last().unwrap_or_default();
                result.errors += n
                    .parse::<u64>()
                    .with_context(|| format!("bad count in {line:?}"))?;
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.errors += rest
                .trim()
                .parse::<u64>()
                .with_context(|| format!("bad count in {line:?}"))?;
        }
    }
    if !saw_requests || !saw_rate {
        bail!("no `N requests in` or `Requests/sec:` line");
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 5s test @ http://198.18.100.1/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.01ms    1.20ms  20.00ms   80.00%
    Req/Sec     5.00k   200.00     6.00k    70.00%
  50123 requests in 5.00s, 7.65MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  10024.60
Transfer/sec:      1.53MB
";

    #[test]
    fn reads_counts_rate_and_errors() {
        let r = parse_summary(SAMPLE).expect("parses");
        assert_eq!(r.requests, 50123);
        assert!((r.per_second - 10024.6).abs() < 1e-6);
        assert_eq!(r.errors, 6);
    }

    #[test]
    fn a_summary_without_a_rate_is_an_error() {
        assert!(parse_summary("  10 requests in 1.00s, 1KB read\n").is_err());
    }
}
