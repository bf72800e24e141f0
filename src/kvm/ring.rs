//! KVM's coalesced ring, mapped from a vCPU fd: one page shared with the kernel, in
//! which KVM appends posted writes and userspace consumes them.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring};
use kvm_ioctls::VcpuFd;

use super::KvmError;
use crate::bus::AddressSpace;
use crate::posted::{PostedWrite, PostedWriteRing};

/// The mapped ring page.
#[derive(Debug)]
pub struct KvmRing {
    page: NonNull<u8>,
    page_size: usize,
    capacity: u32,
}

// SAFETY: the page is plain shared memory. The indices are only accessed atomically, and
// entries are read only by `pop`, whose callers serialise (PostedWrites' drain lock).
unsafe impl Send for KvmRing {}
// SAFETY: see Send.
unsafe impl Sync for KvmRing {}

const FIRST_OFFSET: usize = std::mem::offset_of!(kvm_coalesced_mmio_ring, first);
const LAST_OFFSET: usize = std::mem::offset_of!(kvm_coalesced_mmio_ring, last);
const ENTRIES_OFFSET: usize = std::mem::size_of::<kvm_coalesced_mmio_ring>();
const ENTRY_SIZE: usize = std::mem::size_of::<kvm_coalesced_mmio>();

impl KvmRing {
    /// Maps the ring at page `page_offset` of the vCPU fd (the value KVM gave for
    /// KVM_CAP_COALESCED_MMIO).
    pub(super) fn map(fd: &VcpuFd, page_offset: u32) -> Result<Self, KvmError> {
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a fresh shared mapping of one page of the vCPU fd at the offset KVM
        // documents for the ring; the result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                (page_offset as usize * page_size) as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(KvmError::Ioctl {
                what: "mmap of the coalesced ring",
                source: kvm_ioctls::Error::last(),
            });
        }
        let page = NonNull::new(addr.cast::<u8>())
            .ok_or(KvmError::MissingCapability("a mappable coalesced ring"))?;
        let capacity = ((page_size - ENTRIES_OFFSET) / ENTRY_SIZE) as u32;
        Ok(Self {
            page,
            page_size,
            capacity,
        })
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is that of `first` or `last`, 4-byte aligned fields inside the
        // page, which stays mapped while `self` lives.
        unsafe { &*self.page.as_ptr().add(offset).cast::<AtomicU32>() }
    }
}

impl PostedWriteRing for KvmRing {
    fn is_empty(&self) -> bool {
        // Acquire on `first` too: a drainer raised its `draining` flag before it advanced
        // `first` (PostedWrites::apply_pending relies on seeing it).
        self.index(FIRST_OFFSET).load(Ordering::Acquire)
            == self.index(LAST_OFFSET).load(Ordering::Acquire)
    }

    fn pop(&self) -> Option<PostedWrite> {
        let first = self.index(FIRST_OFFSET).load(Ordering::Relaxed);
        let last = self.index(LAST_OFFSET).load(Ordering::Acquire);
        if first == last || first >= self.capacity {
            return None;
        }
        let at = ENTRIES_OFFSET + first as usize * ENTRY_SIZE;
        // SAFETY: `first < capacity`, so the entry lies inside the page; KVM published it
        // before the `last` we loaded with Acquire, and does not rewrite it until we
        // advance `first`.
        let entry: kvm_coalesced_mmio =
            unsafe { std::ptr::read_volatile(self.page.as_ptr().add(at).cast()) };
        self.index(FIRST_OFFSET)
            .store((first + 1) % self.capacity, Ordering::Release);
        // SAFETY: `pio` and `padding` are two names for the same u32.
        let pio = unsafe { entry.__bindgen_anon_1.pio };
        Some(PostedWrite {
            space: if pio != 0 {
                AddressSpace::Pio
            } else {
                AddressSpace::Mmio
            },
            addr: entry.phys_addr,
            len: entry.len.min(8),
            data: entry.data,
        })
    }
}

impl Drop for KvmRing {
    fn drop(&mut self) {
        // SAFETY: the page was mapped in `map` with this size and is unmapped once.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.page_size) };
    }
}
