//! Locking that survives a poisoned mutex.

use std::sync::{Mutex, MutexGuard};

/// `lock()` that recovers from poisoning. A device's or a buffer's state is plain data,
/// still consistent at every `await`-free point a panic could have left it, so a panic
/// on one thread must not make the device unreachable from the others.
pub trait LockExt<T: ?Sized> {
    /// Locks, taking the guard even if another thread panicked while holding it.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
