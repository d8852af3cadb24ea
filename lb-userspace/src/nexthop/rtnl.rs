//! One `NETLINK_ROUTE` socket and the requests the next-hop keeper sends over it: route lookups
//! (`RTM_GETROUTE`), the neighbour table (`RTM_GETNEIGH` dump) and managed entries (`RTM_NEWNEIGH`,
//! `RTM_DELNEIGH`). Requests go out in windows of [`WINDOW`] messages per `sendmsg`, so resolving
//! 10,000 backends is some forty round trips, not 10,000 forks.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
    NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{Neighbour, NextHop};

/// Requests per `sendmsg`: their replies (~150 bytes each) fit the receive buffer many times over.
const WINDOW: usize = 256;
/// The receive buffer asked for (the kernel caps it at `net.core.rmem_max`).
const RECV_BUFFER: usize = 4 << 20;
/// How long one `recv` waits for the kernel (it answers route requests while we send them).
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one window (or one dump) may take in all.
const WINDOW_DEADLINE: Duration = Duration::from_secs(30);
/// The `ndm_protocol` (`NDA_PROTOCOL`) of the entries lb creates: how a later `lb run` recognises
/// them. Unassigned in iproute2's `rt_protos`.
pub const LB_NEIGH_PROTOCOL: u8 = 250;

/// What the kernel answered to one request.
#[derive(Debug)]
pub struct Reply {
    /// The messages it sent back before the acknowledgement (a route, a dump's entries).
    pub messages: Vec<RouteNetlinkMessage>,
    /// The acknowledgement: `Err(errno)` when the kernel refused the request.
    pub result: Result<(), io::Error>,
}

