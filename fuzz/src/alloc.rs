//! A global allocator wrapper that records the largest single allocation a thread makes
//! while "armed", so the fuzzer can confirm that no input makes a reader allocate what
//! the file merely declares.
//!
//! Install it in a binary or test crate with
//! `#[global_allocator] static A: flowar_fuzz::TrackingAlloc = flowar_fuzz::TrackingAlloc;`.
//! Without it, [`disarm`] reports 0.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Allocations above this size while armed are refused (the process aborts with Rust's
/// "memory allocation of N bytes failed" rather than eating the machine's memory).
pub const REFUSE_ABOVE: usize = 8 << 30;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Records sizes for the current thread; see the module docs.
pub struct TrackingAlloc;

/// Notes an allocation of `size`; false when it must be refused.
#[inline]
fn note(size: usize) -> bool {
    ARMED
        .try_with(|a| {
            if !a.get() {
                return true;
            }
            let _ = LARGEST.try_with(|l| {
                if size > l.get() {
                    l.set(size);
                }
            });
            size <= REFUSE_ABOVE
        })
        .unwrap_or(true)
}

// SAFETY: every call is forwarded to the system allocator unchanged, except refusals,
// which return null as the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Starts recording on this thread.
pub fn arm() {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
}

/// Stops recording and returns the largest allocation since [`arm`].
pub fn disarm() -> usize {
    ARMED.with(|a| a.set(false));
    LARGEST.with(Cell::get)
}
