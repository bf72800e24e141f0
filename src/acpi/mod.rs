//! The ACPI tables a guest finds at `layout::ACPI_TABLES`: RSDP, XSDT, FADT, FACS, MADT
//! and a DSDT, built with rust-vmm's `acpi_tables` crate (tables as values, AML as
//! values, checksums computed by the crate).
//!
//! What the crate cannot express, and is written here by hand:
//! - the creator id: every crate table header says "RVAT"; [`seal`] writes "HUSH" and
//!   recomputes the checksum (and the length, for the MADT below);
//! - the MADT flags field (PCAT_COMPAT), which the crate keeps private at 0;
//! - the MADT's Interrupt Source Override and Local APIC NMI entries, which the crate
//!   has no types for (and its `add_structure` needs `zerocopy`'s derives, a dependency
//!   two 10- and 6-byte records do not justify): they are appended as encoded bytes;
//! - the placement of the tables in one block, which the crate leaves to its user.
//!
//! The machine is not hardware-reduced: the FADT names the PM1a event and control blocks
//! and the PM timer at fixed ports (`layout::ports`), SCI on GSI 9, no SMI command port
//! (ACPI is always enabled, so the PM1 control block must read back SCI_EN set).
//! The DSDT declares COM1, the RTC, one `LNRO0005` device per virtio-mmio window (what
//! Linux's virtio_mmio driver binds to), one `ACPI0007` processor device per vCPU (so
//! the OS ties each MADT entry to a namespace object) and `\_S5`.
//!
//! A machine with PCI (`AcpiConfig::pci`) also gets an MCFG for its ECAM window, a
//! `\_SB.PCI0` host bridge with its windows and INTx routing, and a PNP0C02 device that
//! reserves the ECAM window (see `pci.rs`).
//!
//! `iasl-check.sh` beside this file disassembles the tables with ACPICA's iasl and
//! loads them into acpiexec, by hand; the unit tests parse the AML themselves.

mod dsdt;
mod pci;
mod tables;
#[cfg(test)]
mod tests;

use std::ops::{Range, RangeInclusive};

use thiserror::Error;

use crate::layout;

/// hushvm's OEM id, in every table header and the RSDP.
pub const OEM_ID: [u8; 6] = *b"HUSHVM";
/// The OEM table id of every table (the FADT's must match the XSDT's, simplest if all do).
pub const OEM_TABLE_ID: [u8; 8] = *b"HUSHVM  ";
pub const OEM_REVISION: u32 = 1;
/// The creator id of every table header.
pub const CREATOR_ID: [u8; 4] = *b"HUSH";
pub const CREATOR_REVISION: u32 = 1;
/// The SLP_TYP value `\_S5` names: a write of it with SLP_EN to PM1a_CNT powers off.
pub const SLP_TYP_S5: u8 = 5;

/// The most vCPUs: xAPIC ids run from 0, the IOAPIC takes the next id, and 0xff is the
/// broadcast id.
pub const MAX_CPUS: u8 = 254;
/// The most virtio-mmio devices: their DSDT names are `VR00` to `VRFF`.
pub const MAX_VIRTIO_DEVICES: usize = 256;

/// One virtio-mmio device's window and interrupt line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioWindow {
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
}

/// The PCI host bridge: segment 0, buses 0 to `bus_end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiPci {
    /// The ECAM window's base (1 MiB per bus); it must end below 4 GiB, where the
    /// motherboard-resource descriptor that reserves it reaches.
    pub ecam_base: u64,
    /// The last bus the ECAM window covers (hushvm has bus 0 only, so 0).
    pub bus_end: u8,
    /// The 32-bit memory window BARs are placed in (end exclusive, at most 4 GiB).
    pub mmio32: Range<u64>,
    /// The I/O port window for I/O BARs, if any. Inclusive, as ACPI's descriptors are
    /// (QEMU's 0x0d00 to 0xffff reaches the top of port space, which a `Range<u16>`
    /// cannot name); it must leave out the configuration ports 0xcf8-0xcff.
    pub io: Option<RangeInclusive<u16>>,
    /// INTx routing: (device number on bus 0, GSI) of each device's INTA#.
    pub intx: Vec<(u8, u32)>,
}

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    pub cpus: u8,
    /// virtio-mmio devices present: MMIO base, window size, GSI.
    pub virtio_mmio: Vec<VirtioMmioWindow>,
    /// The PCI host bridge, if the machine has one.
    pub pci: Option<AcpiPci>,
}

