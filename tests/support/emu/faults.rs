//! Faults a test injects and an emulator serves: in order, each to the first request it
//! applies to, each a given number of times.

use std::collections::VecDeque;
use std::sync::Mutex;

/// A queue of faults of an emulator's own fault type `F`.
pub struct FaultQueue<F> {
    inner: Mutex<(VecDeque<F>, usize)>,
}

impl<F: Clone> Default for FaultQueue<F> {
    fn default() -> Self {
        FaultQueue {
            inner: Mutex::new((VecDeque::new(), 0)),
        }
    }
}

impl<F: Clone> FaultQueue<F> {
    /// Serves `fault` `times` times, after any faults injected before.
    pub fn inject(&self, fault: F, times: usize) {
        let mut q = self.inner.lock().unwrap();
        for _ in 0..times {
            q.0.push_back(fault.clone());
        }
    }

    /// The first pending fault that `applies` to the request at hand, taken off the queue.
    pub fn take(&self, applies: impl Fn(&F) -> bool) -> Option<F> {
        let mut q = self.inner.lock().unwrap();
        let i = q.0.iter().position(applies)?;
        q.1 += 1;
        q.0.remove(i)
    }

    pub fn pending(&self) -> usize {
        self.inner.lock().unwrap().0.len()
    }

    pub fn served(&self) -> usize {
        self.inner.lock().unwrap().1
    }

    pub fn clear(&self) {
        self.inner.lock().unwrap().0.clear();
    }
}
