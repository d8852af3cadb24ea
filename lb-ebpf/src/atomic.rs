//! The atomic read-modify-writes the programs need that `core` does not offer on the BPF target.

/// Stores `desired` in `*p` if it holds `expected`, atomically; true when it did.
///
/// # Safety
/// `p` must be an 8-byte aligned `u64` of a map value (memory every CPU may write at once).
#[inline(always)]
pub unsafe fn compare_exchange(p: *mut u64, expected: u64, desired: u64) -> bool {
    let mut seen = expected;
    // SAFETY: the caller's; BPF_ATOMIC | BPF_CMPXCHG compares `*p` with r0, stores `desired` if
    // equal, and returns what it held in r0.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {n})",
            p = in(reg) p,
            n = in(reg) desired,
            inout("r0") seen,
            options(nostack),
        );
    }
    seen == expected
}
