//! What placing a device needs from the hypervisor, and nothing else: interrupt lines
//! and doorbells. A live run gets them from KVM; a replay gets lines that count and no
//! doorbells, so both build their devices through the same code.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::AddressSpace;
use crate::irq::{CountingLine, InterruptLine};
use crate::kvm::{IoEvents, MsiRoutes, Vm};

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
    /// A level-triggered line for `gsi`, and the fd that says the guest ended the
    /// interrupt (none where nothing resamples).
    fn level_line(
        &self,
        gsi: u32,
    ) -> Result<(Arc<dyn InterruptLine>, Option<EventFd>), MachineError>;
    /// A fresh MSI vector: its GSI and the line that signals it.
    fn msi_vector(&self) -> Result<(u32, Arc<dyn InterruptLine>), MachineError>;
    /// Where MSI vectors are routed to the messages the guest programs.
    fn msi_routes(&self) -> Option<Arc<MsiRoutes>>;
    /// Registers doorbells while the VM runs (they move with a PCI BAR).
    fn ioevents(&self) -> Option<IoEvents>;
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

    fn level_line(
        &self,
        gsi: u32,
    ) -> Result<(Arc<dyn InterruptLine>, Option<EventFd>), MachineError> {
        let (line, resample) = self.level_irq_line(gsi)?;
        Ok((Arc::new(line), Some(resample)))
    }

    fn msi_vector(&self) -> Result<(u32, Arc<dyn InterruptLine>), MachineError> {
        let (gsi, line) = self.msi_routes().vector()?;
        Ok((gsi, Arc::new(line)))
    }

    fn msi_routes(&self) -> Option<Arc<MsiRoutes>> {
        Some(Vm::msi_routes(self))
    }

    fn ioevents(&self) -> Option<IoEvents> {
        Some(Vm::ioevents(self))
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

    fn level_line(
        &self,
        _gsi: u32,
    ) -> Result<(Arc<dyn InterruptLine>, Option<EventFd>), MachineError> {
        Ok((Arc::new(CountingLine::default()), None))
    }

    fn msi_vector(&self) -> Result<(u32, Arc<dyn InterruptLine>), MachineError> {
        Ok((0, Arc::new(CountingLine::default())))
    }

    fn msi_routes(&self) -> Option<Arc<MsiRoutes>> {
        None
    }

    fn ioevents(&self) -> Option<IoEvents> {
        None
    }
}
