//! A global allocator that asks Linux for transparent huge pages on large allocations.
//!
//! Batch-1 decoding streams every weight once per token (GPT-2-124M: 500 MB, the shared
//! head alone 154 MB) and training streams activations of tens of megabytes through the
//! matrix products. On 4 KiB pages each 4 KiB of that stream is a TLB miss, and the
//! hardware prefetchers stop at every 4 KiB page boundary; most Linux distributions ship
//! transparent huge pages in `madvise` mode, which gives 2 MiB pages only to memory that
//! asks for them. This allocator is the system allocator, plus two things for every
//! allocation of at least [`MIN_BYTES`]: it starts on a 2 MiB boundary, and it asks for
//! huge pages (`madvise(MADV_HUGEPAGE)`) before the memory is first touched. Aligning the
//! start is what lets a block of a few megabytes — GPT-2's attention projection, 2.4 MB
//! per layer — lie in a whole huge page instead of straddling two that neither fit inside
//! it. Where huge pages are off (`never`) or already on for all memory (`always`) the
//! request changes nothing. The alignment costs address space: a large block sits at the
//! first huge page boundary inside a system block 2 MiB longer, of whose skipped start
//! only the page holding the system block's address is touched. Huge pages themselves cost
//! memory where a block is touched only in part: a touched huge page is backed whole
//! (GPT-2-124M's KV cache, 24 blocks of 3 MB, is then resident from its first positions
//! on: 612 -> 662 MB for a 200-token generation).
//!
//! The binary installs it (`#[global_allocator]` in `main.rs`); the library does not
//! impose it on other programs.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, with huge pages requested for large blocks.
pub struct HugePageAlloc;

/// Allocations of at least this many bytes start on a huge page and ask for huge pages.
pub const MIN_BYTES: usize = 1 << 20;

/// A transparent huge page on x86-64 (and the alignment large blocks get).
const HUGE: usize = 2 << 20;

/// Room before a large block for the address of the system block that holds it.
const HEADER: usize = 16;

/// Whether a block of `layout` is placed on a huge page boundary inside a larger system
/// block ([`HugePageAlloc::alloc_large`]) rather than allocated as asked.
fn is_large(layout: Layout) -> bool {
    layout.size() >= MIN_BYTES && layout.align() <= HUGE
}

/// The system block that holds a large block of `size` bytes: room for the header and
/// for moving the start to the next huge page boundary. `None` on overflow.
fn system_layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HUGE + HEADER)?, HEADER).ok()
}

