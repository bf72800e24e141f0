//! The virtio 1.x PCI transport, modern only (virtio 1.2 section 4.1): a PCI function
//! whose capabilities point into one 64-bit memory BAR, driving the same
//! [`VirtioDevice`]s as the MMIO transport, with the same queue handling.
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

use std::sync::Arc;

use virtio_bindings::virtio_ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE};
use vm_memory::GuestMemoryMmap;

use super::mmio::QueueNotify;
use super::{avail_moved, serve_queue, VirtioDevice};
use crate::bus::{Access, BusDevice, StopRequest};
use crate::devices::pci::config::{
    BarChange, BarKind, ConfigSpace, PciError, PciIds, COMMAND, COMMAND_BUS_MASTER,
    COMMAND_INTX_DISABLE,
};
use crate::devices::pci::msix::{MsiSink, MsixLayout, MsixState, MSIX_CAPABILITY_ID};
use crate::devices::pci::PciFunction;
use crate::irq::InterruptLine;
use common::{CommonConfig, COMMON_CFG_SIZE, STATUS_NEEDS_RESET};

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

/// What raised an interrupt.
#[derive(Debug, Clone, Copy)]
enum Cause {
    Queue(usize),
    Config,
}

/// A virtio device as a PCI function. Its configuration space goes on the root bus
/// ([`PciFunction`]); BAR 0 is a [`BusDevice`] the machine places where the guest put
/// the BAR.
pub struct VirtioPciTransport<D: VirtioDevice> {
    device: D,
    memory: GuestMemoryMmap,
    config: ConfigSpace,
    msix: MsixState,
    msix_capability: u16,
    pci_cfg_capability: u16,
    intx: Arc<dyn InterruptLine>,
    common: CommonConfig,
    isr: u8,
    /// Doorbells that made the device use buffers, for the profiler and benches.
    notifications: u64,
    /// Doorbells rung, work or none (what the advisor counts as an effect).
    doorbells: u64,
    /// Each queue's available index at the last [`QueueNotify::avail_moved`].
    polled_avail: Vec<u16>,
}