/// A `NETLINK_ROUTE` socket in the network namespace of the thread that opened it.
pub struct Rtnl {
    socket: Socket,
    next_seq: u32,
    recv: Vec<u8>,
}

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Best effort: a smaller buffer only means the window must be answered sooner.
        let _ = socket.set_rx_buf_sz(RECV_BUFFER);
        set_recv_timeout(&socket, RECV_TIMEOUT)?;
        Ok(Rtnl {
            socket,
            next_seq: 1,
            recv: Vec::with_capacity(1 << 16),
        })
    }

    /// The next hop toward each of `dsts` (same order): the kernel's route lookup, as `ip route get`.
    pub fn routes(&mut self, dsts: &[IpAddr]) -> Vec<Result<NextHop, RouteError>> {
        let requests = dsts
            .iter()
            .map(|d| (NLM_F_REQUEST | NLM_F_ACK, route_request(*d)))
            .collect();
        self.exchange(requests)
            .into_iter()
            .zip(dsts)
            .map(|(reply, dst)| next_hop_of(*dst, reply))
            .collect()
    }

    /// Every neighbour entry of the namespace, both families.
    pub fn neighbours(&mut self) -> io::Result<Vec<Neighbour>> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Unspec;
        let dump = RouteNetlinkMessage::GetNeighbour(request);
        let mut replies = self.exchange(vec![(NLM_F_REQUEST | NLM_F_DUMP, dump)]);
        let reply = replies
            .pop()
            .ok_or_else(|| io::Error::other("no reply to the neighbour dump"))?;
        reply.result?;
        Ok(reply
            .messages
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Neighbour::from_message(n),
                _ => None,
            })
            .collect())
    }

    /// Creates a managed entry for each of `hops` (same order); one that exists already is left as
    /// it is (`NLM_F_EXCL`: the kernel answers `EEXIST` and changes nothing).
    pub fn create_managed(&mut self, hops: &[NextHop]) -> Vec<io::Result<()>> {
        let requests = hops
            .iter()
            .map(|h| {
                let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
                (flags, RouteNetlinkMessage::NewNeighbour(managed_entry(h)))
            })
            .collect();
        self.results(requests)
    }

    /// Marks each existing entry of `hops` used (`NTF_USE`), as a packet to it would: the kernel
    /// revalidates a stale entry. Nothing about the entry is set or created.
    pub fn touch(&mut self, hops: &[NextHop]) -> Vec<io::Result<()>> {
        let requests = hops
            .iter()
            .map(|h| {
                let mut m = neighbour_key(h);
                m.header.flags = NeighbourFlags::Use;
                (
                    NLM_F_REQUEST | NLM_F_ACK,
                    RouteNetlinkMessage::NewNeighbour(m),
                )
            })
            .collect();
        self.results(requests)
    }

    pub fn delete(&mut self, hops: &[NextHop]) -> Vec<io::Result<()>> {
        let requests = hops
            .iter()
            .map(|h| {
                let m = neighbour_key(h);
                (
                    NLM_F_REQUEST | NLM_F_ACK,
                    RouteNetlinkMessage::DelNeighbour(m),
                )
            })
            .collect();
        self.results(requests)
    }

    fn results(&mut self, requests: Vec<(u16, RouteNetlinkMessage)>) -> Vec<io::Result<()>> {
        self.exchange(requests)
            .into_iter()
            .map(|r| r.result)
            .collect()
    }

    /// Sends `requests` window by window and collects each one's reply, in order. A request the
    /// kernel never answered (timeout, lost to a full buffer) gets an error of its own.
    fn exchange(&mut self, requests: Vec<(u16, RouteNetlinkMessage)>) -> Vec<Reply> {
        let mut replies = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let window: Vec<_> = requests.by_ref().take(WINDOW).collect();
            replies.extend(self.exchange_window(window));
        }
        replies
    }

    fn exchange_window(&mut self, window: Vec<(u16, RouteNetlinkMessage)>) -> Vec<Reply> {
        let first = self.next_seq;
        let count = window.len();
        self.next_seq = self.next_seq.wrapping_add(count as u32);
        let mut out = Vec::new();
        for (i, (flags, message)) in window.into_iter().enumerate() {
            let mut header = NetlinkHeader::default();
            header.flags = flags;
            header.sequence_number = first.wrapping_add(i as u32);
            let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
            message.finalize();
            let start = out.len();
            out.resize(start + message.buffer_len(), 0);
            message.serialize(&mut out[start..]);
        }
        let mut pending: HashMap<u32, Vec<RouteNetlinkMessage>> = (0..count)
            .map(|i| (first.wrapping_add(i as u32), Vec::new()))
            .collect();
        let mut done: HashMap<u32, Reply> = HashMap::new();
        let failure = match self.socket.send(&out, 0) {
            Ok(_) => self.receive(&mut pending, &mut done).err(),
            Err(e) => Some(e),
        };
        (0..count)
            .map(|i| {
                let seq = first.wrapping_add(i as u32);
                done.remove(&seq).unwrap_or_else(|| Reply {
                    messages: pending.remove(&seq).unwrap_or_default(),
                    result: Err(match &failure {
                        Some(e) => io::Error::new(e.kind(), format!("netlink: {e}")),
                        None => io::Error::other("netlink: no answer from the kernel"),
                    }),
                })
            })
            .collect()
    }

    /// Reads datagrams until every pending request is acknowledged (or its dump done).
    fn receive(
        &mut self,
        pending: &mut HashMap<u32, Vec<RouteNetlinkMessage>>,
        done: &mut HashMap<u32, Reply>,
    ) -> io::Result<()> {
        let deadline = Instant::now() + WINDOW_DEADLINE;
        while !pending.is_empty() {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the kernel did not answer within {WINDOW_DEADLINE:?}"),
                ));
            }
            self.recv.clear();
            self.socket.recv(&mut self.recv, 0)?;
            let mut at = 0;
            while at < self.recv.len() {
                let Ok(buf) = NetlinkBuffer::new_checked(&self.recv[at..]) else {
                    break;
                };
                let len = (buf.length() as usize).max(1);
                let seq = buf.sequence_number();
                let end = (at + len).min(self.recv.len());
                let parsed =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.recv[at..end]);
                at += len.next_multiple_of(4);
                let Some(messages) = pending.get_mut(&seq) else {
                    continue;
                };
                let result = match parsed.map(|m| m.payload) {
                    Ok(NetlinkPayload::InnerMessage(m)) => {
                        messages.push(m);
                        continue;
                    }
                    Ok(NetlinkPayload::Error(e)) => match e.code {
                        None => Ok(()),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    },
                    Ok(NetlinkPayload::Done(d)) if d.code < 0 => {
                        Err(io::Error::from_raw_os_error(-d.code))
                    }
                    Ok(NetlinkPayload::Done(_)) => Ok(()),
                    Ok(_) => continue,
                    Err(e) => Err(io::Error::other(format!(
                        "cannot decode the kernel's answer: {e}"
                    ))),
                };
                let messages = pending.remove(&seq).unwrap_or_default();
                done.insert(seq, Reply { messages, result });
            }
        }
        Ok(())
    }
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: `tv` is a valid timeval for the duration of the call; the fd is the socket's own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn family_of(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_request(dst: IpAddr) -> RouteNetlinkMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family_of(dst);
    m.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    RouteNetlinkMessage::GetRoute(m)
}

