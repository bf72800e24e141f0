//! The root bus: bus 0 with a host bridge at 00:00.0 and up to 31 devices (one function
//! each), reached through configuration mechanism #1 (ports 0xcf8-0xcff) and through
//! ECAM (the MMIO window at `layout::PCI_ECAM_START`). Both paths end in
//! [`PciRoot::config_read`] and [`PciRoot::config_write`].
//!
//! # 0xcf8-0xcff and the reset register at 0xcf9
//!
//! Port 0xcf9 is the PC's reset-control register, inside the range of the 32-bit
//! configuration-address register at 0xcf8, and bus ranges cannot overlap. So one
//! device, [`PciConfigIo`], owns all eight ports and holds the
//! [`ResetControl`]: an access that starts at 0xcf9 goes to the reset register (so a
//! guest's `outb 0x06, 0xcf9` still returns [`StopRequest::Reset`]); only a dword access
//! at 0xcf8 reaches the address register, as on real chipsets; other accesses to
//! 0xcf8-0xcfb read all-ones and are dropped. A machine with PCI places `PciConfigIo`
//! at 0xcf8 instead of `ResetControl` at 0xcf9.
//!
//! The address register is declared posted: a write to it only latches, and the
//! ordering rule applies it before the next access to this device, that is before the
//! data access it selects for.
//!
//! Caution for the machine: KVM posts every write that lies wholly inside a coalesced
//! zone, so the zone 0xcf8+4 also posts byte writes to 0xcf9. A reset written there
//! then reaches [`ResetControl`] only when the ring is next drained, and the
//! [`StopRequest::Reset`] it returns must be honoured by whoever drains (the exit path
//! and the services), or the reset is lost. That is why the address register's flush
//! rule is [`crate::bus::Flush::Bounded`] although the address itself only latches: a
//! reset must take effect at once, not at an exit that may never come. So the zone is
//! live only while the guest is making configuration accesses, with the drain's timer
//! running; outside those bursts a reset written to 0xcf9 exits and acts at once.
//!
//! # Locks
//!
//! The root has no lock of its own: its table of functions is fixed once it is shared,
//! and each function has its own mutex, taken for one access. A BAR move is reported to
//! the [`BarObserver`] after that lock is released, so the observer may lock the
//! function (or anything else but the configuration device it was called from).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::config::{BarChange, ConfigSpace, PciError, PciIds, BAR0, BAR_COUNT};
use super::PciFunction;
use crate::bus::{le_value, Access, BusDevice, PostedRegister, StopRequest};
use crate::devices::acpi_pm::ResetControl;
use crate::sync::LockExt;

mod state;
pub use state::SavedPciConfigIo;

/// A function shared between the root and the bus slots of its BARs.
pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// Devices on bus 0, the host bridge included.
pub const DEVICES: u8 = 32;
/// The host bridge: Red Hat's "QEMU PCIe host bridge" (1b36:0008, QEMU's
/// docs/specs/pci-ids.rst), class 06/00/00. It is a documented ID with no quirks in
/// Linux, unlike an Intel chipset's, for which Linux would look for chipset registers.
pub const HOST_BRIDGE_IDS: PciIds = PciIds {
    vendor: 0x1b36,
    device: 0x0008,
    revision: 0,
    class: 0x06_00_00,
    subsystem_vendor: 0x1b36,
    subsystem: 0x0008,
};

/// The configuration-address register's enable bit.
const ENABLE: u32 = 1 << 31;
/// Its meaningful bits: enable, bus, device, function, dword register.
const ADDRESS_BITS: u32 = ENABLE | 0x00ff_fffc;
/// Bounded, not a plain latch: its zone also takes 0xcf9's resets (above).
const POSTED: [PostedRegister; 1] = [PostedRegister::bounded(0, 4)];
/// Bytes ECAM gives each bus.
const ECAM_BUS_BYTES: u64 = 1 << 20;

/// Told when a guest moves a BAR; the machine moves the device's range on its bus (and
/// its doorbells), and refuses (saying so) a move onto something else.
pub trait BarObserver: Send + Sync {
    /// `function` is the device number on bus 0.
    fn bar_changed(&self, function: u8, change: BarChange);
}

/// A configuration-space address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
    /// Byte offset in the function's space (below 4096).
    pub register: u16,
}

/// The host bridge at 00:00.0: an identity and nothing else.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self {
            config: ConfigSpace::new(HOST_BRIDGE_IDS),
        }
    }
}

impl PciFunction for HostBridge {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) -> Option<BarChange> {
        self.config.write(offset, data)
    }
}

