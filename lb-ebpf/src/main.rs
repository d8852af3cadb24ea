//! The XDP programs of the load balancer: `lb_balancer` (Katran-style DSR: parse → VIP → flow →
//! schedule → IPIP / ip6ip6 → TX) and `lb_decap` (the backend side). Each step is a module; this
//! file only wires them and turns every outcome into a counter and a verdict. The packet code
//! (`parse`, `csum`, `encap`) is the crate's library, shared with the bench programs
//! (`lb-bench-ebpf`); the modules that own maps are this binary's.
#![no_std]
#![no_main]
// Inline BPF assembly (the atomic add on a map value, `parse::opaque`) is unstable; the eBPF crate
// builds with nightly anyway (build-std).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod decap;
mod flow;
mod flows;
mod icmp;
mod lookup;
mod maps;
mod route;
mod select;
mod stats;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    helpers::bpf_redirect,
    macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use lb_common::{Counter, ServiceEntry};

// The modules of the library are reached as `crate::parse` etc., like the binary's own.
use lb_ebpf::{encap, flow_table, parse, stack};

use crate::{
    parse::Packet,
    stats::{Traffic, count},
};

#[xdp]
pub fn lb_balancer(ctx: XdpContext) -> u32 {
    let outcome = balance(&ctx);
    // The ICMP paths run here, beside `balance` rather than inside it: the verifier adds up the
    // stack frames of a call chain (512 bytes at most), and `balance`'s alone is ~400.
    match outcome >> 32 {
        0 => outcome as u32,
        UNBALANCED => {
            let next = icmp::unbalanced(&ctx, outcome as u32);
            if next >> 32 == icmp::STEER {
                icmp::steer_to(&ctx, next as u32)
            } else {
                next as u32
            }
        }
        _ => icmp::too_big(&ctx, outcome as u32),
    }
}

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    decap::decap(&ctx)
}

/// `balance` left the packet to `icmp::unbalanced`; the low 32 bits are its pass counter.
const UNBALANCED: u64 = 1;
/// `balance` found the packet too long for the tunnel (`icmp::too_big`); the low 32 bits are the
/// service id.
const TOO_BIG: u64 = 2;

/// The verdict of a packet (high 32 bits 0), or what `lb_balancer` does next (`UNBALANCED`,
/// `TOO_BIG` in the high 32 bits). Not inlined, so its frame is not on the ICMP paths' chain.
#[inline(never)]
fn balance(ctx: &XdpContext) -> u64 {
    // No `rx_packets` here: userspace derives it from the verdict counters (one per frame).
    let pkt = match parse::parse_packet(ctx) {
        Ok(p) => p,
        Err(reason) => return (UNBALANCED << 32) | reason as u64,
    };
    // Most TCP that is not for a VIP leaves here, after one array read.
    if !lookup::may_be_vip(&pkt.dst, pkt.family) {
        count(Counter::PassNotVip);
        return u64::from(XDP_PASS);
    }
    let Some(svc) = lookup::service_of(&pkt) else {
        // The common miss, TCP to an address that is no VIP, is passed here: no second parse and
        // no call of `icmp::unbalanced`, which only a VIP address needs.
        if lookup::is_vip_addr(pkt.dst, pkt.family) {
            return (UNBALANCED << 32) | Counter::PassNotVip as u64;
        }
        count(Counter::PassNotVip);
        return u64::from(XDP_PASS);
    };
    match forward(ctx, &pkt, &svc) {
        Ok(verdict) => u64::from(verdict),
        Err(Counter::DropMtu) => (TOO_BIG << 32) | u64::from(svc.id),
        Err(reason) => {
            count(reason);
            stats::service_traffic(svc.id, Traffic::Dropped);
            debug!(
                ctx,
                "lb_balancer: drop {} for service {}", reason as u32, svc.id
            );
            u64::from(XDP_DROP)
        }
    }
}

/// A packet to a VIP: assign a backend, route, encapsulate, send. `Err` is the drop counter.
#[inline(always)]
fn forward(ctx: &XdpContext, pkt: &Packet, svc: &ServiceEntry) -> Result<u32, Counter> {
    // Index 0 of an array map always exists: never taken.
    let cfg = lookup::config_ref().ok_or(Counter::DropNoRoute)?;
    let key = lookup::flow_key_of(pkt);
    let assigned = flow::assign(svc, &key, pkt.tcp_flags, cfg)?;
    let backend_id = assigned.choice.id;
    let new_flow = assigned.new_flow;
    let backend = assigned.choice.entry;
    if backend.family != pkt.family {
        return Err(Counter::DropNoRoute);
    }
    let src = if pkt.family == lb_common::AF_INET {
        [cfg.src_v4, 0, 0, 0]
    } else {
        cfg.src_v6
    };
    let outer_len = (pkt.ip_len + encap::encap_len(pkt.family)) as u32;
    let hop = route::next_hop_cached(ctx, cfg, backend_id, pkt.family, &backend.addr, outer_len)?;
    let frame_bytes = (ctx.data_end() - ctx.data()) as u64;
    encap::encapsulate(ctx, pkt, &src, &backend.addr, &hop)?;
    if pkt.with_options != 0 {
        count(Counter::Ipv4WithOptions);
    }
    let traffic = Traffic::Forwarded {
        bytes: frame_bytes,
        new_flows: new_flow,
    };
    stats::service_traffic(svc.id, traffic);
    stats::backend_traffic(backend_id, traffic);
    Ok(egress(ctx, hop.ifindex))
}

/// Back out of the receiving interface, or redirected to the one the route says.
#[inline(always)]
fn egress(ctx: &XdpContext, ifindex: u32) -> u32 {
    if ifindex == ctx.ingress_ifindex() as u32 {
        count(Counter::TxPackets);
        return XDP_TX;
    }
    // SAFETY: plain helper call; an invalid ifindex makes it return XDP_ABORTED.
    let verdict = unsafe { bpf_redirect(ifindex, 0) } as u32;
    if verdict == XDP_REDIRECT {
        count(Counter::RedirectPackets);
        verdict
    } else {
        // A counted drop, never XDP_ABORTED (which only a tracepoint would see).
        count(Counter::DropNoRoute);
        XDP_DROP
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
