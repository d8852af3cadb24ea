//! Counters: one named global counter per verdict and drop reason, and traffic per service and backend.

use bytemuck::{Pod, Zeroable};

/// Traffic of one service (`LB_SVC_STATS`) or one backend (`LB_BE_STATS`), per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TrafficStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
}

impl TrafficStats {
    pub fn add(&mut self, other: &TrafficStats) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
        self.drops = self.drops.wrapping_add(other.drops);
    }
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $variant:ident = $idx:literal => $name:literal ),* $(,)?) => {
        /// Index into `LB_STATS` (per-CPU array of `u64`). Every verdict and every drop reason has one.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Counter { $( $(#[$doc])* $variant = $idx ),* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[ $( Counter::$variant ),* ];
            pub const COUNT: u32 = Counter::ALL.len() as u32;

            /// The counter at `index` of `LB_STATS`.
            pub const fn from_index(index: u32) -> Option<Counter> {
                match index { $( $idx => Some(Counter::$variant), )* _ => None }
            }

            /// Stable snake_case name, used by `lb status` and the metrics.
            pub const fn name(self) -> &'static str {
                match self { $( Counter::$variant => $name ),* }
            }
        }
    };
}

counters! {
    /// Every frame the balancer program saw. Not written by the program: userspace derives it
    /// (`Counter::derive_rx_packets`) as the sum of the verdict counters, one per frame.
    RxPackets = 0 => "rx_packets",
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    PassNotIp = 1 => "pass_not_ip",
    /// IP but not TCP (ICMP, UDP, ...): passed.
    PassNotTcp = 2 => "pass_not_tcp",
    /// TCP to an address/port that is no VIP: passed.
    PassNotVip = 3 => "pass_not_vip",
    /// IPv4 fragment: passed to the stack (the LB does not reassemble).
    PassFragment = 4 => "pass_fragment",
    /// IPv6 with extension headers before TCP: passed.
    PassIpv6ExtHeaders = 5 => "pass_ipv6_ext_headers",
    /// Truncated or inconsistent headers: passed untouched.
    PassMalformed = 6 => "pass_malformed",
    /// IPv4 packets with options that were balanced (options are carried inside the tunnel).
    Ipv4WithOptions = 7 => "ipv4_with_options",
    /// VIP without any usable backend.
    DropNoBackend = 8 => "drop_no_backend",
    /// The encapsulated packet would exceed the egress MTU.
    DropMtu = 9 => "drop_mtu",
    /// No route to the backend (bpf_fib_lookup).
    DropNoRoute = 10 => "drop_no_route",
    /// The next hop's MAC address is not resolved yet.
    DropNoNeighbour = 11 => "drop_no_neighbour",
    /// Growing the packet for the outer header failed.
    DropEncapFailed = 12 => "drop_encap_failed",
    /// A table entry pointed at a backend that is not this service's (a table swap raced a lookup).
    DropBadTableEntry = 13 => "drop_bad_table_entry",
    /// Existing flow found in the flow table.
    FlowHit = 14 => "flow_hit",
    /// New flow: a backend was chosen by the scheduler.
    FlowNew = 15 => "flow_new",
    /// The flow table refused an insert (the packet is still forwarded).
    FlowInsertFailed = 16 => "flow_insert_failed",
    /// An existing flow's backend went down; the flow was moved.
    FlowRescheduled = 17 => "flow_rescheduled",
    /// Client FIN/RST returned the flow's active-connection unit.
    ConnClosed = 18 => "conn_closed",
    /// A new flow followed its client's persistence entry.
    PersistHit = 19 => "persist_hit",
    /// Sent back out of the receiving interface (XDP_TX).
    TxPackets = 20 => "tx_packets",
    /// Redirected to another interface (XDP_REDIRECT).
    RedirectPackets = 21 => "redirect_packets",
    /// A packet other than a SYN without a flow entry: forwarded by the service's consistent hash,
    /// creating no state (spoofed ACKs cannot fill the flow table).
    FlowMissNonSyn = 22 => "flow_miss_non_syn",
    /// A SYN above `--max-new-flows-per-cpu`: forwarded by consistent hash, no flow or persistence
    /// entry written (the new-flow guard).
    FlowGuardBypass = 23 => "flow_guard_bypass",
    /// A half-open flow's handshake completed (the client's first ACK): it now counts as an active
    /// connection.
    FlowEstablished = 24 => "flow_established",
    /// To a VIP address but not balanced (UDP, non-echo ICMP, an unconfigured port, a fragment,
    /// IPv6 extension headers, malformed): dropped, never passed to a forwarding kernel (a loop).
    DropVipUnbalanced = 25 => "drop_vip_unbalanced",
    /// An ICMP / ICMPv6 echo request to a VIP address answered with an echo reply (XDP_TX).
    IcmpEchoReplied = 26 => "icmp_echo_replied",
    /// An ICMP frag-needed / ICMPv6 packet-too-big about a VIP flow, steered to its backend.
    IcmpTooBigSteered = 27 => "icmp_too_big_steered",
    /// An ICMP frag-needed / ICMPv6 packet-too-big sent to a client whose packet did not fit the
    /// tunnel (the packet itself is counted in `drop_mtu` only when the rate limit held it back).
    IcmpTooBigSent = 28 => "icmp_too_big_sent",
    /// A new flow took the way of another flow: both of its buckets were full (the table holds
    /// more than it is rated for, or a burst hit two buckets). The flow touched longest ago lost
    /// its entry; its next packets follow the consistent hash.
    FlowEvicted = 29 => "flow_evicted",
}

