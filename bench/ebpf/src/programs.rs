//! The program entry points, the license and the panic handler of the bench object.

use aya_ebpf::{macros::xdp, programs::XdpContext};

use crate::{floor, reset};

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

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
