//! A small spinning thread pool. One inference runs tens of steps that each take tens of
//! microseconds at batch 1, so waking sleeping threads per step (as a general-purpose pool does)
//! would cost as much as the work. Workers spin on an epoch counter for a while after each job
//! and only then block on a condition variable; the calling thread always takes part.
//!
//! Tasks are claimed dynamically and a job is over when all its tasks are done, not when every
//! worker has checked in: on a busy machine a worker that is not scheduled in time simply finds
//! nothing left to do, instead of stalling every step for a scheduler tick.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it blocks (a whole batch-1 inference fits in this).
const SPIN: Duration = Duration::from_millis(2);

type Task = dyn Fn(usize, usize) + Sync;

struct Shared {
    epoch: AtomicU64,
    /// The newest epoch whose job no longer accepts workers.
    closed: AtomicU64,
    /// Workers currently inside a job.
    active: AtomicUsize,
    /// The current job: a type-erased `&Task`, its task count and claim/finish counters.
    job_ptr: AtomicPtr<()>,
    job_meta: AtomicUsize,
    n: AtomicUsize,
    next: AtomicUsize,
    /// Consecutive tasks claimed at once.
    chunk: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Workers blocked (or about to block) on `wake`: a job wakes them only when there are
    /// some, so a busy pool makes no system call per job.
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// Splits a `&dyn Fn` reference into two words so it can live in atomics.
fn erase(f: &(dyn Fn(usize, usize) + Sync + '_)) -> (*mut (), usize) {
    // SAFETY: a reference to a trait object is two pointer-sized words.
    let words: [usize; 2] = unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync + '_), [usize; 2]>(f) };
    (words[0] as *mut (), words[1])
}

/// # Safety
/// The words must come from `erase` of a task that is still alive.
unsafe fn unerase<'a>(p: *mut (), meta: usize) -> &'a Task {
    let words = [p as usize, meta];
    unsafe { std::mem::transmute::<[usize; 2], &'a Task>(words) }
}

/// Claims and runs tasks of the current job until none is left.
fn drain(s: &Shared, f: &Task, n: usize, thread: usize) {
    let chunk = s.chunk.load(Ordering::Relaxed).max(1);
    loop {
        let i0 = s.next.fetch_add(chunk, Ordering::Relaxed);
        if i0 >= n {
            break;
        }
        let i1 = (i0 + chunk).min(n);
        if catch_unwind(AssertUnwindSafe(|| (i0..i1).for_each(|i| f(i, thread)))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.done.fetch_add(i1 - i0, Ordering::Release);
    }
}

fn wait_until(cond: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !cond() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(512) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

impl Pool {
    /// A pool that runs jobs on `threads` threads in total (the caller plus `threads - 1` workers).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            job_ptr: AtomicPtr::new(std::ptr::null_mut()),
            job_meta: AtomicUsize::new(0),
            n: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            chunk: AtomicUsize::new(1),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for index in 1..threads {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("penni-engine-{index}"))
                .spawn(move || worker(shared, index))?;
            workers.push(handle);
        }
        Ok(Pool { threads, shared, workers })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(i, thread)` for every i in 0..n, handing tasks out dynamically in order, and
    /// returns false if a task panicked. The result of a task must not depend on which thread
    /// runs it (every kernel here computes each output in a fixed order), so results are
    /// identical for any thread count.
    pub fn for_each(&self, n: usize, task: &(dyn Fn(usize, usize) + Sync)) -> bool {
        if n == 0 {
            return true;
        }
        if self.threads == 1 || n == 1 {
            return catch_unwind(AssertUnwindSafe(|| {
                for i in 0..n {
                    task(i, 0)
                }
            }))
            .is_ok();
        }
        let s = &*self.shared;
        let (p, meta) = erase(task);
        s.job_ptr.store(p, Ordering::Relaxed);
        s.job_meta.store(meta, Ordering::Relaxed);
        s.n.store(n, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        // Claim contiguous runs of n / threads tasks: one claim per thread when all keep pace.
        // Claiming task by task made two threads contend on these counters for every
        // microsecond-sized task (no faster than one thread); neighbouring tasks also share
        // input rows, which now stay in one core's cache.
        s.chunk.store((n / self.threads).max(1), Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        // A worker about to sleep counts itself in `sleepers` and then checks the epoch again
        // (all SeqCst): either it sees this epoch, or this sees it counted and wakes it, taking
        // the lock, which it holds until it is waiting.
        let epoch = s.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            drop(s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner()));
            s.wake.notify_all();
        }
        // SAFETY: `task` outlives this call.
        drain(s, unsafe { unerase(p, meta) }, n, 0);
        wait_until(|| s.done.load(Ordering::Acquire) == n);
        // no worker may enter this job from now on; wait for those inside to leave
        s.closed.store(epoch, Ordering::SeqCst);
        wait_until(|| s.active.load(Ordering::SeqCst) == 0);
        !s.panicked.load(Ordering::Relaxed)
    }
}

fn worker(s: Arc<Shared>, index: usize) {
    let mut seen = 0u64;
    loop {
        // wait for a new epoch: spin first, then sleep
        let start = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let g = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                if s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::Acquire) {
                    drop(
                        s.wake
                            .wait_timeout(g, Duration::from_millis(100))
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            } else {
                std::hint::spin_loop();
            }
        };
        seen = epoch;
        s.active.fetch_add(1, Ordering::SeqCst);
        // Either the caller sees us active and waits, or we see the job closed and stay out.
        if s.closed.load(Ordering::SeqCst) < epoch {
            let (p, meta) = (s.job_ptr.load(Ordering::Relaxed), s.job_meta.load(Ordering::Relaxed));
            // SAFETY: the job stays alive until `active` drops back to zero.
            let f = unsafe { unerase(p, meta) };
            drain(&s, f, s.n.load(Ordering::Relaxed), index);
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _g = self.shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads).unwrap();
            for round in 0..200 {
                if round % 50 == 49 {
                    // let the workers fall asleep, so that the wake-up path runs too
                    std::thread::sleep(SPIN * 3);
                }
                let n = round * 7 % 23;
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                assert!(pool.for_each(n, &|i, t| {
                    assert!(t < threads);
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }));
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn a_panicking_task_is_reported() {
        let pool = Pool::new(2).unwrap();
        let ok = pool.for_each(8, &|i, _| {
            if i == 5 {
                panic!("boom");
            }
        });
        assert!(!ok);
        assert!(pool.for_each(4, &|_, _| {}));
    }
}