/// The built tables, ready to copy into guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// Guest-physical address of the RSDP (== layout::ACPI_TABLES).
    pub rsdp_addr: u64,
    /// The bytes to write at layout::ACPI_TABLES (RSDP first, then every table; all
    /// pointers inside are absolute guest-physical addresses in that block).
    pub bytes: Vec<u8>,
    /// (signature, guest address, length) of each table, for tests and reports, in
    /// address order: FACS, DSDT, APIC (MADT), MCFG (with PCI only), FACP (FADT), XSDT.
    /// Not the RSDP.
    pub tables: Vec<([u8; 4], u64, u32)>,
}

/// A configuration the tables cannot describe.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("no vCPUs: the MADT needs at least one")]
    NoCpus,
    #[error("{cpus} vCPUs: at most {MAX_CPUS} have xAPIC ids beside the IOAPIC's")]
    TooManyCpus { cpus: u8 },
    #[error("{count} virtio-mmio devices: at most {MAX_VIRTIO_DEVICES} have DSDT names")]
    TooManyVirtioDevices { count: usize },
    #[error("virtio-mmio window {base:#x} (+{size:#x}) does not end below 4 GiB")]
    VirtioWindowAbove4G { base: u64, size: u64 },
    #[error("PCI ECAM at {base:#x}, buses 0-{bus_end}: not 1 MiB-aligned or not below 4 GiB")]
    PciEcamWindow { base: u64, bus_end: u8 },
    #[error("PCI memory window {start:#x}..{end:#x} is empty or does not end below 4 GiB")]
    PciMmio32Window { start: u64, end: u64 },
    #[error("PCI memory window {start:#x}..{end:#x} overlaps the ECAM window")]
    PciMmio32OverlapsEcam { start: u64, end: u64 },
    #[error("PCI I/O window {start:#x}..={end:#x} is empty or takes in ports 0xcf8-0xcff")]
    PciIoWindow { start: u16, end: u16 },
    #[error("INTx route for device {device}: bus 0 has devices 0 to 31, each routed once")]
    PciIntxDevice { device: u8 },
    #[error("the ACPI tables take {bytes:#x} bytes, more than the {limit:#x} reserved")]
    TooLarge { bytes: u64, limit: u64 },
}

/// Builds every table for `config`, laid out for `layout::ACPI_TABLES`.
pub fn build(config: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    build_within(config, layout::ACPI_TABLES_SIZE)
}

/// [`build`] with the room as a parameter, so the size check can be tested.
fn build_within(config: &AcpiConfig, limit: u64) -> Result<AcpiTables, AcpiError> {
    check(config)?;
    let mut block = Block::new();
    let facs = block.place(*b"FACS", &tables::facs(), FACS_ALIGN);
    let dsdt = block.place(*b"DSDT", &dsdt::dsdt(config), TABLE_ALIGN);
    let madt = block.place(*b"APIC", &tables::madt(config.cpus), TABLE_ALIGN);
    let pci = config.pci.as_ref();
    let mcfg = pci.map(|pci| block.place(*b"MCFG", &pci::mcfg(pci), TABLE_ALIGN));
    let fadt = block.place(*b"FACP", &tables::fadt(facs, dsdt), TABLE_ALIGN);
    let entries: Vec<u64> = [fadt, madt].into_iter().chain(mcfg).collect();
    let xsdt = block.place(*b"XSDT", &tables::xsdt(&entries), TABLE_ALIGN);
    let rsdp = tables::rsdp(xsdt);
    block.bytes[..rsdp.len()].copy_from_slice(&rsdp);
    let bytes = block.bytes.len() as u64;
    if bytes > limit {
        return Err(AcpiError::TooLarge { bytes, limit });
    }
    Ok(AcpiTables {
        rsdp_addr: layout::ACPI_TABLES,
        bytes: block.bytes,
        tables: block.tables,
    })
}

