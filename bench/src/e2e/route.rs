//! The `direct` path and the HAProxy VIP: a route or an address added for one mode and removed
//! when its guard drops.

use lb_tests::lab::cmd;

/// `ip <what…> add ARGS` in one namespace, deleted (`ip <what…> del ARGS`) on drop.
pub struct IpGuard {
    netns: String,
    object: Vec<String>,
    args: Vec<String>,
}

impl IpGuard {
    /// E.g. `add(router, &["route"], &["198.18.100.1/32", "via", "198.18.2.11"])`.
    pub fn add(netns: &str, object: &[&str], args: &[&str]) -> anyhow::Result<IpGuard> {
        let mut all: Vec<&str> = object.to_vec();
        all.push("add");
        all.extend_from_slice(args);
        cmd::ip(netns, &all)?;
        Ok(IpGuard {
            netns: netns.to_owned(),
            object: object.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
        })
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut all: Vec<&str> = self.object.iter().map(String::as_str).collect();
        all.push("del");
        all.extend(self.args.iter().map(String::as_str));
        if let Err(e) = cmd::ip(&self.netns, &all) {
            eprintln!(
                "e2e: cannot undo `ip {}` in {}: {e:#}",
                all.join(" "),
                self.netns
            );
        }
    }
}
