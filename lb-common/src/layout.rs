//! The layout version of the pinned maps: what a restarted `lb run` checks before it adopts the
//! maps an earlier one pinned (stored in `LB_CONFIG[0].layout_version`).
//!
//! Bump [`LAYOUT_VERSION`] whenever a shared type, a map's key or value, or the set of maps
//! changes: a daemon built for one layout must never read or write maps of another. The test below
//! fails when a shared type's size changes, as a reminder.

/// The layout of the maps this build creates and can adopt.
pub const LAYOUT_VERSION: u32 = 8;

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::LAYOUT_VERSION;
    use crate::*;

    #[test]
    fn a_changed_shared_type_bumps_the_layout_version() {
        let sizes = [
            size_of::<VipKey>(),
            size_of::<ServiceEntry>(),
            size_of::<ServiceMeta>(),
            size_of::<BackendEntry>(),
            size_of::<FlowKey>(),
            size_of::<FlowEntry>(),
            size_of::<FlowBucket>(),
            size_of::<PersistKey>(),
            size_of::<PersistEntry>(),
            size_of::<TrafficStats>(),
            size_of::<LbConfig>(),
            size_of::<DecapKey>(),
            size_of::<DecapSrcKey>(),
            size_of::<VipAddrKey>(),
            size_of::<VipSlot>(),
            Counter::COUNT as usize,
        ];
        assert_eq!(
            (LAYOUT_VERSION, sizes),
            (
                8,
                [
                    20, 40, 88, 32, 40, 16, 512, 24, 16, 32, 48, 20, 17, 20, 64, 30
                ]
            ),
            "a shared type changed: bump LAYOUT_VERSION, then update this test"
        );
    }
}
