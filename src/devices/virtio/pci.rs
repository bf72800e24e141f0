//! The virtio 1.x PCI transport, modern only (virtio 1.2 section 4.1): a PCI function
//! whose capabilities point into one 64-bit memory BAR, over the same transport core
//! ([`VirtioCore`]) as virtio-mmio; only the register layout and the interrupt delivery
//! ([`PciState`]: MSI-X or INTx) are its own.
//!
//! # BAR 0 (32 KiB, 64-bit memory, non-prefetchable)
//!
//! ```text
//! 0x0000  common configuration (cfg_type 1)
//! 0x1000  ISR status, read-to-clear (cfg_type 3)
//! 0x2000  device-specific configuration (cfg_type 4)
//! 0x3000  notifications (cfg_type 2): queue n at 0x3000 + 4n (multiplier 4,
//!         queue_notify_off = n), so a length-0 ioeventfd per queue names its queue
//! 0x4000  MSI-X table (one entry per queue, plus one for configuration changes)
//! 0x5000  MSI-X pending-bit array
//! ```
//!
//! Each structure has its own 4 KiB page, so the table and PBA share no page with the
//! virtio registers. The pci_cfg capability (cfg_type 5) is a window onto the same BAR
//! through configuration space.
//!
//! # Interrupts
//!
//! With MSI-X enabled, a used queue raises its `queue_msix_vector` and a configuration
//! change `config_msix_vector`, through the [`MsixState`] and the machine's
//! [`MsiSink`]. Otherwise INTx: the ISR byte is the line's level. Its rising edge
//! pulses the [`InterruptLine`]; reading the ISR clears it. The machine wires that line
//! as a level-triggered irqfd with a resample eventfd: KVM asserts the GSI on the pulse,
//! deasserts it at the guest's EOI and signals the resample fd, and the event loop then
//! calls [`VirtioPciTransport::intx_resample`], which pulses again while the ISR is
//! still set.

pub mod common;
mod registers;
mod state;
pub use state::SavedPciFunction;

use std::sync::Arc;

use virtio_bindings::virtio_ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE};
use vm_memory::GuestMemoryMmap;

use super::transport::{Registers, VirtioCore};
use super::{OnBus, QueueNotify, SharedBusDevice, VirtioDevice};
use crate::bus::{Access, BusDevice, StopRequest};
use crate::devices::pci::config::{
    BarChange, BarKind, ConfigSpace, PciError, PciIds, COMMAND, COMMAND_INTX_DISABLE,
};
use crate::devices::pci::msix::{MsiSink, MsixLayout, MsixState, MSIX_CAPABILITY_ID};
use crate::devices::pci::PciFunction;
use crate::irq::InterruptLine;
use common::{CommonConfig, Vectors, Written, COMMON_CFG_SIZE};
pub use registers::PciState;

// The virtio-pci constants (virtio 1.2 section 4.1); virtio-bindings 0.2 has no
// virtio_pci module, so they are declared here, with the spec's names.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// A modern device's PCI device ID is this plus its virtio device ID.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
/// "No vector": the queue or configuration change raises no MSI-X message.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
/// ISR bits.
pub const ISR_QUEUE: u8 = 1 << 0;
pub const ISR_CONFIG: u8 = 1 << 1;
/// The vendor-specific capability ID that virtio's capabilities use.
const PCI_CAP_ID_VENDOR: u8 = 0x09;
/// QEMU's subsystem IDs, which some guests' drivers match on (Windows' virtio drivers
/// look for SUBSYS_11001AF4); the spec leaves them informational.
const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
const SUBSYSTEM_ID: u16 = 0x1100;

/// The BAR everything lives in, and its layout (see the module's documentation).
pub const BAR: u8 = 0;
pub const BAR_SIZE: u64 = 0x8000;
pub const COMMON_OFFSET: u64 = 0x0000;
pub const ISR_OFFSET: u64 = 0x1000;
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Bytes each structure's page holds.
const REGION: u64 = 0x1000;
/// Offsets in the pci_cfg capability: BAR, offset and length of the window, its data.
const PCI_CFG_BAR: u16 = 4;
const PCI_CFG_OFFSET: u16 = 8;
const PCI_CFG_LENGTH: u16 = 12;
const PCI_CFG_DATA: u16 = 16;

