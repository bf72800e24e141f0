//! `kvm_run.immediate_exit` for other threads: how a pause or a stop gets a vCPU out of
//! `KVM_RUN` without polling.
//!
//! A requester sets the flag, then signals the vCPU's thread. KVM reads the flag when
//! `KVM_RUN` starts and returns `EINTR` if it is set, and a signal that arrives while the
//! vCPU is in the guest makes `KVM_RUN` return `EINTR` too. Together they cover the
//! window a signal alone misses: a signal that lands after the vCPU thread checked its
//! requests but before it entered `KVM_RUN` is spent on the (empty) handler, and the flag
//! it left set sends `KVM_RUN` straight back.
//!
//! KVM completes a pending I/O exit (the data of an IN or an MMIO read that userspace
//! put in `kvm_run`) before it looks at the flag (api.rst: userspace "can re-enter the
//! guest ... with the immediate_exit field set to complete pending operations without
//! allowing any further instructions to be executed"), so a vCPU that leaves `KVM_RUN`
//! this way has finished its last instruction: its registers are consistent
//! (`kvm/run_flag_tests.rs` checks both on this host).

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;

use super::KvmError;

/// A vCPU's `immediate_exit` byte, through a mapping of its own.
///
/// The flag maps the vCPU fd's `kvm_run` page a second time rather than borrowing
/// kvm-ioctls' mapping, so its lifetime does not depend on the vCPU's: a requester can
/// hold it after the vCPU thread ended (the mapping keeps KVM's vCPU alive).
#[derive(Debug)]
pub struct RunFlag {
    page: NonNull<u8>,
    page_size: usize,
}

// SAFETY: the page is shared memory that hushvm only reads and writes through the atomic
// byte below; KVM reads it in the kernel.
unsafe impl Send for RunFlag {}
// SAFETY: see Send.
unsafe impl Sync for RunFlag {}

const IMMEDIATE_EXIT_OFFSET: usize = std::mem::offset_of!(kvm_run, immediate_exit);

impl RunFlag {
    /// Maps the first page of `fd`'s `kvm_run`, which holds `immediate_exit`.
    pub(super) fn map(fd: &VcpuFd) -> Result<Self, KvmError> {
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a fresh shared mapping of the first page of the vCPU fd, where KVM
        // places kvm_run (offset 0); the result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(KvmError::Ioctl {
                what: "mmap of kvm_run for immediate_exit",
                source: kvm_ioctls::Error::last(),
            });
        }
        let page = NonNull::new(addr.cast::<u8>())
            .ok_or(KvmError::MissingCapability("a mappable kvm_run"))?;
        Ok(Self { page, page_size })
    }

    fn byte(&self) -> &AtomicU8 {
        // SAFETY: `immediate_exit` is a byte of kvm_run inside the first page, which stays
        // mapped while `self` lives. For Rust, writes through this mapping are changes
        // from outside the program, like the kernel's own writes to kvm_run; hushvm
        // touches this byte nowhere else.
        unsafe {
            &*self
                .page
                .as_ptr()
                .add(IMMEDIATE_EXIT_OFFSET)
                .cast::<AtomicU8>()
        }
    }

    /// Makes the vCPU's next (or current) `KVM_RUN` return `EINTR` before the guest runs
    /// another instruction. SeqCst: ordered after the requester's own request flag.
    pub fn set(&self) {
        self.byte().store(1, Ordering::SeqCst);
    }

    /// Lets `KVM_RUN` enter the guest again. SeqCst (a full barrier): the vCPU's next
    /// look at its requests comes after this store, so a request raised after that look
    /// finds the flag still set.
    pub(super) fn clear(&self) {
        self.byte().store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set (tests).
    pub fn is_set(&self) -> bool {
        self.byte().load(Ordering::SeqCst) != 0
    }
}

impl Drop for RunFlag {
    fn drop(&mut self) {
        // SAFETY: the page was mapped in `map` with this size and is unmapped once.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.page_size) };
    }
}

#[cfg(test)]
#[path = "run_flag_tests.rs"]
mod tests;
