//! The program entry points, the license and the panic handler of the bench object.

use aya_ebpf::{macros::xdp, programs::XdpContext};

use crate::{floor, flowtable, reset};

/// Restores the template frame, then tail-calls the program under test.
#[xdp]
pub fn lb_reset(ctx: XdpContext) -> u32 {
    reset::reset_then_jump(&ctx)
}

/// Restores the template frame (the harness cost).
#[xdp]
pub fn lb_reset_only(ctx: XdpContext) -> u32 {
    reset::reset_only(&ctx)
}

/// The floor every IPIP balancer pays (parse, encapsulate, transmit).
#[xdp]
pub fn lb_floor(ctx: XdpContext) -> u32 {
    floor::floor(&ctx)
}

/// The flow-table bench: an LRU hash with shared LRU lists.
#[xdp]
pub fn lb_ft_lru(ctx: XdpContext) -> u32 {
    flowtable::lru(&ctx)
}

/// The flow-table bench: an LRU hash with per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`).
#[xdp]
pub fn lb_ft_lru_percpu(ctx: XdpContext) -> u32 {
    flowtable::lru_percpu(&ctx)
}

/// The flow-table bench: Katran's per-CPU LRU hashes in an array of maps.
#[xdp]
pub fn lb_ft_katran(ctx: XdpContext) -> u32 {
    flowtable::katran(&ctx)
}

/// The flow-table bench: the set-associative table (`lb_ebpf::flow_table`).
#[xdp]
pub fn lb_ft_setassoc(ctx: XdpContext) -> u32 {
    flowtable::setassoc(&ctx)
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