impl<D: VirtioDevice> std::fmt::Debug for VirtioPciTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.common.status)
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
        Ok(Self {
            common: CommonConfig::new(device.queue_max_sizes()),
            device,
            memory,
            config,
            msix,
            msix_capability,
            pci_cfg_capability,
            intx,
            isr: 0,
            notifications: 0,
            doorbells: 0,
            polled_avail: Vec::new(),
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

    /// The device, to hand it host input; call [`QueueNotify::notify`] afterwards.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The configuration space (the machine may set the interrupt line register).
    pub fn config_space_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    /// The configuration space.
    pub fn config_space(&self) -> &ConfigSpace {
        &self.config
    }

    /// The MSI-X state.
    pub fn msix(&self) -> &MsixState {
        &self.msix
    }

    /// Doorbells that made the device use buffers.
    pub fn notifications(&self) -> u64 {
        self.notifications
    }

    /// Doorbells rung, whether or not they found work or the driver was ready.
    pub fn doorbells(&self) -> u64 {
        self.doorbells
    }

    /// Queues the device has.
    pub fn queue_count(&self) -> usize {
        self.common.queues.len()
    }

    /// Where, in BAR 0, the doorbell of queue `queue` is: the machine registers one
    /// ioeventfd per queue there, at the BAR's address plus this.
    pub fn notify_address(queue: u16) -> u64 {
        NOTIFY_OFFSET + u64::from(queue) * u64::from(NOTIFY_OFF_MULTIPLIER)
    }

    /// The INTx line's resample: the guest ended the interrupt; raise it again if the
    /// ISR is still set (the line is level-triggered).
    pub fn intx_resample(&mut self) {
        if self.intx_active() && self.isr != 0 {
            self.intx.pulse();
        }
    }

    fn intx_active(&self) -> bool {
        !self.msix.enabled() && self.config.command() & COMMAND_INTX_DISABLE == 0
    }

    fn interrupt(&mut self, cause: Cause) {
        let (bit, vector) = match cause {
            Cause::Queue(index) => (ISR_QUEUE, self.common.queue_vectors.get(index).copied()),
            Cause::Config => (ISR_CONFIG, Some(self.common.config_vector)),
        };
        if self.msix.enabled() {
            // With MSI-X only configuration changes set the ISR (virtio 1.2 4.1.4.5.1).
            if bit == ISR_CONFIG {
                self.isr |= bit;
            }
            match vector {
                Some(VIRTIO_MSI_NO_VECTOR) | None => {}
                Some(vector) => self.msix.notify(vector),
            }
            return;
        }
        let rising = self.isr == 0;
        self.isr |= bit;
        self.config.set_interrupt_status(true);
        if rising && self.intx_active() {
            self.intx.pulse();
        }
    }

    /// Reads the ISR: returns it and clears it, lowering the INTx level.
    fn take_isr(&mut self) -> u8 {
        self.config.set_interrupt_status(false);
        std::mem::take(&mut self.isr)
    }

    /// Marks the device broken, as the virtio spec lets a device do when its driver
    /// breaks the protocol, and tells the driver.
    fn needs_reset(&mut self) {
        self.common.status |= STATUS_NEEDS_RESET;
        self.interrupt(Cause::Config);
    }

    fn process(&mut self, index: usize) -> bool {
        let queue = self.common.queues.get_mut(index);
        match serve_queue(&mut self.device, index, queue, &self.memory) {
            Ok(used) => used,
            Err(_) => {
                self.needs_reset();
                false
            }
        }
    }

    /// An access to BAR 0 at `offset`, decoded or not (the pci_cfg window reaches it
    /// with the BAR disabled).
    fn bar_access(&mut self, offset: u64, access: Access<'_>) {
        let (region, within) = (offset / REGION * REGION, offset % REGION);
        match (region, access) {
            (COMMON_OFFSET, Access::Read(data)) => {
                self.common.read(within, data, self.device.features())
            }
            (COMMON_OFFSET, Access::Write(data)) => {
                let (features, vectors) = (self.device.features(), self.msix.vectors());
                let was = self.common.status;
                self.common.write(within, data, features, vectors);
                if was != 0 && self.common.status == 0 {
                    // A device reset lowers any interrupt it had raised.
                    self.take_isr();
                }
            }
            (ISR_OFFSET, Access::Read(data)) => {
                data.fill(0);
                if within == 0 && !data.is_empty() {
                    data[0] = self.take_isr();
                }
            }
            (DEVICE_CONFIG_OFFSET, Access::Read(data)) => self.device.read_config(within, data),
            (NOTIFY_OFFSET, Access::Write(_)) => {
                let multiplier = u64::from(NOTIFY_OFF_MULTIPLIER);
                if within % multiplier == 0 {
                    self.notify(Some((within / multiplier) as u32));
                }
            }
            (MSIX_TABLE_OFFSET, Access::Read(data)) => self.msix.read_table(within, data),
            (MSIX_TABLE_OFFSET, Access::Write(data)) => self.msix.write_table(within, data),
            (MSIX_PBA_OFFSET, Access::Read(data)) => self.msix.read_pba(within, data),
            (_, Access::Read(data)) => data.fill(0),
            // Device configuration is read-only here, as on the MMIO transport; the ISR
            // and PBA are read-only.
            (_, Access::Write(_)) => {}
        }
    }

    /// A configuration access that reaches the pci_cfg data window: performs the BAR
    /// access the window describes. Returns false if the access is elsewhere.
    fn pci_cfg_window(&mut self, offset: u16, access: Access<'_>) -> bool {
        let data_at = self.pci_cfg_capability + PCI_CFG_DATA;
        if !(data_at..data_at + 4).contains(&offset) {
            return false;
        }
        let cap = self.pci_cfg_capability;
        let bar = self.config.u8_at(cap + PCI_CFG_BAR);
        let at = u64::from(self.config.u32_at(cap + PCI_CFG_OFFSET));
        let len = self.config.u32_at(cap + PCI_CFG_LENGTH) as usize;
        let usable = bar == BAR && matches!(len, 1 | 2 | 4) && at + len as u64 <= BAR_SIZE;
        let mut window = [0u8; 4];
        match access {
            Access::Read(data) => {
                if usable {
                    self.bar_access(at, Access::Read(&mut window[..len]));
                    self.config.set_bytes(data_at, &window);
                }
                self.config.read(offset, data);
            }
            Access::Write(data) => {
                self.config.write(offset, data);
                if usable {
                    self.config.read(data_at, &mut window);
                    self.bar_access(at, Access::Write(&window[..len]));
                }
            }
        }
        true
    }
}

impl<D: VirtioDevice> QueueNotify for VirtioPciTransport<D> {
    fn notify(&mut self, index: Option<u32>) {
        self.doorbells += 1;
        // Without bus mastering the function may neither touch memory nor send MSIs.
        if !self.common.driver_ok() || self.config.command() & COMMAND_BUS_MASTER == 0 {
            return;
        }
        let queues = match index {
            Some(index) => index as usize..(index as usize).saturating_add(1),
            None => 0..self.common.queues.len(),
        };
        let mut used = false;
        for index in queues {
            if self.process(index) {
                used = true;
                self.interrupt(Cause::Queue(index));
            }
        }
        if used {
            self.notifications += 1;
        }
    }

    fn avail_moved(&mut self) -> bool {
        self.common.driver_ok()
            && avail_moved(&self.common.queues, &mut self.polled_avail, &self.memory)
    }
}

impl<D: VirtioDevice> PciFunction for VirtioPciTransport<D> {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        if !self.pci_cfg_window(offset, Access::Read(data)) {
            self.config.read(offset, data);
        }
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) -> Option<BarChange> {
        if self.pci_cfg_window(offset, Access::Write(data)) {
            return None;
        }
        let intx_was_disabled = self.config.command() & COMMAND_INTX_DISABLE != 0;
        let change = self.config.write(offset, data);
        let register = offset & !3;
        if register == self.msix_capability {
            let control = self.config.u16_at(self.msix_capability + 2);
            self.msix.write_control(control);
        }
        if register == COMMAND && intx_was_disabled {
            // Unmasking INTx with the ISR set raises the line, as a level would.
            self.intx_resample();
        }
        change
    }
}

impl<D: VirtioDevice> BusDevice for VirtioPciTransport<D> {
    /// BAR 0, at `offset` from the BAR's address; nothing answers while memory decoding
    /// is off.
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match access {
            Access::Read(data) if !self.config.decodes(BAR) => data.fill(0xff),
            Access::Write(_) if !self.config.decodes(BAR) => {}
            access => self.bar_access(offset, access),
        }
        None
    }
}

#[cfg(test)]
mod tests;
