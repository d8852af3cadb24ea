//! The one check that `lb` runs with the privileges it needs (loading XDP programs needs CAP_BPF and
//! CAP_NET_ADMIN; we ask for root rather than try to be clever about capabilities).

/// Why a command that loads XDP programs refused to start.
#[derive(Debug, thiserror::Error)]
#[error("{what} must run as root (it loads XDP programs and pins maps); try `sudo`")]
pub struct NotRoot {
    /// The command or step that needs root (`lb run`, `loading the data plane`).
    pub what: &'static str,
}

/// Checks that the effective user is root.
pub fn require_root(what: &'static str) -> Result<(), NotRoot> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NotRoot { what });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_what_needs_root() {
        let err = NotRoot { what: "lb run" }.to_string();
        assert!(err.starts_with("lb run must run as root"), "{err}");
        // SAFETY: as above.
        let is_root = unsafe { libc::geteuid() } == 0;
        assert_eq!(require_root("lb run").is_ok(), is_root);
    }
}
