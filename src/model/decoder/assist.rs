//! A second thread's hand in one thread's matrix products, while it would otherwise wait.
//!
//! Pipelined speculative decoding gives each of two cores a stage; after a wrong draft the
//! verifying thread waits while the drafter recomputes the corrected row through its blocks
//! on one core. With an [`Assist`] the drafter offers the second half of each linear
//! layer's columns; a thread that is waiting anyway claims the offer and computes them,
//! while the drafter computes the first half. An offer nobody has claimed by the time the
//! drafter is done with its half is withdrawn and computed by the drafter, so it never waits
//! on a thread that is busy. Columns are summed as [`super::linear_cols`] sums them
//! (`kernels::matrix_cols_accumulate`: each output's order is fixed by the layer's shape,
//! whatever the split), so the result is bit for bit the one-thread result.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU8, Ordering};

const IDLE: u8 = 0;
const OFFERED: u8 = 1;
const CLAIMED: u8 = 2;
const DONE: u8 = 3;

/// The columns `c0..c0 + nb` of `x @ w + b` for the rows of `x` (`[m, k]`; `w` `[k, n]`).
#[derive(Clone, Copy)]
struct Job {
    x: *const f32,
    x_len: usize,
    k: usize,
    w: *const f32,
    b: *const f32,
    n: usize,
    c0: usize,
    nb: usize,
}

/// One offer at a time, from one owner thread to any number of idle threads (one claims it).
pub struct Assist {
    state: AtomicU8,
    job: UnsafeCell<Job>,
    out: UnsafeCell<Vec<f32>>,
}

// SAFETY: `job` is written by the owner only while the state is IDLE (nobody else reads it
// then) and read by the claiming thread only between its CLAIMED and DONE; `out` is written
// by the claimer between CLAIMED and DONE and read by the owner after it sees DONE
// (release/acquire on `state` orders both). The pointers in `job` stay valid until the owner
// has seen DONE or withdrawn the offer, which it does before `linear` returns.
unsafe impl Sync for Assist {}

/// Columns are offered in multiples of this (whole vectors).
const ALIGN: usize = 16;

impl Default for Assist {
    fn default() -> Self {
        Self::new()
    }
}

impl Assist {
    pub fn new() -> Self {
        let job = Job { x: std::ptr::null(), x_len: 0, k: 0, w: std::ptr::null(), b: std::ptr::null(), n: 0, c0: 0, nb: 0 };
        Self { state: AtomicU8::new(IDLE), job: UnsafeCell::new(job), out: UnsafeCell::new(Vec::new()) }
    }

    /// `y = x @ w + b` (`[m, n]`), offering the upper half of the columns to a waiting
    /// thread ([`Self::serve`]); computes them itself when nobody claimed them in time.
    pub fn linear(&self, x: &[f32], k: usize, (w, b): (&[f32], &[f32]), y: &mut Vec<f32>, mine: &mut Vec<f32>) {
        let n = b.len();
        let m = x.len() / k;
        let split = (n / 2).div_ceil(ALIGN) * ALIGN;
        if split == 0 || split >= n {
            return cols(x, k, w, b, 0, n, y);
        }
        debug_assert_eq!(self.state.load(Ordering::Relaxed), IDLE);
        // SAFETY: IDLE: no other thread reads the job (see the Sync impl).
        unsafe {
            *self.job.get() = Job { x: x.as_ptr(), x_len: x.len(), k, w: w.as_ptr(), b: b.as_ptr(), n, c0: split, nb: n - split };
        }
        self.state.store(OFFERED, Ordering::Release);
        cols(x, k, w, b, 0, split, mine);
        let theirs = match self.state.compare_exchange(OFFERED, IDLE, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => None, // withdrawn: nobody touched it
            Err(_) => {
                while self.state.load(Ordering::Acquire) != DONE {
                    std::hint::spin_loop();
                }
                Some(())
            }
        };
        y.clear();
        y.resize(m * n, 0.0);
        for r in 0..m {
            y[r * n..r * n + split].copy_from_slice(&mine[r * split..(r + 1) * split]);
        }
        match theirs {
            Some(()) => {
                // SAFETY: DONE: the claimer has finished writing `out` and no longer reads the job.
                let out = unsafe { &*self.out.get() };
                for r in 0..m {
                    y[r * n + split..(r + 1) * n].copy_from_slice(&out[r * (n - split)..(r + 1) * (n - split)]);
                }
                self.state.store(IDLE, Ordering::Release);
            }
            None => {
                cols(x, k, w, b, split, n - split, mine);
                for r in 0..m {
                    y[r * n + split..(r + 1) * n].copy_from_slice(&mine[r * (n - split)..(r + 1) * (n - split)]);
                }
            }
        }
    }