#[cfg(target_os = "linux")]
fn advise(ptr: *mut u8, size: usize) {
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

impl HugePageAlloc {
    /// A large block: the next huge page boundary after the header inside a system block,
    /// zeroed the way the system zeroes (lazily, for memory fresh from the kernel), with
    /// the system block's address stored just before it.
    ///
    /// # Safety
    /// `layout` must be large ([`is_large`]).
    unsafe fn alloc_large(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let Some(outer) = system_layout(layout.size()) else { return std::ptr::null_mut() };
        // SAFETY: `outer` has a non-zero size.
        let base = unsafe { if zeroed { System.alloc_zeroed(outer) } else { System.alloc(outer) } };
        if base.is_null() {
            return base;
        }
        let offset = (base as usize + HEADER).next_multiple_of(HUGE) - base as usize;
        // SAFETY: offset <= HEADER + HUGE - 1, so the block (`layout.size()` bytes from
        // `base + offset`) and its header (the 8 bytes before it, after `base`) lie inside
        // the system block, which is HEADER-aligned, as the header's address then is.
        unsafe {
            let p = base.add(offset);
            (p.sub(8) as *mut usize).write(base as usize);
            advise(p, layout.size());
            p
        }
    }
}

// SAFETY: a large block lies inside a system block allocated with `system_layout` of its
// size, whose address its header keeps, and is freed through it; every other block comes
// from and returns to `System` with the caller's layout. Huge page boundaries satisfy
// every alignment a large block may ask for (at most HUGE); the advice does not change
// what a block holds.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            // SAFETY: large, checked.
            return unsafe { self.alloc_large(layout, false) };
        }
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            // SAFETY: large, checked.
            return unsafe { self.alloc_large(layout, true) };
        }
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout) {
            // SAFETY: a large block: its header holds its system block's address, which
            // was allocated with `system_layout` of this size (which exists, it did then).
            unsafe {
                let base = (ptr.sub(8) as *const usize).read() as *mut u8;
                System.dealloc(base, system_layout(layout.size()).expect("the layout it was allocated with"));
            }
            return;
        }
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees that `new_size`, rounded up to `layout.align()`,
        // does not overflow isize, and that it is not zero.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_large(layout) && !is_large(new_layout) {
            // SAFETY: forwarded from the caller.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // A large block moves to a new huge page boundary: a new block, the contents
        // copied, the old block freed.
        // SAFETY: `new_layout` is valid with a non-zero size; both blocks are live and
        // distinct while the contents are copied, each at least that long.
        unsafe {
            let p = self.alloc(new_layout);
            if !p.is_null() {
                std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_contents_through_growth() {
        let a = HugePageAlloc;
        let small = Layout::from_size_align(1 << 10, 64).unwrap();
        let fill = |p: *mut u8, n: usize, seed: usize| {
            // SAFETY: the callers pass live blocks of at least n bytes.
            (0..n).for_each(|i| unsafe { *p.add(i) = ((i + seed) % 251) as u8 })
        };
        let holds = |p: *const u8, n: usize, seed: usize| {
            // SAFETY: as for `fill`.
            (0..n).all(|i| unsafe { *p.add(i) } == ((i + seed) % 251) as u8)
        };
        // SAFETY: layouts are non-zero; every block is freed or grown with the layout it has.
        unsafe {
            let p = a.alloc_zeroed(small);
            assert!(!p.is_null());
            assert!((0..1 << 10).all(|i| *p.add(i) == 0));
            fill(p, 1 << 10, 0);
            // Small -> large -> larger -> small, through realloc.
            let big = MIN_BYTES * 2 + 12345;
            let q = a.realloc(p, small, big);
            assert!(!q.is_null());
            assert!((q as usize).is_multiple_of(HUGE), "a large block starts on a huge page");
            assert!(holds(q, 1 << 10, 0));
            fill(q, big, 3);
            let bigger = big * 3;
            let r = a.realloc(q, Layout::from_size_align(big, 64).unwrap(), bigger);
            assert!(!r.is_null() && (r as usize).is_multiple_of(HUGE));
            assert!(holds(r, big, 3));
            std::ptr::write_bytes(r.add(big), 7, bigger - big);
            assert_eq!(*r.add(bigger - 1), 7);
            let s = a.realloc(r, Layout::from_size_align(bigger, 64).unwrap(), 500);
            assert!(!s.is_null() && holds(s, 500, 3));
            a.dealloc(s, Layout::from_size_align(500, 64).unwrap());
            // Large zeroed blocks are zero, however the system provided them.
            for _ in 0..3 {
                let l = Layout::from_size_align(MIN_BYTES, 4096).unwrap();
                let z = a.alloc_zeroed(l);
                assert!(!z.is_null() && (z as usize).is_multiple_of(HUGE));
                assert!((0..MIN_BYTES).step_by(4093).all(|i| *z.add(i) == 0));
                fill(z, MIN_BYTES, 5);
                a.dealloc(z, l);
            }
            // An alignment beyond a huge page is the system's to give.
            let wide = Layout::from_size_align(MIN_BYTES, HUGE * 2).unwrap();
            let w = a.alloc(wide);
            assert!(!w.is_null() && (w as usize).is_multiple_of(HUGE * 2));
            fill(w, MIN_BYTES, 1);
            a.dealloc(w, wide);
        }
    }
}
