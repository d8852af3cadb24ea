//! One owner per pin directory: `lb run` and `lb detach` hold an exclusive `flock` on a lock file
//! next to the status file for as long as they work on the pins. A second one is refused at once
//! and changes nothing; the kernel drops the lock when its holder dies, however it dies.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use crate::report;

/// `/sys/fs/bpf/lb` → `/run/lb/_sys_fs_bpf_lb.lock` (bpffs holds no plain files).
pub fn lock_file_path(pin_dir: &Path) -> PathBuf {
    report::status_file_path(pin_dir).with_extension("lock")
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another `lb` ({holder}) already manages pin directory {pin_dir} (it holds {lock}); \
         nothing of it was changed. Stop it first, or give this one another --pin-dir"
    )]
    Held {
        pin_dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error(
        "another `lb` ({holder}) already balances interface {iface} in this network namespace; \
         nothing was changed. Stop it first (or restart it: a new `lb run` with its --pin-dir \
         adopts what it pinned)"
    )]
    IfaceHeld { iface: String, holder: String },
    #[error("claiming interface {iface}: {source}")]
    IfaceIo {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("the lock file {lock} of pin directory {pin_dir}: {source}")]
    Io {
        pin_dir: PathBuf,
        lock: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The exclusive lock on a pin directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct PinDirLock {
    file: File,
    path: PathBuf,
}

impl PinDirLock {
    /// Takes the lock of `pin_dir` without waiting, and writes our pid into the lock file.
    pub fn acquire(pin_dir: &Path) -> Result<PinDirLock, LockError> {
        let path = lock_file_path(pin_dir);
        let io_err = |source| LockError::Io {
            pin_dir: pin_dir.to_path_buf(),
            lock: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        // Not truncated on open: the holder's pid stays readable for the error message.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => "pid unknown".to_owned(),
                    pid => format!("pid {pid}"),
                };
                return Err(LockError::Held {
                    pin_dir: pin_dir.to_path_buf(),
                    lock: path,
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(PinDirLock { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the lock file while still holding the lock (when the pins it guards are removed).
    pub fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the lock file");
        }
        drop(self.file);
    }
}

/// One `lb run` per interface and network namespace: a listening abstract unix socket named for the
/// interface (abstract names live in the network namespace and vanish with their process, however
/// it ends, so nothing is left to clean up). A second claim is refused with the holder's pid.
#[derive(Debug)]
pub struct IfaceClaim {
    _listener: std::os::unix::net::UnixListener,
}

impl IfaceClaim {
    pub fn acquire(iface: &str) -> Result<IfaceClaim, LockError> {
        use std::os::linux::net::SocketAddrExt as _;
        use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
        let io_err = |source| LockError::IfaceIo {
            iface: iface.to_owned(),
            source,
        };
        let addr = SocketAddr::from_abstract_name(format!("lb-iface:{iface}")).map_err(io_err)?;
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => Ok(IfaceClaim {
                _listener: listener,
            }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let holder = UnixStream::connect_addr(&addr)
                    .ok()
                    .and_then(|s| peer_pid(&s))
                    .map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
                Err(LockError::IfaceHeld {
                    iface: iface.to_owned(),
                    holder,
                })
            }
            Err(e) => Err(io_err(e)),
        }
    }
}

/// Prefix of an interface claim's abstract socket name.
const CLAIM_PREFIX: &str = "@lb-iface:";

/// The interfaces an `lb run` of this network namespace claims now (its abstract sockets, as
/// `/proc/net/unix` of this namespace lists them).
pub fn claimed_ifaces() -> io::Result<Vec<String>> {
    Ok(claims_in(&std::fs::read_to_string("/proc/net/unix")?))
}

/// The claimed interfaces in the text of `/proc/net/unix` (the path is the line's last column).
fn claims_in(proc_net_unix: &str) -> Vec<String> {
    let mut ifaces: Vec<String> = proc_net_unix
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .filter_map(|path| path.strip_prefix(CLAIM_PREFIX))
        .map(str::to_owned)
        .collect();
    ifaces.sort();
    ifaces.dedup();
    ifaces
}

/// The pid of the process at the other end of `stream` (`SO_PEERCRED`).
fn peer_pid(stream: &std::os::unix::net::UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd as _;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for the kernel to fill; the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// The pid holding the lock of `pin_dir` (`None`: no `lb` manages it), read from `/proc/locks`
/// without touching the lock (taking it, even briefly, could refuse a daemon that is starting).
pub fn holder(pin_dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(lock_file_path(pin_dir)).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    lock_holder(
        &locks,
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino(),
    )
}

/// The pid of the `FLOCK` line of `/proc/locks` on the file (`major`, `minor`, `inode`).
fn lock_holder(locks: &str, major: u32, minor: u32, inode: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 1234 00:19:5678 0 EOF`; waiters carry an extra `->` field.
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") || fields.contains(&"->") {
            return None;
        }
        let mut id = fields.get(5)?.split(':');
        let (maj, min, ino) = (id.next()?, id.next()?, id.next()?);
        let same = u32::from_str_radix(maj, 16).ok()? == major
            && u32::from_str_radix(min, 16).ok()? == minor
            && ino.parse::<u64>().ok()? == inode;
        same.then(|| fields.get(4)?.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_is_claimed_once_until_its_claim_is_dropped() {
        let iface = format!("lbtest{}", std::process::id());
        let first = IfaceClaim::acquire(&iface).expect("the first claim");
        let err = IfaceClaim::acquire(&iface).expect_err("a second claim");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("balances interface {iface}")),
            "{msg}"
        );
        assert!(
            claimed_ifaces().expect("/proc/net/unix").contains(&iface),
            "{iface} not among the claims"
        );
        drop(first);
        assert!(!claimed_ifaces().expect("/proc/net/unix").contains(&iface));
        IfaceClaim::acquire(&iface).expect("free again");
    }

    #[test]
    fn claims_are_read_from_the_paths_of_proc_net_unix() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 1234 @lb-iface:eth0\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 1235 /run/lb/control.sock\n\
                    0000000000000000: 00000003 00000000 00000000 0001 03 1236\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 1237 @lb-iface:eth1\n";
        assert_eq!(claims_in(text), ["eth0", "eth1"]);
    }

    #[test]
    fn the_holder_is_read_from_proc_locks_and_gone_with_the_lock() {
        let pin_dir = std::env::temp_dir().join(format!("lb-holder-test-{}", std::process::id()));
        let lock = PinDirLock::acquire(&pin_dir).expect("lock");
        assert_eq!(holder(&pin_dir), Some(std::process::id()));
        let path = lock.path().to_path_buf();
        drop(lock);
        assert_eq!(holder(&pin_dir), None, "the file is there, nobody holds it");
        let _ = std::fs::remove_file(path);
        assert_eq!(holder(&pin_dir), None);
        let locks = "1: POSIX  ADVISORY  WRITE 10 00:19:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 11 00:1a:77 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 12 00:1a:77 0 EOF\n";
        assert_eq!(lock_holder(locks, 0, 0x1a, 77), Some(11));
        assert_eq!(
            lock_holder(locks, 0, 0x19, 77),
            None,
            "a POSIX lock is not ours"
        );
    }

    #[test]
    fn lock_file_sits_next_to_the_status_file() {
        assert_eq!(
            lock_file_path(Path::new("/sys/fs/bpf/lb")),
            Path::new("/run/lb/_sys_fs_bpf_lb.lock")
        );
    }

    #[test]
    fn a_second_owner_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let pin_dir = std::env::temp_dir().join(format!("lb-owner-test-{}", std::process::id()));
        let first = PinDirLock::acquire(&pin_dir).expect("the first owner");
        let err = PinDirLock::acquire(&pin_dir).expect_err("a second owner");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("nothing of it was changed"), "{msg}");
        assert!(first.path().exists(), "the refusal kept the lock file");
        drop(first);
        let again = PinDirLock::acquire(&pin_dir).expect("free again");
        let path = again.path().to_path_buf();
        again.remove();
        assert!(!path.exists());
    }
}
