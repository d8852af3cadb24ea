//! The production flow table, `LB_FLOWS`: the library's set-associative table
//! (`lb_ebpf::flow_table`) over this object's map, with the object's global scan functions.

use aya_ebpf::maps::Array;
use lb_common::FlowBucket;

use crate::{
    flow_table::{Buckets, scan_match, scan_victim},
    maps::LB_FLOWS,
};

/// `LB_FLOWS` as a [`Buckets`] table.
pub struct LbFlows;

impl Buckets for LbFlows {
    #[inline(always)]
    fn map() -> &'static Array<FlowBucket> {
        &LB_FLOWS
    }

    #[inline(always)]
    fn matching(index: u32, tag: u32, from: u32) -> u64 {
        lb_flow_match(index, tag, from)
    }

    #[inline(always)]
    fn victim(i0: u32, i1: u32, now_age: u32) -> u64 {
        lb_flow_victim(i0, i1, now_age)
    }
}

/// `scan_match` of an `LB_FLOWS` bucket, as a global function (verified once, on its own).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_flow_match(index: u32, tag: u32, from: u32) -> u64 {
    scan_match(LB_FLOWS.get_ptr_mut(index), tag, from)
}

/// `scan_victim` of two `LB_FLOWS` buckets, as a global function (verified once, on its own).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_flow_victim(i0: u32, i1: u32, now_age: u32) -> u64 {
    scan_victim(LB_FLOWS.get_ptr_mut(i0), LB_FLOWS.get_ptr_mut(i1), now_age)
}
