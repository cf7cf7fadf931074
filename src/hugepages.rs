//! A global allocator that asks Linux for transparent huge pages on large allocations.
//!
//! Batch-1 decoding streams every weight once per token (GPT-2-124M: 500 MB, the shared
//! head alone 154 MB) and training streams activations of tens of megabytes through the
//! matrix products. On 4 KiB pages each 4 KiB of that stream is a TLB miss; most Linux
//! distributions ship transparent huge pages in `madvise` mode, which gives 2 MiB pages
//! only to memory that asks for them. This allocator is the system allocator, plus that
//! request (`madvise(MADV_HUGEPAGE)`) on every allocation of at least [`MIN_BYTES`], made
//! before the memory is first touched when it is fresh from the kernel. Where huge pages
//! are off (`never`) or already on for all memory (`always`) the request changes nothing.
//!
//! The binary installs it (`#[global_allocator]` in `main.rs`); the library does not
//! impose it on other programs.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, with huge pages requested for large blocks.
pub struct HugePageAlloc;

/// Allocations of at least this many bytes ask for huge pages: a few huge pages' worth,
/// so that most of the block lies in whole 2 MiB pages.
pub const MIN_BYTES: usize = 4 << 20;

#[cfg(target_os = "linux")]
fn advise(ptr: *mut u8, size: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + size) & !(HUGE - 1);
    if end > start {
        // SAFETY: [start, end) lies inside the block just allocated; MADV_HUGEPAGE only
        // changes how the kernel backs those pages, never their contents. A failure (an
        // old kernel, a seccomp filter) leaves ordinary pages: nothing to report.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_ptr: *mut u8, _size: usize) {}

// SAFETY: every block comes from and returns to `System` with the layout it was asked
// with; the advice does not change what the block holds.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && layout.size() >= MIN_BYTES {
            advise(p, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() && layout.size() >= MIN_BYTES {
            advise(p, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && new_size >= MIN_BYTES {
            advise(p, new_size);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_contents_through_growth() {
        let a = HugePageAlloc;
        let small = Layout::from_size_align(1 << 10, 64).unwrap();
        // SAFETY: layouts are non-zero; every block is freed with the layout it has.
        unsafe {
            let p = a.alloc_zeroed(small);
            assert!(!p.is_null());
            assert!((0..1 << 10).all(|i| *p.add(i) == 0));
            for i in 0..1 << 10 {
                *p.add(i) = (i % 251) as u8;
            }
            let big = MIN_BYTES * 2 + 12345;
            let q = a.realloc(p, small, big);
            assert!(!q.is_null());
            assert!((0..1 << 10).all(|i| *q.add(i) == (i % 251) as u8));
            std::ptr::write_bytes(q.add(1 << 10), 7, big - (1 << 10));
            assert_eq!(*q.add(big - 1), 7);
            a.dealloc(q, Layout::from_size_align(big, 64).unwrap());
            let z = a.alloc_zeroed(Layout::from_size_align(MIN_BYTES, 4096).unwrap());
            assert!((0..MIN_BYTES).step_by(4093).all(|i| *z.add(i) == 0));
            a.dealloc(z, Layout::from_size_align(MIN_BYTES, 4096).unwrap());
        }
    }
}
