//! `lb decap`: the backend side. Strips IPIP / ip6ip6 from packets addressed to one of this host's
//! addresses and hands the inner packet (addressed to the VIP on `lo`) to the stack, so backends work on
//! kernels without the ipip / ip6_tunnel modules.

pub mod check;

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use aya::maps::lpm_trie::Key;
use lb_common::limits::{Capacity, MAX_DECAP_ALLOW_PREFIXES};
use lb_common::{AF_INET, AF_INET6, DecapKey, DecapSrcKey};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::dataplane::{AttachMode, Dataplane, ExistingPins, LoadOptions, MapsView};
use crate::netif;
use crate::privilege;

/// The decap program shares the object with the balancer; its maps are created at the smallest size.
pub const DECAP_CAPACITY: Capacity = Capacity {
    max_services: 1,
    max_backends: 1,
    table_size: lb_common::limits::MAX_BACKENDS_PER_SERVICE,
    flow_table_size: 1,
    persist_table_size: 1,
};

/// Local addresses are re-read this often (addresses added later are accepted too).
const ADDR_REFRESH: Duration = Duration::from_secs(5);

/// An outer source prefix tunnel packets are accepted from (`--allow-src`): `ADDR/LEN`, or a bare
/// address (one host). Host bits must be zero, so a typo cannot silently widen or move the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrcPrefix {
    addr: IpAddr,
    len: u8,
}

impl SrcPrefix {
    /// The prefix of every address of `addr`'s family.
    fn any_of(addr: IpAddr) -> Self {
        Self { addr, len: 0 }
    }

    /// The `LB_DECAP_ALLOW` key of this prefix.
    pub fn trie_key(&self) -> Key<DecapSrcKey> {
        let (family, addr) = match self.addr {
            IpAddr::V4(a) => {
                let mut addr = [0; 16];
                addr[..4].copy_from_slice(&a.octets());
                (AF_INET, addr)
            }
            IpAddr::V6(a) => (AF_INET6, a.octets()),
        };
        Key::new(
            DecapSrcKey::prefix_len(u32::from(self.len)),
            DecapSrcKey { family, addr },
        )
    }
}

impl fmt::Display for SrcPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for SrcPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr_text, len_text) = s.split_once('/').map_or((s, None), |(a, l)| (a, Some(l)));
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            format!("{s:?}: {addr_text:?} is no IPv4 or IPv6 address (expected ADDR/LEN, e.g. 198.18.3.0/24 or 2001:db8:3::/64)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                format!("{s:?}: prefix length {l:?} is not a number from 0 to {max}")
            })?,
        };
        let masked = mask(addr, len);
        if masked != addr {
            return Err(format!(
                "{s:?}: host bits are set after /{len} (the prefix is {masked}/{len})"
            ));
        }
        Ok(Self { addr, len })
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Which outer sources `lb decap` accepts tunnel packets from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrcPolicy(Vec<SrcPrefix>);

/// Why `lb decap`'s source flags cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SrcPolicyError {
    #[error(
        "lb decap needs --allow-src PREFIX (repeatable: the load balancers' outer source addresses, \
         e.g. --allow-src 198.18.3.0/24 --allow-src 2001:db8:3::/64): without it anyone could send \
         IPIP / ip6ip6 packets that reach this backend's services as if from a client. \
         --allow-any-src accepts every source (only where the network already filters tunnel packets)"
    )]
    NoSource,
    #[error(
        "--allow-src and --allow-any-src exclude each other: give the prefixes, or --allow-any-src alone"
    )]
    Both,
    #[error(
        "{given} --allow-src prefixes given, at most {max} fit (use shorter prefixes that cover them)"
    )]
    TooMany { given: usize, max: u32 },
}

impl SrcPolicy {
    /// The policy of the flags `--allow-src` (`prefixes`) and `--allow-any-src` (`any`).
    pub fn from_flags(prefixes: Vec<SrcPrefix>, any: bool) -> Result<Self, SrcPolicyError> {
        match (prefixes.is_empty(), any) {
            (true, false) => Err(SrcPolicyError::NoSource),
            (false, true) => Err(SrcPolicyError::Both),
            (true, true) => Ok(Self(vec![
                SrcPrefix::any_of(IpAddr::V4(0.into())),
                SrcPrefix::any_of(IpAddr::V6(0.into())),
            ])),
            (false, false) if prefixes.len() > MAX_DECAP_ALLOW_PREFIXES as usize => {
                Err(SrcPolicyError::TooMany {
                    given: prefixes.len(),
                    max: MAX_DECAP_ALLOW_PREFIXES,
                })
            }
            (false, false) => Ok(Self(prefixes)),
        }
    }

    pub fn prefixes(&self) -> &[SrcPrefix] {
        &self.0
    }
}

/// What `lb decap --status` prints: the running decapsulator's counters and accepted sources.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecapStatus {
    /// Every counter by name (`lb_common::DecapCounter::name`), summed over CPUs.
    pub counters: std::collections::BTreeMap<String, u64>,
    /// The accepted outer source prefixes (`ADDR/LEN`).
    pub allow_src: Vec<String>,
}

