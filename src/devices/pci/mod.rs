//! PCI: configuration spaces, the root bus and its two configuration mechanisms, MSI-X.
//!
//! Everything here is a register-level model with no KVM in it. The seams the machine
//! fills are small traits: [`host::BarObserver`] (a guest moved a BAR: move the device
//! on the MMIO or port bus) and [`msix::MsiSink`] (route and raise an MSI vector).
//!
//! A function's registers live in its [`config::ConfigSpace`]; the function itself
//! (the host bridge, a virtio-pci transport) implements [`PciFunction`] on top of it, so
//! that it can react to writes to its own capabilities (MSI-X control, virtio's pci_cfg
//! window).

pub mod config;
pub mod host;
pub mod msix;

#[cfg(test)]
mod tests;

pub use config::{BarChange, BarKind, ConfigSpace, PciError, PciIds};

/// A PCI function as the root bus sees it: its configuration space.
///
/// The root splits every access at dword boundaries, so `data` never crosses one; an
/// offset is below 4096 (PCIe's extended configuration space).
pub trait PciFunction: Send {
    /// Reads configuration space (mutable: a window like virtio's pci_cfg reads device
    /// registers that change when read).
    fn read_config(&mut self, offset: u16, data: &mut [u8]);
    /// Writes configuration space; returns the BAR move the write made, if any.
    fn write_config(&mut self, offset: u16, data: &[u8]) -> Option<BarChange>;
}