/// A virtio device as a PCI function: the transport core behind virtio-pci's register
/// layout. Its configuration space goes on the root bus ([`PciFunction`]); BAR 0 is a
/// bus device the machine places where the guest put the BAR.
pub struct VirtioPciTransport<D: VirtioDevice> {
    core: VirtioCore<D, PciState>,
}

impl<D: VirtioDevice> std::fmt::Debug for VirtioPciTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciTransport")
            .field("core", &self.core)
            .finish()
    }
}

/// The body of a `struct virtio_pci_cap` (the bytes after its ID and next pointer),
/// with `extra` bytes after it (the notify multiplier, the pci_cfg data); returns the
/// body and its length.
fn virtio_capability(
    cfg_type: u8,
    offset: u64,
    length: u64,
    extra: Option<[u8; 4]>,
) -> ([u8; 18], usize) {
    let len = if extra.is_some() { 18 } else { 14 };
    let mut body = [0u8; 18];
    // cap_len counts the ID and next pointer too.
    body[0] = len as u8 + 2;
    body[1] = cfg_type;
    body[2] = BAR;
    body[6..10].copy_from_slice(&(offset as u32).to_le_bytes());
    body[10..14].copy_from_slice(&(length as u32).to_le_bytes());
    body[14..18].copy_from_slice(&extra.unwrap_or_default());
    (body, len)
}

/// The PCI class of a virtio device: what `lspci` shows; drivers match on the IDs.
fn class_of(device_type: u32) -> u32 {
    match device_type {
        VIRTIO_ID_BLOCK => 0x01_80_00,
        VIRTIO_ID_CONSOLE => 0x07_80_00,
        _ => 0xff_00_00,
    }
}

impl<D: VirtioDevice> VirtioPciTransport<D> {
    /// `device` over `memory`, raising MSI-X through `msi` and INTx through `intx`.
    pub fn new(
        device: D,
        memory: GuestMemoryMmap,
        msi: Arc<dyn MsiSink>,
        intx: Arc<dyn InterruptLine>,
    ) -> Result<Self, PciError> {
        let queues = device.queue_max_sizes().len();
        let vectors =
            u16::try_from(queues + 1).map_err(|_| PciError::MsixVectors { vectors: u16::MAX })?;
        let layout = MsixLayout {
            vectors,
            table_bar: BAR,
            table_offset: MSIX_TABLE_OFFSET as u32,
            pba_bar: BAR,
            pba_offset: MSIX_PBA_OFFSET as u32,
        };
        let msix = MsixState::new(layout, msi)?;
        let (config, msix_capability, pci_cfg_capability) =
            Self::build_config_space(&device, &msix)?;
        let state = PciState {
            config,
            msix,
            msix_capability,
            pci_cfg_capability,
            intx,
            vectors: Vectors::new(queues, vectors),
        };
        Ok(Self {
            core: VirtioCore::new(device, memory, state),
        })
    }