/// Bus 0.
pub struct PciRoot {
    functions: Vec<Option<SharedFunction>>,
    /// The host bridge, also in `functions[0]`, as itself: for its saved state.
    bridge: Arc<Mutex<HostBridge>>,
    observer: Arc<dyn BarObserver>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let present: Vec<usize> = (0..self.functions.len())
            .filter(|i| self.functions[*i].is_some())
            .collect();
        f.debug_struct("PciRoot")
            .field("devices", &present)
            .finish()
    }
}

impl PciRoot {
    /// Bus 0 with its host bridge; BAR moves go to `observer`.
    pub fn new(observer: Arc<dyn BarObserver>) -> Self {
        let mut functions: Vec<Option<SharedFunction>> = vec![None; usize::from(DEVICES)];
        let bridge = Arc::new(Mutex::new(HostBridge::default()));
        functions[0] = Some(bridge.clone());
        Self {
            functions,
            bridge,
            observer,
        }
    }

    /// The host bridge at 00:00.0 (a [`crate::devices::persist::Persist`] device).
    pub fn host_bridge(&self) -> &Arc<Mutex<HostBridge>> {
        &self.bridge
    }

    /// Places `function` at device number `device` (1 to 31).
    pub fn add(&mut self, device: u8, function: SharedFunction) -> Result<(), PciError> {
        let slot = match device {
            0 => None,
            _ => self.functions.get_mut(usize::from(device)),
        };
        match slot {
            Some(slot @ None) => {
                *slot = Some(function);
                Ok(())
            }
            Some(Some(_)) => Err(PciError::Slot {
                device,
                reason: "already taken",
            }),
            None => Err(PciError::Slot {
                device,
                reason: "not a device number for a function (1 to 31)",
            }),
        }
    }

    /// Places `function` at the lowest free device number, and returns it.
    pub fn add_next(&mut self, function: SharedFunction) -> Result<u8, PciError> {
        let free = (1..DEVICES).find(|d| self.functions[usize::from(*d)].is_none());
        let device = free.ok_or(PciError::Slot {
            device: DEVICES,
            reason: "bus 0 is full",
        })?;
        self.add(device, function)?;
        Ok(device)
    }

    fn function(&self, address: ConfigAddress) -> Option<&SharedFunction> {
        if address.bus != 0 || address.function != 0 {
            return None;
        }
        self.functions.get(usize::from(address.device))?.as_ref()
    }

    /// Reads configuration space; a missing function reads all-ones.
    pub fn config_read(&self, address: ConfigAddress, data: &mut [u8]) {
        let Some(function) = self.function(address) else {
            data.fill(0xff);
            return;
        };
        let mut function = function.locked();
        for (offset, range) in dword_pieces(address.register, data.len()) {
            function.read_config(offset, &mut data[range]);
        }
    }

    /// Writes configuration space; a write to a missing function is dropped. BAR moves
    /// go to the observer, after the function's lock is released.
    pub fn config_write(&self, address: ConfigAddress, data: &[u8]) {
        let Some(function) = self.function(address) else {
            return;
        };
        for (offset, range) in dword_pieces(address.register, data.len()) {
            let change = function.locked().write_config(offset, &data[range]);
            if let Some(change) = change {
                self.observer.bar_changed(address.device, change);
            }
        }
    }
}

impl PciRoot {
    fn read_u32(&self, device: u8, register: u16) -> u32 {
        let mut data = [0u8; 4];
        self.config_read(bus0(device, register), &mut data);
        u32::from_le_bytes(data)
    }

    fn write_u32(&self, device: u8, register: u16, value: u32) {
        self.config_write(bus0(device, register), &value.to_le_bytes());
    }

    /// The size mask BAR register `register` reads after the sizing write; the
    /// register is restored.
    fn size_register(&self, device: u8, register: u16) -> u32 {
        let original = self.read_u32(device, register);
        self.write_u32(device, register, u32::MAX);
        let mask = self.read_u32(device, register);
        self.write_u32(device, register, original);
        mask
    }

    /// Places every memory BAR of every device in `window`, as firmware would: each
    /// BAR sized through configuration space, then programmed at the next address
    /// aligned to its size, so the observer sees one [`BarChange`] per BAR. I/O BARs are
    /// left for the guest. Decoding stays off until the guest's driver enables it.
    pub fn assign_memory_bars(&self, window: Range<u64>) -> Result<(), PciError> {
        let mut next = window.start;
        for device in 0..DEVICES {
            if self.read_u32(device, 0) == u32::MAX {
                continue;
            }
            let mut bar = 0;
            while bar < BAR_COUNT {
                let register = BAR0 + 4 * u16::from(bar);
                let low = self.size_register(device, register);
                let wide = low & 0b111 == 0b100;
                if low == 0 || low & 1 != 0 {
                    bar += 1;
                    continue;
                }
                let high = match wide {
                    true => self.size_register(device, register + 4),
                    false => u32::MAX,
                };
                let mask = (u64::from(high) << 32) | u64::from(low & !0xf);
                let size = (!mask).wrapping_add(1);
                let address = next.checked_next_multiple_of(size).filter(|address| {
                    address
                        .checked_add(size)
                        .is_some_and(|end| end <= window.end)
                });
                let address = address.ok_or(PciError::WindowFull { device, bar, size })?;
                self.write_u32(device, register, address as u32);
                if wide {
                    self.write_u32(device, register + 4, (address >> 32) as u32);
                }
                next = address + size;
                bar += if wide { 2 } else { 1 };
            }
        }
        Ok(())
    }
}

