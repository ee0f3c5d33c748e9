//! Asking the CPU for memory a little before it is read, without waiting for it: what is
//! read next (the next capture record, a packet a walker reaches soon, a flow or record
//! gone cold) then arrives while the work before it is done, instead of stalling that
//! read. A prefetch changes no result, only when bytes reach the cache.

/// The cache line holding `at`.
#[inline]
fn line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch reads nothing the program sees and never faults, whatever
        // the address; callers pass addresses of live values.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// The first `lines` cache lines' worth of `bytes` (64 bytes each), no further than its end.
#[inline]
pub fn bytes(bytes: &[u8], lines: usize) {
    for k in 0..lines {
        if let Some(b) = bytes.get(k * 64) {
            line(b);
        }
    }
}

/// All of `value` (its own bytes, not what it points to).
#[inline]
pub fn value<T>(value: &T) {
    let at = std::ptr::from_ref(value).cast::<u8>();
    for k in 0..std::mem::size_of::<T>().div_ceil(64) {
        line(at.wrapping_add(k * 64));
    }
}
