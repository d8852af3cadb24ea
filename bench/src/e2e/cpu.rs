//! CPU time while a measurement runs: the machine's (`/proc/stat`: every CPU, every namespace) and
//! one process's (`/proc/<pid>/stat`: the LB namespace's HAProxy or `lb run`).
//!
//! Softirq time (where XDP, netfilter and the forwarding of every namespace run) cannot be told
//! apart by namespace, so the machine-wide figures count the whole path: client, router, LB,
//! backends. Their difference to `direct` is what the mode adds.

use anyhow::{Context as _, bail};

/// Jiffies of `/proc/stat`'s `cpu` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineCpu {
    pub user: u64,
    pub system: u64,
    pub softirq: u64,
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
}

impl MachineCpu {
    pub fn read() -> anyhow::Result<MachineCpu> {
        let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        parse_proc_stat(&text)
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &MachineCpu) -> MachineCpu {
        MachineCpu {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            busy: self.busy.saturating_sub(earlier.busy),
        }
    }
}

fn parse_proc_stat(text: &str) -> anyhow::Result<MachineCpu> {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        bail!("/proc/stat has no `cpu` line");
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad /proc/stat line {line:?}"))?;
    // user nice system idle iowait irq softirq steal ...
    if f.len() < 8 {
        bail!(
            "/proc/stat's cpu line has {} fields, not ≥ 8: {line:?}",
            f.len()
        );
    }
    Ok(MachineCpu {
        user: f[0],
        system: f[2],
        softirq: f[6],
        busy: f[0] + f[1] + f[2] + f[5] + f[6] + f[7],
    })
}

/// utime + stime of process `pid` and its reaped children (jiffies).
pub fn process_jiffies(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_pid_stat(&text).with_context(|| format!("{path}: {text:?}"))
}

fn parse_pid_stat(text: &str) -> anyhow::Result<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
    let Some((_, rest)) = text.rsplit_once(')') else {
        bail!("no `)` after the command name");
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime, stime, cutime, cstime are fields 14..=17.
    let field = |n: usize| -> anyhow::Result<u64> {
        f.get(n - 3)
            .with_context(|| format!("no field {n}"))?
            .parse::<u64>()
            .with_context(|| format!("field {n} is not a number"))
    };
    Ok(field(14)? + field(15)? + field(16)? + field(17)?)
}

/// Jiffies per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpu_line() {
        let cpu = parse_proc_stat("cpu  10 1 20 500 3 4 5 6 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n")
            .expect("parses");
        assert_eq!((cpu.user, cpu.system, cpu.softirq), (10, 20, 5));
        assert_eq!(cpu.busy, 10 + 1 + 20 + 4 + 5 + 6);
    }

    #[test]
    fn reads_a_process_with_spaces_in_its_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 0 0 0 0 0 7 8 9 10 20 0 1 0 0 0 0";
        assert_eq!(parse_pid_stat(stat).expect("parses"), 7 + 8 + 9 + 10);
    }
}