impl DecapStatus {
    /// Reads the maps a running `lb decap` pinned under `pin_dir`.
    pub fn read(pin_dir: &Path) -> anyhow::Result<Self> {
        let dir = pin_dir.display();
        anyhow::ensure!(
            pin_dir.join(lb_common::maps::DECAP_STATS).exists(),
            "no `lb decap` maps are pinned in {dir}: is `lb decap --iface IF --pin-dir {dir}` running? (its default --pin-dir is /sys/fs/bpf/lb-decap)"
        );
        let view = MapsView::open_pinned(pin_dir)
            .with_context(|| format!("reading the maps `lb decap` pinned in {dir}"))?;
        let counters = view
            .decap_counters()?
            .into_iter()
            .map(|(c, n)| (c.name().to_owned(), n))
            .collect();
        let allow_src = view
            .decap_allowed_prefixes()?
            .iter()
            .map(|k| {
                let d = k.data();
                let bits = u8::try_from(k.prefix_len().saturating_sub(8)).unwrap_or(u8::MAX);
                let addr = if d.family == AF_INET {
                    IpAddr::from([d.addr[0], d.addr[1], d.addr[2], d.addr[3]])
                } else {
                    IpAddr::from(d.addr)
                };
                SrcPrefix { addr, len: bits }.to_string()
            })
            .collect();
        Ok(Self {
            counters,
            allow_src,
        })
    }
}

/// `lb decap --status`: prints the counters of the `lb decap` pinned under `pin_dir`.
pub fn status(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let status = DecapStatus::read(pin_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("allowed sources: {}", status.allow_src.join(" "));
    for (name, n) in &status.counters {
        println!("{name:24} {n}");
    }
    Ok(())
}

pub fn run(
    iface: &str,
    mode: AttachMode,
    pin_dir: &Path,
    sources: &SrcPolicy,
) -> anyhow::Result<()> {
    privilege::require("lb decap", privilege::LOAD_REQUIRED)?;
    netif::ifindex(iface)?;
    // Signals first: one that arrives while loading waits for the loop below instead of killing the
    // process with its maps pinned.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut int, mut term) = {
        let _guard = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let mut dp = Dataplane::load(&LoadOptions {
        capacity: DECAP_CAPACITY,
        pin_dir: Some(pin_dir.to_path_buf()),
        kernel_log: false,
        // Its program is held by this process alone: pins found at start are stale.
        existing_pins: ExistingPins::Remove,
    })?;
    // From here on the maps are pinned: every way out, error or not, unpins them.
    let result: anyhow::Result<()> = runtime.block_on(async {
        for prefix in sources.prefixes() {
            dp.allow_decap_src(&prefix.trie_key())
                .with_context(|| format!("accepting tunnel packets from {prefix}"))?;
        }
        let mut known = BTreeSet::new();
        add_local_addrs(&mut dp, &mut known)?;
        let attached = dp.attach_decap(iface, mode)?;
        let allowed: Vec<String> = sources.prefixes().iter().map(ToString::to_string).collect();
        info!(iface, mode = ?attached, addrs = known.len(), allow_src = %allowed.join(" "), "decapsulating IPIP / ip6ip6 to local addresses");
        let mut tick = tokio::time::interval(ADDR_REFRESH);
        loop {
            tokio::select! {
                _ = tick.tick() => add_local_addrs(&mut dp, &mut known)?,
                _ = int.recv() => return Ok(()),
                _ = term.recv() => return Ok(()),
            }
        }
    });
    if let Ok(counters) = dp.maps().decap_counters() {
        let summary: Vec<String> = counters
            .iter()
            .map(|(c, n)| format!("{}={n}", c.name()))
            .collect();
        info!(counters = %summary.join(" "), "detaching");
    }
    dp.remove_pins();
    result
}

fn add_local_addrs(dp: &mut Dataplane, known: &mut BTreeSet<IpAddr>) -> anyhow::Result<()> {
    for (_, ip) in netif::addresses()? {
        if ip.is_loopback() || known.contains(&ip) {
            continue;
        }
        if known.len() >= lb_common::limits::MAX_DECAP_ADDRS as usize {
            break;
        }
        let (addr, family) = lb_common::addr::to_words(ip);
        dp.add_decap_addr(&DecapKey {
            addr,
            family,
            _pad: [0; 3],
        })
        .with_context(|| format!("accepting tunnel packets to {ip}"))?;
        known.insert(ip);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_rejections_name_the_value() {
        let p: SrcPrefix = "198.18.3.0/24".parse().unwrap();
        assert_eq!(p.to_string(), "198.18.3.0/24");
        assert_eq!(p.trie_key().prefix_len(), 8 + 24);
        let p: SrcPrefix = "2001:db8:3::/64".parse().unwrap();
        assert_eq!(p.trie_key().data().family, AF_INET6);
        assert_eq!(
            "198.18.3.2".parse::<SrcPrefix>().unwrap().to_string(),
            "198.18.3.2/32"
        );
        for (bad, says) in [
            ("198.18.3.1/24", "198.18.3.0/24"),
            ("198.18.3.0/33", "\"33\""),
            ("2001:db8::/129", "\"129\""),
            ("nonsense/8", "\"nonsense\""),
            ("198.18.3.0/x", "\"x\""),
        ] {
            let e = bad.parse::<SrcPrefix>().unwrap_err();
            assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn no_source_flag_is_refused_naming_the_flags() {
        let e = SrcPolicy::from_flags(vec![], false).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("--allow-src PREFIX") && text.contains("--allow-any-src"),
            "{text}"
        );
        let p: SrcPrefix = "198.18.3.0/24".parse().unwrap();
        assert_eq!(
            SrcPolicy::from_flags(vec![p], true),
            Err(SrcPolicyError::Both)
        );
        let any = SrcPolicy::from_flags(vec![], true).unwrap();
        assert_eq!(
            any.prefixes()
                .iter()
                .map(|p| p.trie_key().prefix_len())
                .collect::<Vec<_>>(),
            [8, 8],
            "one zero-length prefix per family"
        );
        let many = vec![p; MAX_DECAP_ALLOW_PREFIXES as usize + 1];
        assert!(matches!(
            SrcPolicy::from_flags(many, false),
            Err(SrcPolicyError::TooMany { .. })
        ));
    }
}
