//! `bpf_fib_lookup` refuses to route packets received on an interface that does not forward
//! (`BPF_FIB_LKUP_RET_FWD_DISABLED`, counted as `drop_no_route`), so the balancer's interface
//! must forward IPv4 and IPv6.

use std::{fs, io};

use super::DataplaneError;

/// Turns on IPv4 and IPv6 forwarding of `iface` (a no-op when already on).
pub(crate) fn enable(iface: &str) -> Result<(), DataplaneError> {
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{iface}/forwarding");
        let current = fs::read_to_string(&path).map_err(|e| error(iface, &path, e))?;
        if current.trim() != "1" {
            fs::write(&path, "1").map_err(|e| error(iface, &path, e))?;
            tracing::info!(
                iface,
                family,
                "enabled forwarding (bpf_fib_lookup needs it on the balancer's interface)"
            );
        }
    }
    Ok(())
}

fn error(iface: &str, path: &str, e: io::Error) -> DataplaneError {
    DataplaneError::Forwarding {
        iface: iface.to_string(),
        path: path.to_string(),
        source: e,
    }
}