    /// Computes the offered columns, if there is an offer; returns whether it did.
    pub fn serve(&self) -> bool {
        if self.state.load(Ordering::Relaxed) != OFFERED
            || self.state.compare_exchange(OFFERED, CLAIMED, Ordering::AcqRel, Ordering::Relaxed).is_err()
        {
            return false;
        }
        // SAFETY: CLAIMED: the owner waits for DONE before it touches the job's buffers, and
        // nobody else reads or writes `out` (see the Sync impl).
        unsafe {
            let j = *self.job.get();
            let x = std::slice::from_raw_parts(j.x, j.x_len);
            let w = std::slice::from_raw_parts(j.w, j.k * j.n);
            let b = std::slice::from_raw_parts(j.b, j.n);
            cols(x, j.k, w, b, j.c0, j.nb, &mut *self.out.get());
        }
        self.state.store(DONE, Ordering::Release);
        true
    }
}

/// Columns `c0..c0 + nb` of `x @ w + b` into `y` (`[m, nb]`), as `linear_cols` sums them.
fn cols(x: &[f32], k: usize, w: &[f32], b: &[f32], c0: usize, nb: usize, y: &mut Vec<f32>) {
    let (m, n) = (x.len() / k, b.len());
    y.clear();
    for _ in 0..m {
        y.extend_from_slice(&b[c0..c0 + nb]);
    }
    crate::kernels::matrix_cols_accumulate(x, k, w, n, c0, nb, y);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    fn one_thread(x: &[f32], k: usize, w: &[f32], b: &[f32]) -> Vec<f32> {
        let mut y = Vec::new();
        cols(x, k, w, b, 0, b.len(), &mut y);
        y
    }

    /// With a helper serving, without one, and with one that comes and goes: the same bits.
    #[test]
    fn assisted_products_are_the_one_thread_products() {
        let (k, n) = (128, 384);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 977.0).collect();
        let b: Vec<f32> = (0..n).map(|i| (i as f32 - 190.0) / 311.0).collect();
        let assist = Assist::new();
        let stop = AtomicBool::new(false);
        let served = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Serve only some of the time, so offers are both claimed and withdrawn.
                    i += 1;
                    if !i.is_multiple_of(3) && assist.serve() {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    std::hint::spin_loop();
                }
            });
            let (mut y, mut mine) = (Vec::new(), Vec::new());
            // On a busy machine the helper may not run at first: go on until it has served
            // a few offers (for a minute at most).
            let start = std::time::Instant::now();
            for rep in 0.. {
                let rows = [1, 2, 5][rep % 3];
                let x: Vec<f32> = (0..rows * k).map(|i| ((i * 31 + rep * 17) % 97) as f32 / 41.0 - 1.1).collect();
                assist.linear(&x, k, (&w, &b), &mut y, &mut mine);
                assert_eq!(y, one_thread(&x, k, &w, &b), "{rows} rows, repetition {rep}");
                if rep >= 600 && (served.load(Ordering::Relaxed) >= 10 || start.elapsed().as_secs() >= 60) {
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(served.load(Ordering::Relaxed) > 0, "the helper never claimed an offer");
        // Nobody serving: every offer is withdrawn.
        let x: Vec<f32> = (0..k).map(|i| i as f32 / 50.0).collect();
        let (mut y, mut mine) = (Vec::new(), Vec::new());
        assist.linear(&x, k, (&w, &b), &mut y, &mut mine);
        assert_eq!(y, one_thread(&x, k, &w, &b));
        assert!(!assist.serve(), "no offer is left behind");
    }
}