    /// The header, BAR 0 and the capabilities; returns the space and the offsets of the
    /// MSI-X and pci_cfg capabilities.
    fn build_config_space(
        device: &D,
        msix: &MsixState,
    ) -> Result<(ConfigSpace, u16, u16), PciError> {
        let device_type = device.device_type();
        let mut config = ConfigSpace::new(PciIds {
            vendor: VIRTIO_PCI_VENDOR_ID,
            device: VIRTIO_PCI_DEVICE_ID_BASE + device_type as u16,
            revision: 1,
            class: class_of(device_type),
            subsystem_vendor: SUBSYSTEM_VENDOR_ID,
            subsystem: SUBSYSTEM_ID,
        });
        config.set_interrupt_pin(1);
        config.add_bar(BAR, BarKind::Memory64, BAR_SIZE)?;
        let multiplier = Some(NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        let capabilities = [
            (
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON_OFFSET,
                COMMON_CFG_SIZE,
                None,
            ),
            (VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, REGION, multiplier),
            (VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1, None),
            (
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CONFIG_OFFSET,
                REGION,
                None,
            ),
        ];
        let read_only = [0u8; 18];
        for (cfg_type, offset, length, extra) in capabilities {
            let (body, len) = virtio_capability(cfg_type, offset, length, extra);
            config.add_capability(PCI_CAP_ID_VENDOR, &body[..len], &read_only[..len])?;
        }
        // The window: its BAR, offset, length and data are the driver's to write.
        let (body, _) = virtio_capability(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, Some([0; 4]));
        let mut window = [0u8; 18];
        window[2] = 0xff;
        window[6..18].fill(0xff);
        let pci_cfg = config.add_capability(PCI_CAP_ID_VENDOR, &body, &window)?;
        let (body, mask) = msix.capability();
        let msix_capability = config.add_capability(MSIX_CAPABILITY_ID, &body, &mask)?;
        Ok((config, msix_capability, pci_cfg))
    }

    /// The shared core (the device, its counters, the registers).
    pub fn core(&self) -> &VirtioCore<D, PciState> {
        &self.core
    }

    /// The device, to hand it host input; call [`QueueNotify::notify`] afterwards.
    pub fn device(&self) -> &D {
        self.core.device()
    }

    /// Sets the interrupt line register (the machine's INTx routing).
    pub fn set_interrupt_line(&self, line: u8) {
        self.core
            .registers()
            .transport
            .config
            .set_interrupt_line(line);
    }

    /// Runs `look` on the PCI state under the register lock.
    pub fn with_state<R>(&self, look: impl FnOnce(&PciState) -> R) -> R {
        look(&self.core.registers().transport)
    }

    /// Doorbells that made the device use buffers.
    pub fn notifications(&self) -> u64 {
        self.core.notifications()
    }

    /// Doorbells rung, whether or not they found work or the driver was ready.
    pub fn doorbells(&self) -> u64 {
        self.core.doorbells()
    }

    /// Queues the device has.
    pub fn queue_count(&self) -> usize {
        self.core.device().queue_max_sizes().len()
    }

    /// Where, in BAR 0, the doorbell of queue `queue` is: the machine registers one
    /// ioeventfd per queue there, at the BAR's address plus this.
    pub fn notify_address(queue: u16) -> u64 {
        NOTIFY_OFFSET + u64::from(queue) * u64::from(NOTIFY_OFF_MULTIPLIER)
    }

    /// The INTx line's resample: the guest ended the interrupt; raise it again if the
    /// ISR is still set (the line is level-triggered).
    pub fn intx_resample(&self) {
        let registers = self.core.registers();
        if registers.transport.intx_active() && registers.common.interrupt_status() != 0 {
            registers.transport.intx.pulse();
        }
    }

    /// An access to BAR 0 at `offset`, decoded or not (the pci_cfg window reaches it
    /// with the BAR disabled), under the register lock; returns the queue a doorbell
    /// named, which the caller serves once the lock is released.
    fn bar_access(
        &self,
        registers: &mut Registers<PciState>,
        offset: u64,
        access: Access<'_>,
    ) -> Option<u32> {
        let features = self.core.offered();
        let (region, within) = (offset / REGION * REGION, offset % REGION);
        let Registers { common, transport } = registers;
        let mut config = CommonConfig {
            common,
            vectors: &mut transport.vectors,
        };
        match (region, access) {
            (COMMON_OFFSET, Access::Read(data)) => config.read(within, data, features),
            (COMMON_OFFSET, Access::Write(data)) => {
                if let Written::Status(value) = config.write(within, data, features) {
                    registers.write_status(value, features);
                }
            }
            (ISR_OFFSET, Access::Read(data)) => {
                data.fill(0);
                if within == 0 && !data.is_empty() {
                    // Reading the ISR clears it, lowering the INTx level.
                    transport.config.set_interrupt_status(false);
                    data[0] = common.take_interrupt_status();
                }
            }
            (DEVICE_CONFIG_OFFSET, Access::Read(data)) => {
                self.core.device().read_config(within, data)
            }
            (NOTIFY_OFFSET, Access::Write(_)) => {
                let multiplier = u64::from(NOTIFY_OFF_MULTIPLIER);
                if within % multiplier == 0 {
                    return Some((within / multiplier) as u32);
                }
            }
            (MSIX_TABLE_OFFSET, Access::Read(data)) => transport.msix.read_table(within, data),
            (MSIX_TABLE_OFFSET, Access::Write(data)) => transport.msix.write_table(within, data),
            (MSIX_PBA_OFFSET, Access::Read(data)) => transport.msix.read_pba(within, data),
            (_, Access::Read(data)) => data.fill(0),
            // Device configuration is read-only here, as on the MMIO transport; the ISR
            // and PBA are read-only.
            (_, Access::Write(_)) => {}
        }
        None
    }

    /// A configuration access that reaches the pci_cfg data window: performs the BAR
    /// access the window describes. Returns None if the access is elsewhere, else the
    /// queue a doorbell through the window named.
    fn pci_cfg_window(
        &self,
        registers: &mut Registers<PciState>,
        offset: u16,
        access: Access<'_>,
    ) -> Option<Option<u32>> {
        let cap = registers.transport.pci_cfg_capability;
        let data_at = cap + PCI_CFG_DATA;
        if !(data_at..data_at + 4).contains(&offset) {
            return None;
        }
        let config = &registers.transport.config;
        let bar = config.u8_at(cap + PCI_CFG_BAR);
        let at = u64::from(config.u32_at(cap + PCI_CFG_OFFSET));
        let len = config.u32_at(cap + PCI_CFG_LENGTH) as usize;
        let usable = bar == BAR && matches!(len, 1 | 2 | 4) && at + len as u64 <= BAR_SIZE;
        let mut window = [0u8; 4];
        let mut doorbell = None;
        match access {
            Access::Read(data) => {
                if usable {
                    doorbell = self.bar_access(registers, at, Access::Read(&mut window[..len]));
                    registers.transport.config.set_bytes(data_at, &window);
                }
                registers.transport.config.read(offset, data);
            }
            Access::Write(data) => {
                registers.transport.config.write(offset, data);
                if usable {
                    registers.transport.config.read(data_at, &mut window);
                    doorbell = self.bar_access(registers, at, Access::Write(&window[..len]));
                }
            }
        }
        Some(doorbell)
    }

    /// Reads configuration space.
    pub fn read_config(&self, offset: u16, data: &mut [u8]) {
        let mut registers = self.core.registers();
        if self
            .pci_cfg_window(&mut registers, offset, Access::Read(&mut *data))
            .is_none()
        {
            registers.transport.config.read(offset, data);
        }
    }

    /// Writes configuration space; returns the BAR move it made.
    pub fn write_config(&self, offset: u16, data: &[u8]) -> Option<BarChange> {
        let mut registers = self.core.registers();
        if let Some(doorbell) = self.pci_cfg_window(&mut registers, offset, Access::Write(data)) {
            drop(registers);
            if doorbell.is_some() {
                self.core.notify(doorbell);
            }
            return None;
        }
        let state = &mut registers.transport;
        let intx_was_disabled = state.config.command() & COMMAND_INTX_DISABLE != 0;
        let change = state.config.write(offset, data);
        let register = offset & !3;
        if register == state.msix_capability {
            let control = state.config.u16_at(state.msix_capability + 2);
            state.msix.write_control(control);
        }
        drop(registers);
        if register == COMMAND && intx_was_disabled {
            // Unmasking INTx with the ISR set raises the line, as a level would.
            self.intx_resample();
        }
        change
    }
}

impl<D: VirtioDevice> QueueNotify for VirtioPciTransport<D> {
    fn notify(&self, index: Option<u32>) {
        self.core.notify(index);
    }

