//! The pin directory on bpffs: checked, created, never cleared at start-up (the pins of a daemon
//! that died keep its program forwarding), removed on request.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData};
use lb_common::{LbConfig, layout::LAYOUT_VERSION, maps};

use super::DataplaneError;

/// Every map we pin, by name.
pub(crate) const PINNED_MAPS: [&str; 18] = [
    maps::SERVICES,
    maps::VIP_ADDRS,
    maps::VIP_FILTER,
    maps::VIP_TABLE,
    maps::SERVICE_META,
    maps::BACKENDS,
    maps::SCHEDULE,
    maps::FLOWS,
    maps::PERSIST,
    maps::BACKEND_CONNS,
    maps::CURSORS,
    maps::STATS,
    maps::SERVICE_STATS,
    maps::BACKEND_STATS,
    maps::CONFIG,
    maps::DECAP_ADDRS,
    maps::DECAP_STATS,
    maps::DECAP_ALLOW,
];

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs fills the zeroed struct; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs.
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// What a start-up does with pins of ours it finds in the pin directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExistingPins {
    /// Adopt them: they hold what a program that may still forward works with (`lb run`). Pins of
    /// another layout, or only some of them, are refused.
    #[default]
    Adopt,
    /// Remove them: nothing outlives the process that made them (`lb decap`).
    Remove,
}

/// The pin of the balancer's XDP link on `iface`: the program stays attached while it exists.
pub fn link_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}{iface}"))
}

const LINK_PREFIX: &str = "link_";

/// The interfaces whose balancer link is pinned in `dir`.
pub fn pinned_links(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ifaces: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(LINK_PREFIX))
                .map(str::to_owned)
        })
        .collect();
    ifaces.sort();
    ifaces
}

/// The layout version the maps pinned in `dir` were created with (`None`: no readable
/// `LB_CONFIG` of this layout's value size, e.g. pins of a build before versioning).
pub fn pinned_layout_version(dir: &Path) -> Option<u32> {
    let data = MapData::from_pin(dir.join(maps::CONFIG)).ok()?;
    let map = Map::from_map_data(data).ok()?;
    let config: Array<MapData, LbConfig> = Array::try_from(map).ok()?;
    config.get(&0, 0).ok().map(|c| c.layout_version)
}

/// `max_entries` of the map pinned in `dir` as `name`.
pub(crate) fn pinned_max_entries(dir: &Path, name: &'static str) -> Result<u32, DataplaneError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| DataplaneError::NotPinned {
        map: name,
        path: path.clone(),
        source,
    })?;
    Ok(data
        .info()
        .map_err(super::error::map_op(name, "reading map info"))?
        .max_entries())
}

/// Our pins (maps and links) that exist in `dir`.
fn existing(dir: &Path) -> Vec<PathBuf> {
    let maps = PINNED_MAPS.iter().map(|name| dir.join(name));
    let links = pinned_links(dir).into_iter().map(|i| link_path(dir, &i));
    maps.chain(links).filter(|p| p.exists()).collect()
}

/// Makes sure `dir` exists on bpffs and deals with pins of ours already there as `existing` says.
/// Returns whether every map is pinned there, to be adopted.
pub(crate) fn prepare(dir: &Path, existing_pins: ExistingPins) -> Result<bool, DataplaneError> {
    let pin_dir_err = |source| DataplaneError::PinDir {
        path: dir.to_path_buf(),
        source,
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let probe = if dir.exists() {
        dir.to_path_buf()
    } else {
        parent
    };
    if !is_bpffs(&probe).map_err(pin_dir_err)? {
        return Err(DataplaneError::BpffsNotMounted { path: probe });
    }
    fs::create_dir_all(dir).map_err(pin_dir_err)?;
    let found = existing(dir);
    if found.is_empty() {
        return Ok(false);
    }
    if existing_pins == ExistingPins::Adopt {
        let version = pinned_layout_version(dir);
        if version != Some(LAYOUT_VERSION) {
            return Err(DataplaneError::LayoutMismatch {
                dir: dir.to_path_buf(),
                found: version.map_or_else(|| "unknown".to_owned(), |v| v.to_string()),
                expected: LAYOUT_VERSION,
            });
        }
        let missing: Vec<&str> = PINNED_MAPS
            .iter()
            .filter(|name| !dir.join(name).exists())
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(DataplaneError::PinsIncomplete {
                dir: dir.to_path_buf(),
                missing,
            });
        }
        return Ok(true);
    }
    for path in found {
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a stale pin of an earlier run")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_dir_err(e)),
        }
    }
    Ok(false)
}

/// Removes our pins (links first, so the program stops before its maps go) and then the directory
/// if nothing else is in it.
pub fn remove(dir: &Path) {
    let links = pinned_links(dir).into_iter().map(|i| link_path(dir, &i));
    let maps = PINNED_MAPS.iter().map(|name| dir.join(name));
    for path in links.chain(maps) {
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a pin");
        }
    }
    // Fails (and is meant to) when someone else keeps files there.
    let _ = fs::remove_dir(dir);
}
