//! Map keys built on the stack, 8-byte aligned.
//!
//! The objects are generated with unaligned accesses allowed (see `build.rs`), so LLVM may merge
//! two 4-byte stores of a key into one 8-byte store. The verifier rejects a misaligned stack
//! access (its tracking of stack slots needs aligned ones), so a key whose type is only 4-byte
//! aligned is built inside [`Aligned8`].

/// `T` at an 8-byte aligned stack address.
#[repr(C, align(8))]
pub struct Aligned8<T>(pub T);