/// Refuses what the tables cannot encode.
fn check(config: &AcpiConfig) -> Result<(), AcpiError> {
    match config.cpus {
        0 => return Err(AcpiError::NoCpus),
        cpus if cpus > MAX_CPUS => return Err(AcpiError::TooManyCpus { cpus }),
        _ => {}
    }
    let count = config.virtio_mmio.len();
    if count > MAX_VIRTIO_DEVICES {
        return Err(AcpiError::TooManyVirtioDevices { count });
    }
    // The DSDT describes each window with a 32-bit fixed memory descriptor.
    for window in &config.virtio_mmio {
        let end = window.base.checked_add(window.size);
        if end.is_none_or(|end| end > 1 << 32) || window.size > u64::from(u32::MAX) {
            return Err(AcpiError::VirtioWindowAbove4G {
                base: window.base,
                size: window.size,
            });
        }
    }
    config.pci.as_ref().map_or(Ok(()), pci::check)
}

/// Tables start on 16-byte boundaries (the RSDP must); the FACS on a 64-byte one (the
/// spec requires it).
const TABLE_ALIGN: usize = 16;
const FACS_ALIGN: usize = 64;
/// Room kept at the start of the block for the RSDP, written last.
const RSDP_ROOM: usize = 64;

/// The block being laid out: the bytes so far and where each table went.
struct Block {
    bytes: Vec<u8>,
    tables: Vec<([u8; 4], u64, u32)>,
}

impl Block {
    fn new() -> Self {
        Self {
            bytes: vec![0; RSDP_ROOM],
            tables: Vec::new(),
        }
    }

    /// Appends `table` at the next `align`-byte boundary; returns its guest address.
    fn place(&mut self, signature: [u8; 4], table: &[u8], align: usize) -> u64 {
        let offset = self.bytes.len().next_multiple_of(align);
        self.bytes.resize(offset, 0);
        self.bytes.extend_from_slice(table);
        let addr = layout::ACPI_TABLES + offset as u64;
        self.tables.push((signature, addr, table.len() as u32));
        addr
    }
}

/// Header offsets shared by every system description table.
const LENGTH_OFFSET: usize = 4;
const CHECKSUM_OFFSET: usize = 9;
const CREATOR_OFFSET: usize = 28;

/// Writes hushvm's creator id and revision, the table's length and its checksum into
/// a serialized table.
fn seal(table: &mut [u8]) {
    let length = table.len() as u32;
    table[LENGTH_OFFSET..LENGTH_OFFSET + 4].copy_from_slice(&length.to_le_bytes());
    table[CREATOR_OFFSET..CREATOR_OFFSET + 4].copy_from_slice(&CREATOR_ID);
    table[CREATOR_OFFSET + 4..CREATOR_OFFSET + 8].copy_from_slice(&CREATOR_REVISION.to_le_bytes());
    table[CHECKSUM_OFFSET] = 0;
    let sum = table.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte));
    table[CHECKSUM_OFFSET] = sum.wrapping_neg();
}

/// The block lies below 1 MiB, so every table address fits the 32-bit pointer fields.
const _: () = assert!(layout::ACPI_TABLES + layout::ACPI_TABLES_SIZE <= 1 << 32);

/// A table address in the block, for a 32-bit pointer field.
fn addr32(addr: u64) -> u32 {
    addr as u32
}