impl Counter {
    /// The counters of a frame's verdict: the program counts exactly one of them per frame
    /// (every `pass_*` and `drop_*`, `tx_packets`, `redirect_packets`).
    pub const fn is_verdict(self) -> bool {
        use Counter::*;
        matches!(
            self,
            PassNotIp
                | PassNotTcp
                | PassNotVip
                | PassFragment
                | PassIpv6ExtHeaders
                | PassMalformed
                | DropNoBackend
                | DropMtu
                | DropNoRoute
                | DropNoNeighbour
                | DropEncapFailed
                | DropBadTableEntry
                | DropVipUnbalanced
                | TxPackets
                | RedirectPackets
        )
    }

    /// Sets `rx_packets` in `counters` (as read from `LB_STATS`, summed over CPUs) to the sum of
    /// the verdict counters: the program saves that per-CPU update on every frame.
    pub fn derive_rx_packets(counters: &mut [(Counter, u64)]) {
        let rx = counters
            .iter()
            .filter(|(c, _)| c.is_verdict())
            .fold(0u64, |sum, (_, v)| sum.wrapping_add(*v));
        for (c, v) in counters.iter_mut() {
            if *c == Counter::RxPackets {
                *v = rx;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_the_pass_drop_tx_and_redirect_counters() {
        for c in Counter::ALL {
            let n = c.name();
            let verdict = n.starts_with("pass_")
                || n.starts_with("drop_")
                || *c == Counter::TxPackets
                || *c == Counter::RedirectPackets;
            assert_eq!(c.is_verdict(), verdict, "{c:?}");
        }
    }

    #[test]
    fn every_counter_is_found_by_its_index() {
        for c in Counter::ALL {
            assert_eq!(Counter::from_index(*c as u32), Some(*c));
        }
        assert_eq!(Counter::from_index(Counter::COUNT), None);
    }

    #[test]
    fn rx_packets_is_the_sum_of_the_verdicts() {
        let mut counters = [(Counter::RxPackets, 0u64); Counter::COUNT as usize];
        for (slot, c) in counters.iter_mut().zip(Counter::ALL) {
            *slot = (*c, 0);
        }
        for (c, v) in counters.iter_mut() {
            *v = match c {
                Counter::PassNotVip => 2,
                Counter::TxPackets => 5,
                Counter::DropMtu => 1,
                // Not verdicts: they must not enter the sum.
                Counter::FlowHit => 4,
                Counter::IcmpTooBigSent => 1,
                Counter::RxPackets => 99,
                _ => 0,
            };
        }
        Counter::derive_rx_packets(&mut counters);
        assert_eq!(
            counters[Counter::RxPackets as usize],
            (Counter::RxPackets, 8)
        );
    }

    #[test]
    fn counters_are_dense_and_named_once() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} is not at its index");
            for d in &Counter::ALL[i + 1..] {
                assert_ne!(c.name(), d.name());
            }
        }
    }
}
