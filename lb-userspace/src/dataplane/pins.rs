//! The pin directory on bpffs: checked, created, cleared of our stale pins, removed on request.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use lb_common::maps;

use super::DataplaneError;

/// Every map we pin, by name.
pub(crate) const PINNED_MAPS: [&str; 14] = [
    maps::SERVICES,
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

/// Makes sure `dir` exists on bpffs and holds none of our pins from an earlier (crashed) run.
pub(crate) fn prepare(dir: &Path) -> Result<(), DataplaneError> {
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
    for name in PINNED_MAPS {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a stale pin of an earlier run")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_dir_err(e)),
        }
    }
    Ok(())
}

/// Removes our pins and then the directory if nothing else is in it.
pub(crate) fn remove(dir: &Path) {
    for name in PINNED_MAPS {
        let path = dir.join(name);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a pinned map");
        }
    }
    // Fails (and is meant to) when someone else keeps files there.
    let _ = fs::remove_dir(dir);
}