    fn avail_moved(&self) -> bool {
        self.core.avail_moved()
    }
}

impl<D: VirtioDevice> SharedBusDevice for VirtioPciTransport<D> {
    /// BAR 0, at `offset` from the BAR's address; nothing answers while memory decoding
    /// is off.
    fn access(&self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        let mut registers = self.core.registers();
        let doorbell = match access {
            Access::Read(data) if !registers.transport.config.decodes(BAR) => {
                data.fill(0xff);
                None
            }
            Access::Write(_) if !registers.transport.config.decodes(BAR) => None,
            access => self.bar_access(&mut registers, offset, access),
        };
        drop(registers);
        if doorbell.is_some() {
            // Served under the queue lock, not the register lock.
            self.core.notify(doorbell);
        }
        None
    }
}

/// The function in a bus slot and on the PCI root, shared.
impl<D: VirtioDevice> PciFunction for OnBus<VirtioPciTransport<D>> {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.0.read_config(offset, data)
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) -> Option<BarChange> {
        self.0.write_config(offset, data)
    }
}

/// Owned (tests, fuzzing).
impl<D: VirtioDevice> PciFunction for VirtioPciTransport<D> {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        VirtioPciTransport::read_config(self, offset, data)
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) -> Option<BarChange> {
        VirtioPciTransport::write_config(self, offset, data)
    }
}

/// Owned (tests, fuzzing).
impl<D: VirtioDevice> BusDevice for VirtioPciTransport<D> {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        SharedBusDevice::access(self, offset, access)
    }
}

#[cfg(test)]
mod tests;
