//! The sampler allocates nothing per token: a counting global allocator watches many calls
//! with every stage on (penalty, top-k, top-p, min-p, temperature) at a real vocabulary size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use tomoe::chat::{Sampler, SamplerParams};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the test's thread: the test harness's own threads allocate at any time (seen as
    /// a flaky count of 4 on a loaded machine), and those are not the sampler's.
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if WATCHED.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn sampling_does_not_allocate() {
    WATCHED.with(|w| w.set(true));
    const VOCAB: usize = 49_152;
    let configs = [
        SamplerParams {
            repeat_penalty: 1.1,
            ..Default::default()
        },
        SamplerParams {
            top_k: 0,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.3,
            seed: 3,
            ..Default::default()
        },
        SamplerParams {
            temperature: 0.0,
            repeat_penalty: 1.2,
            ..Default::default()
        },
    ];
    for p in configs {
        let at_new = ALLOCS.load(Ordering::Relaxed);
        let mut sampler = Sampler::new(p, VOCAB);
        assert!(
            ALLOCS.load(Ordering::Relaxed) > at_new,
            "the counter sees the buffers made by new()"
        );
        let mut logits: Vec<f32> = (0..VOCAB)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let mut history: Vec<u32> = Vec::with_capacity(256);
        let base = logits.clone();
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..100 {
            logits.copy_from_slice(&base);
            let t = sampler.sample(&mut logits, &history);
            assert!((t as usize) < VOCAB);
            history.push(t);
        }
        let after = ALLOCS.load(Ordering::Relaxed);
        assert_eq!(after - before, 0, "allocations during 100 sample calls");
    }
}
