//! irqfd: an eventfd that KVM turns into an edge on a GSI of the in-kernel irqchip, with
//! no ioctl on the signalling path.

use std::sync::atomic::{AtomicU64, Ordering};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ioctl_error, KvmError};
use crate::irq::InterruptLine;

/// An interrupt line wired to a GSI through irqfd.
#[derive(Debug)]
pub struct IrqFd {
    event: EventFd,
    pulses: AtomicU64,
}

impl IrqFd {
    pub(super) fn register(vm: &VmFd, gsi: u32) -> Result<Self, KvmError> {
        let event = EventFd::new(EFD_NONBLOCK).map_err(KvmError::EventFd)?;
        vm.register_irqfd(&event, gsi)
            .map_err(ioctl_error("KVM_IRQFD"))?;
        Ok(Self {
            event,
            pulses: AtomicU64::new(0),
        })
    }
}

impl IrqFd {
    /// An irqfd for a level-triggered GSI, and the resample eventfd KVM signals when the
    /// guest ends the interrupt (the device then raises the line again if it is still
    /// asserted).
    pub(super) fn register_with_resample(vm: &VmFd, gsi: u32) -> Result<(Self, EventFd), KvmError> {
        let event = EventFd::new(EFD_NONBLOCK).map_err(KvmError::EventFd)?;
        let resample = EventFd::new(EFD_NONBLOCK).map_err(KvmError::EventFd)?;
        vm.register_irqfd_with_resample(&event, &resample, gsi)
            .map_err(ioctl_error("KVM_IRQFD (resample)"))?;
        let line = Self {
            event,
            pulses: AtomicU64::new(0),
        };
        Ok((line, resample))
    }
}

impl InterruptLine for IrqFd {
    fn pulse(&self) {
        // A full counter (2^64 - 2 unread edges) cannot happen: KVM consumes each write.
        if self.event.write(1).is_ok() {
            self.pulses.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn pulses(&self) -> u64 {
        self.pulses.load(Ordering::Relaxed)
    }
}
