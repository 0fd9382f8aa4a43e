//! A team of compute threads for decoding. One token is ~150 short parallel regions (about
//! 10-100 µs each on a small model); a pool whose idle workers sleep pays a wake-up per region,
//! which on SmolLM2 cost a quarter of the time at 2 threads. The team's workers spin between
//! regions (as llama.cpp's do) and park only after ~2 ms without work, so an idle chat does not
//! burn the CPU.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

/// Spin iterations before a worker parks (each a `spin_loop` hint, tens of ns).
const SPINS: u32 = 100_000;

/// Spin iterations between yields of the CPU. When other threads want the cores (a busy laptop,
/// a phone's other apps), a spinning thread would otherwise hold its core for a whole time slice
/// while the thread it waits for is not running; with the cores free, a yield returns at once
/// (one system call per tens of µs of spinning).
const SPINS_PER_YIELD: u32 = 1024;

/// The job of one region, on the caller's stack; workers reach it through a thin pointer.
struct Job<'f> {
    f: &'f (dyn Fn(usize) + Sync),
}

struct Shared {
    epoch: AtomicU64,
    job: AtomicPtr<()>,
    remaining: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleeping: Vec<AtomicBool>,
}

/// `n` threads: the caller of [`Team::run`] and `n - 1` workers.
pub struct Team {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    handles: Vec<JoinHandle<()>>,
}

impl Team {
    pub fn new(n: usize) -> std::io::Result<Team> {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleeping: (1..n).map(|_| AtomicBool::new(false)).collect(),
        });
        let mut handles = Vec::with_capacity(n - 1);
        for i in 1..n {
            let s = shared.clone();
            handles.push(thread::Builder::new().name(format!("tomoe-team-{i}")).spawn(move || worker(&s, i))?);
        }
        let threads = handles.iter().map(|h| h.thread().clone()).collect();
        Ok(Team { shared, threads, handles })
    }

    /// Threads in the team, the caller included.
    pub fn size(&self) -> usize {
        self.threads.len() + 1
    }

    /// Runs `f(0)` on the calling thread and `f(i)` for `i in 1..size()` on the workers, and
    /// returns when all have finished. A panic in any of them is resumed here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads.is_empty() {
            return f(0);
        }
        let s = &*self.shared;
        let job = Job { f };
        s.job.store(&job as *const Job as *mut (), Ordering::Release);
        s.remaining.store(self.threads.len(), Ordering::Release);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for (t, sleeping) in self.threads.iter().zip(&s.sleeping) {
            if sleeping.load(Ordering::SeqCst) {
                t.unpark();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        // `job` lives on this stack: wait for every worker to be done with it, even on a panic.
        let mut spins = 0u32;
        while s.remaining.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins % SPINS_PER_YIELD == 0 {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a compute thread panicked");
        }
    }
}

fn worker(s: &Shared, i: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            if spins < SPINS {
                spins += 1;
                if spins % SPINS_PER_YIELD == 0 {
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            } else {
                // Announce the sleep, then re-check: `run` bumps the epoch before reading the
                // flag, so either it sees the flag and unparks us or we see the new epoch.
                s.sleeping[i - 1].store(true, Ordering::SeqCst);
                if s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                    thread::park_timeout(Duration::from_millis(50));
                }
                s.sleeping[i - 1].store(false, Ordering::SeqCst);
            }
        }
        // SAFETY: the pointer was stored by `run` before it bumped the epoch (Release/Acquire),
        // and `run` does not return (so the `Job` stays alive) until `remaining` reaches 0,
        // which happens only after this worker's decrement below.
        let job = unsafe { &*(s.job.load(Ordering::Acquire) as *const Job) };
        if catch_unwind(AssertUnwindSafe(|| (job.f)(i))).is_err() {
            s.panicked.store(true, Ordering::Release);
        }
        s.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in &self.threads {
            t.unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

thread_local! {
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with `team` as the current thread's team (see [`with_current`]).
pub fn install<R>(team: &Team, f: impl FnOnce() -> R) -> R {
    struct Reset(*const Team);
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(CURRENT.with(|c| c.replace(team)));
    f()
}

/// The team installed on this thread, if any.
pub fn with_current<R>(f: impl FnOnce(Option<&Team>) -> R) -> R {
    let p = CURRENT.with(|c| c.get());
    // SAFETY: `install` sets the pointer from a `&Team` that outlives the closure it runs, and
    // restores the previous value when that closure returns or unwinds.
    f(unsafe { p.as_ref() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_index_runs_once_per_region() {
        let team = Team::new(3).unwrap();
        let counts: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            team.run(&|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1000));
    }

    #[test]
    fn workers_wake_after_parking() {
        let team = Team::new(2).unwrap();
        let hits = AtomicUsize::new(0);
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(30)); // long enough for the worker to park
            team.run(&|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(hits.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_team_survives() {
        let team = Team::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| team.run(&|i| assert_ne!(i, 1, "worker fails"))));
        assert!(r.is_err());
        let hits = AtomicUsize::new(0);
        team.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }
}