/// Why a backend has no next hop.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(
        "no route to backend {dst}: {} ({source}): add a route toward it, or fix the backend's address",
        why_no_route(source)
    )]
    NoRoute { dst: IpAddr, source: io::Error },
    #[error(
        "the route to backend {dst} is {kind:?}, not unicast (a local, broadcast or multicast address?): change that route or the backend's address"
    )]
    NotUnicast { dst: IpAddr, kind: RouteType },
    #[error(
        "the route to backend {dst} names no output interface (a multipath or nexthop-object route lb cannot read)"
    )]
    NoInterface { dst: IpAddr },
    #[error("the kernel answered the route lookup for {dst} with no route message")]
    NoAnswer { dst: IpAddr },
}

/// What the kernel's route lookup error means (`ip route get` says only the errno).
fn why_no_route(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENETUNREACH) => "no route covers it",
        Some(libc::EHOSTUNREACH) => "an unreachable route covers it",
        Some(libc::EACCES) => "a prohibit route covers it",
        Some(libc::EINVAL) => "a blackhole route covers it",
        _ => "the route lookup failed",
    }
}

/// The next hop of a route reply: its gateway (or `RTA_VIA`), else `dst` itself (directly
/// connected), on the route's output interface.
fn next_hop_of(dst: IpAddr, reply: Reply) -> Result<NextHop, RouteError> {
    reply
        .result
        .map_err(|source| RouteError::NoRoute { dst, source })?;
    let route = reply
        .messages
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
        .ok_or(RouteError::NoAnswer { dst })?;
    if route.header.kind != RouteType::Unicast {
        return Err(RouteError::NotUnicast {
            dst,
            kind: route.header.kind,
        });
    }
    let mut ifindex = None;
    let mut addr = dst;
    for a in &route.attributes {
        match a {
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => addr = IpAddr::V4(*g),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => addr = IpAddr::V6(*g),
            RouteAttribute::Via(RouteVia::Inet(g)) => addr = IpAddr::V4(*g),
            RouteAttribute::Via(RouteVia::Inet6(g)) => addr = IpAddr::V6(*g),
            _ => {}
        }
    }
    let ifindex = ifindex.ok_or(RouteError::NoInterface { dst })?;
    Ok(NextHop { addr, ifindex })
}

/// The key of a neighbour entry: family, interface and address.
fn neighbour_key(hop: &NextHop) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family_of(hop.addr);
    m.header.ifindex = hop.ifindex;
    m.attributes
        .push(NeighbourAttribute::Destination(match hop.addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    m
}

/// What `ip neigh add ADDR dev DEV managed extern_learn` sends, marked with [`LB_NEIGH_PROTOCOL`]:
/// no state and no MAC (the kernel resolves it and keeps it resolved), extern_learn so the kernel's
/// garbage collector leaves it alone.
fn managed_entry(hop: &NextHop) -> NeighbourMessage {
    let mut m = neighbour_key(hop);
    m.header.state = NeighbourState::None;
    m.header.flags = NeighbourFlags::ExtLearned;
    m.attributes
        .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    m.attributes
        .push(NeighbourAttribute::Protocol(RouteProtocol::Other(
            LB_NEIGH_PROTOCOL,
        )));
    m
}

impl Neighbour {
    fn from_message(m: &NeighbourMessage) -> Option<Neighbour> {
        let mut addr = None;
        let mut lladdr = None;
        let mut managed = false;
        let mut protocol = 0;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                    addr = Some(IpAddr::V4(*v))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                    addr = Some(IpAddr::V6(*v))
                }
                NeighbourAttribute::LinkLayerAddress(mac) => lladdr = Some(mac.clone()),
                NeighbourAttribute::ExtFlags(f) => managed = f.contains(NeighbourExtFlags::Managed),
                NeighbourAttribute::Protocol(p) => protocol = u8::from(*p),
                _ => {}
            }
        }
        Some(Neighbour {
            hop: NextHop {
                addr: addr?,
                ifindex: m.header.ifindex,
            },
            state: u16::from(m.header.state),
            managed,
            ext_learned: m.header.flags.contains(NeighbourFlags::ExtLearned),
            protocol,
            lladdr,
        })
    }
}
