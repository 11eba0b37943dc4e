//! What every fuzz binary shares: an allocator that counts, and [`fuzz`], which runs a target's
//! body on one input and fails the input if the body held more memory at its peak than the
//! target's budget (`consentgate_fuzzing::Budget`) allows.
//!
//! libFuzzer's own `-malloc_limit_mb` needs a sanitizer's allocator hooks, which a stable build
//! (`cargo fuzz run -s none`) does not have; `-rss_limit_mb` only sees the whole process. This
//! allocator sees every allocation, so "no unbounded allocation" is checked per input, against a
//! bound stated per target in crates/fuzzing.

use consentgate_fuzzing::Target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting bytes live and the peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the pointer and layout the caller allocated with.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `target` on `data` and panics (a libFuzzer crash) if the body's peak memory beyond what
/// was live before it exceeds the target's budget for an input of this length.
pub fn fuzz(target: &Target, data: &[u8]) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    target.exercise(data);
    let held = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let budget = target.budget.bytes(data.len());
    assert!(
        held <= budget,
        "{}: held {held} bytes at its peak for a {}-byte input (budget {budget})",
        target.name,
        data.len()
    );
}
