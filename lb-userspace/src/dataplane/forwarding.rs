//! `bpf_fib_lookup` refuses to route packets received on an interface that does not forward
//! (`BPF_FIB_LKUP_RET_FWD_DISABLED`, counted as `drop_no_route`), so the balancer's interface
//! must forward IPv4 and IPv6. The values found before are recorded (`record_path`, outside bpffs,
//! which holds no plain files) before they are changed, so `lb detach` restores them even after a
//! daemon was killed; a record already there (an earlier run's) keeps the first values.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::DataplaneError;

/// Where the sysctl values `enable` replaced are kept: `/sys/fs/bpf/lb` →
/// `/run/lb/_sys_fs_bpf_lb.sysctl` (next to the status file), one `PATH VALUE` line each.
pub fn record_path(pin_dir: &Path) -> PathBuf {
    let name = pin_dir.to_string_lossy().replace('/', "_");
    Path::new("/run/lb").join(format!("{name}.sysctl"))
}

/// Turns on IPv4 and IPv6 forwarding of `iface` (a no-op when already on), first noting the old
/// values in `record` (when given).
pub(crate) fn enable(iface: &str, record: Option<&Path>) -> Result<(), DataplaneError> {
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{iface}/forwarding");
        let current = fs::read_to_string(&path).map_err(|e| error(iface, &path, e))?;
        let current = current.trim();
        if current != "1" {
            if let Some(record) = record {
                remember(record, &path, current)
                    .map_err(|e| error(iface, &record.display().to_string(), e))?;
            }
            fs::write(&path, "1").map_err(|e| error(iface, &path, e))?;
            tracing::info!(
                iface,
                family,
                previous = current,
                "enabled forwarding (bpf_fib_lookup needs it on the balancer's interface; `lb detach` restores it)"
            );
        }
    }
    Ok(())
}

fn remember(record: &Path, path: &str, value: &str) -> io::Result<()> {
    let mut text = match fs::read_to_string(record) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    if parse(&text).iter().any(|(p, _)| p == path) {
        return Ok(());
    }
    text.push_str(&format!("{path} {value}\n"));
    if let Some(dir) = record.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = record.with_extension("sysctl.tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, record)
}

fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, v)| (p.to_owned(), v.trim().to_owned()))
        .collect()
}

/// Writes back every value `enable` recorded for `pin_dir` and removes the record. Failures are
/// logged (the interface may be gone): detaching goes on.
pub fn restore(pin_dir: &Path) {
    let record = record_path(pin_dir);
    let text = match fs::read_to_string(&record) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %record.display(), error = %e, "could not read the recorded sysctls; restore them by hand");
            return;
        }
    };
    for (path, value) in parse(&text) {
        // Only the sysctls `enable` writes: the record is ours, but never write anything else.
        if !(path.starts_with("/proc/sys/net/") && path.ends_with("/forwarding")) {
            tracing::warn!(path, "ignoring an unexpected line of the sysctl record");
            continue;
        }
        match fs::write(&path, &value) {
            Ok(()) => tracing::info!(path, value, "restored"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path, value, error = %e, "could not restore the sysctl"),
        }
    }
    if let Err(e) = fs::remove_file(&record) {
        tracing::warn!(path = %record.display(), error = %e, "could not remove the sysctl record");
    }
}

fn error(iface: &str, path: &str, e: io::Error) -> DataplaneError {
    DataplaneError::Forwarding {
        iface: iface.to_string(),
        path: path.to_string(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keeps_the_first_value_of_each_sysctl() {
        let dir = std::env::temp_dir().join(format!("lb-sysctl-{}", std::process::id()));
        let record = dir.join("x.sysctl");
        remember(&record, "/proc/sys/net/ipv4/conf/eth9/forwarding", "0").unwrap();
        remember(&record, "/proc/sys/net/ipv4/conf/eth9/forwarding", "1").unwrap();
        remember(&record, "/proc/sys/net/ipv6/conf/eth9/forwarding", "0").unwrap();
        let text = fs::read_to_string(&record).unwrap();
        assert_eq!(
            parse(&text),
            vec![
                (
                    "/proc/sys/net/ipv4/conf/eth9/forwarding".to_owned(),
                    "0".to_owned()
                ),
                (
                    "/proc/sys/net/ipv6/conf/eth9/forwarding".to_owned(),
                    "0".to_owned()
                ),
            ]
        );
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            record_path(Path::new("/sys/fs/bpf/lb")),
            Path::new("/run/lb/_sys_fs_bpf_lb.sysctl")
        );
    }
}
