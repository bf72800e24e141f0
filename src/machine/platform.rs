//! What placing a device needs from the hypervisor, and nothing else: interrupt lines
//! and doorbells. A live run gets them from KVM; a replay gets lines that count and no
//! doorbells, so both build their devices through the same code.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::AddressSpace;
use crate::irq::{CountingLine, InterruptLine};
use crate::kvm::Vm;

use super::MachineError;

/// Interrupt lines and doorbells for the devices being placed.
pub trait Platform {
    /// The line for `gsi`.
    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn InterruptLine>, MachineError>;
    /// An ioeventfd for a doorbell at `addr` (`datamatch: None`, a length-0 one), if
    /// this platform has them.
    fn doorbell(
        &self,
        space: AddressSpace,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<Option<EventFd>, MachineError>;
}

impl Platform for Vm {
    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn InterruptLine>, MachineError> {
        Ok(Arc::new(Vm::irq_line(self, gsi)?))
    }

    fn doorbell(
        &self,
        space: AddressSpace,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<Option<EventFd>, MachineError> {
        Ok(Some(Vm::doorbell(self, space, addr, datamatch)?))
    }
}

/// No hypervisor (replay): lines that count, no doorbell fds (a replayed doorbell comes
/// from the trace).
pub struct Unplugged;

impl Platform for Unplugged {
    fn irq_line(&self, _gsi: u32) -> Result<Arc<dyn InterruptLine>, MachineError> {
        Ok(Arc::new(CountingLine::default()))
    }

    fn doorbell(
        &self,
        _: AddressSpace,
        _: u64,
        _: Option<u32>,
    ) -> Result<Option<EventFd>, MachineError> {
        Ok(None)
    }
}
