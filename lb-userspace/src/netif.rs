//! Interfaces and their addresses (the outer source of encapsulated packets, the decap program's local
//! addresses).

use std::ffi::{CStr, CString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetifError {
    #[error("listing the addresses of this host failed: {0}")]
    GetIfAddrs(std::io::Error),
}

/// An interface name that names no interface.
#[derive(Debug, Error)]
#[error("interface {iface:?} does not exist (see `ip link`)")]
pub struct NoSuchInterface {
    pub iface: String,
}

/// Index of an interface, or a clear error. The one `if_nametoindex` of the product.
pub fn ifindex(iface: &str) -> Result<u32, NoSuchInterface> {
    let missing = || NoSuchInterface {
        iface: iface.to_owned(),
    };
    let name = CString::new(iface).map_err(|_| missing())?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(missing()),
        idx => Ok(idx),
    }
}

/// The name of interface `ifindex` (in the calling thread's namespace), for messages; `#N` when it
/// has none (gone since).
pub fn name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write; it NUL-terminates on success.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("#{ifindex}");
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Every address on this host, with the name of its interface.
pub fn addresses() -> Result<Vec<(String, IpAddr)>, NetifError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(NetifError::GetIfAddrs(std::io::Error::last_os_error()));
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned and has not been freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose family says its real type.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let ip = match family {
            libc::AF_INET => {
                // SAFETY: family AF_INET means the sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: family AF_INET6 means the sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        out.push((name, ip));
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The default outer sources: the interface's first IPv4 address and first global IPv6 address.
pub fn default_sources(iface: &str) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), NetifError> {
    let mut v4 = None;
    let mut v6 = None;
    for (name, ip) in addresses()? {
        if name != iface {
            continue;
        }
        match ip {
            IpAddr::V4(a) if v4.is_none() && !a.is_loopback() => v4 = Some(a),
            IpAddr::V6(a) if v6.is_none() && is_global_v6(&a) => v6 = Some(a),
            _ => {}
        }
    }
    Ok((v4, v6))
}

fn is_global_v6(a: &Ipv6Addr) -> bool {
    let s = a.segments();
    !(a.is_loopback() || a.is_unspecified() || (s[0] & 0xffc0) == 0xfe80 || a.is_multicast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_and_unknown_interface_is_a_clear_error() {
        assert!(ifindex("lo").is_ok());
        let err = ifindex("no-such-if0").unwrap_err().to_string();
        assert!(err.contains("no-such-if0"), "{err}");
        let addrs = addresses().unwrap();
        assert!(addrs.iter().any(|(n, ip)| n == "lo" && ip.is_loopback()));
    }

    #[test]
    fn link_local_is_not_global() {
        assert!(!is_global_v6(&"fe80::1".parse().unwrap()));
        assert!(is_global_v6(&"2001:db8::1".parse().unwrap()));
    }
}