fn bus0(device: u8, register: u16) -> ConfigAddress {
    ConfigAddress {
        bus: 0,
        device,
        function: 0,
        register,
    }
}

/// Splits an access of `len` bytes at `register` at dword boundaries: (offset, range
/// of the data). Bytes past the 4 KiB space are left out.
fn dword_pieces(register: u16, len: usize) -> impl Iterator<Item = (u16, std::ops::Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        let offset = usize::from(register) + done;
        if done >= len || offset >= super::config::CONFIG_SPACE_SIZE {
            return None;
        }
        let take = (4 - offset % 4).min(len - done);
        let range = done..done + take;
        done += take;
        // Below CONFIG_SPACE_SIZE: the cast is exact.
        Some((offset as u16, range))
    })
}

/// Configuration mechanism #1 at ports 0xcf8-0xcff, with the reset register at 0xcf9
/// (see the module's documentation).
pub struct PciConfigIo {
    root: Arc<PciRoot>,
    address: u32,
    reset: ResetControl,
}

impl std::fmt::Debug for PciConfigIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PciConfigIo({:#010x})", self.address)
    }
}

impl PciConfigIo {
    /// The ports over `root`, owning the reset register `reset`.
    pub fn new(root: Arc<PciRoot>, reset: ResetControl) -> Self {
        Self {
            root,
            address: 0,
            reset,
        }
    }

    /// Where a data access at byte `byte` (0-3) of 0xcfc goes, if the address register
    /// is enabled.
    fn target(&self, byte: u64) -> Option<ConfigAddress> {
        if self.address & ENABLE == 0 {
            return None;
        }
        Some(ConfigAddress {
            bus: (self.address >> 16) as u8,
            device: ((self.address >> 11) & 0x1f) as u8,
            function: ((self.address >> 8) & 0x7) as u8,
            register: (self.address & 0xfc) as u16 + byte as u16,
        })
    }

    fn data(&self, byte: u64, access: Access<'_>) {
        match (self.target(byte), access) {
            (Some(address), Access::Read(data)) => self.root.config_read(address, data),
            (None, Access::Read(data)) => data.fill(0xff),
            (Some(address), Access::Write(data)) => self.root.config_write(address, data),
            (None, Access::Write(_)) => {}
        }
    }
}

impl BusDevice for PciConfigIo {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match (offset, access) {
            (1, access) => return self.reset.access(0, access),
            (0, Access::Read(data)) if data.len() == 4 => {
                data.copy_from_slice(&self.address.to_le_bytes())
            }
            (0, Access::Write(data)) if data.len() == 4 => {
                self.address = le_value(data) as u32 & ADDRESS_BITS
            }
            (4..=7, access) => self.data(offset - 4, access),
            (_, Access::Read(data)) => data.fill(0xff),
            (_, Access::Write(_)) => {}
        }
        None
    }

    fn posted_registers(&self) -> &[PostedRegister] {
        &POSTED
    }
}

/// ECAM: `offset = bus << 20 | device << 15 | function << 12 | register`. The window
/// may be the full 256 buses; only bus 0 has devices, the rest read all-ones.
#[derive(Debug)]
pub struct PciEcam {
    root: Arc<PciRoot>,
}

impl PciEcam {
    /// The window over `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root }
    }
}

impl BusDevice for PciEcam {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        let register = (offset & 0xfff) as u16;
        let fits = usize::from(register) + access.len() <= super::config::CONFIG_SPACE_SIZE;
        let address = ConfigAddress {
            bus: (offset >> 20) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
            register,
        };
        match access {
            Access::Read(data) if fits && offset < 256 * ECAM_BUS_BYTES => {
                self.root.config_read(address, data)
            }
            Access::Read(data) => data.fill(0xff),
            Access::Write(data) if fits && offset < 256 * ECAM_BUS_BYTES => {
                self.root.config_write(address, data)
            }
            Access::Write(_) => {}
        }
        None
    }
}
