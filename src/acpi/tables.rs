//! The fixed-format tables: RSDP, XSDT, FADT, FACS, MADT.

use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use super::{addr32, seal, CREATOR_ID, CREATOR_REVISION, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::devices::rtc;
use crate::layout::{self, gsi, ports};

/// Serializes a crate table or AML term.
pub(super) fn serialize(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The RSDP (revision 2: the crate fills both checksums), pointing at the XSDT.
pub(super) fn rsdp(xsdt: u64) -> Vec<u8> {
    serialize(&Rsdp::new(OEM_ID, xsdt))
}

/// The XSDT, listing `entries` (the FADT, the MADT and, with PCI, the MCFG).
pub(super) fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for entry in entries {
        xsdt.add_entry(*entry);
    }
    let mut bytes = serialize(&xsdt);
    seal(&mut bytes);
    bytes
}

/// The FACS: a FADT that is not hardware-reduced must point at one. Nothing in it is
/// used (no S3, no global lock).
pub(super) fn facs() -> Vec<u8> {
    serialize(&FACS::new())
}

/// IAPC_BOOT_ARCH: LEGACY_DEVICES (COM1 and the RTC sit on the ISA bus), 8042 (Linux then
/// probes the i8042 without a PNP0303 device), VGA_NOT_PRESENT. MSI is not refused.
pub(super) const IAPC_BOOT_ARCH: u16 = 0b111;
/// The value written to RESET_REG resets the machine: a hard reset through 0xcf9.
pub(super) const RESET_VALUE: u8 = 0x06;
/// P_LVL2_LAT and P_LVL3_LAT above 100 and 1000 us mean "no C2, no C3" (QEMU's value).
const NO_C2_C3_LATENCY: u16 = 0x0fff;

/// The FADT (revision 6.5, not hardware-reduced).
///
/// Flags: WBINVD (the instruction works), PROC_C1 (HLT on every vCPU), PWR_BUTTON and
/// SLP_BUTTON (no fixed-feature buttons), FIX_RTC (no RTC wake status in PM1), TMR_VAL_EXT
/// (a 32-bit PM timer), RESET_REG_SUP. Not RTC_S4: no S4 at all.
pub(super) fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::FixRtc)
        .flag(Flags::TmrValExt)
        .flag(Flags::ResetRegSup);
    // Both pointer widths name the same tables (ACPICA accepts that without a warning).
    fadt.firmware_ctrl = addr32(facs).into();
    fadt.x_firmware_ctrl = facs.into();
    fadt.dsdt = addr32(dsdt).into();
    fadt.x_dsdt = dsdt.into();
    fadt.sci_int = (gsi::SCI as u16).into();
    // SMI_CMD, ACPI_ENABLE and ACPI_DISABLE stay 0: ACPI is always enabled.
    pm_blocks(&mut fadt);
    fadt.p_lvl2_lat = NO_C2_C3_LATENCY.into();
    fadt.p_lvl3_lat = NO_C2_C3_LATENCY.into();
    fadt.century = rtc::reg::CENTURY;
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ports::RESET_CONTROL),
    );
    fadt.reset_value = RESET_VALUE;
    fadt.creator_id = CREATOR_ID;
    fadt.creator_revision = CREATOR_REVISION.to_le_bytes();
    let mut bytes = serialize(&fadt.finalize());
    seal(&mut bytes);
    bytes
}

/// The PM1a event and control blocks and the PM timer, in both the legacy port fields
/// and the generic address fields. The PM1 blocks hold 16-bit registers (ACPICA splits
/// the event block into status and enable halves); the timer is one 32-bit register.
fn pm_blocks(fadt: &mut FADTBuilder) {
    use AccessSize::{DwordAccess, WordAccess};
    fadt.pm1a_evt_blk = u32::from(ports::ACPI_PM1_EVENT).into();
    fadt.pm1_evt_len = ports::ACPI_PM1_EVENT_COUNT as u8;
    fadt.x_pm1a_evt_blk = io_register(
        ports::ACPI_PM1_EVENT,
        ports::ACPI_PM1_EVENT_COUNT,
        WordAccess,
    );
    fadt.pm1a_cnt_blk = u32::from(ports::ACPI_PM1_CONTROL).into();
    fadt.pm1_cnt_len = ports::ACPI_PM1_CONTROL_COUNT as u8;
    fadt.x_pm1a_cnt_blk = io_register(
        ports::ACPI_PM1_CONTROL,
        ports::ACPI_PM1_CONTROL_COUNT,
        WordAccess,
    );
    fadt.pm_tmr_blk = u32::from(ports::ACPI_PM_TIMER).into();
    fadt.pm_tmr_len = ports::ACPI_PM_TIMER_COUNT as u8;
    fadt.x_pm_tmr_blk = io_register(
        ports::ACPI_PM_TIMER,
        ports::ACPI_PM_TIMER_COUNT,
        DwordAccess,
    );
}

/// An I/O-port register block of `len` bytes, accessed `access` at a time.
fn io_register(port: u16, len: u16, access: AccessSize) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        (len * 8) as u8,
        0,
        access,
        u64::from(port),
    )
}

/// The MADT flag: the machine also has dual 8259 PICs, which the OS must mask.
pub(super) const MADT_PCAT_COMPAT: u32 = 1;
const MADT_FLAGS_OFFSET: usize = 40;
/// The local APICs and the IOAPIC sit below 4 GiB, where the 32-bit fields reach.
const _: () = assert!(layout::LAPIC_START < 1 << 32 && layout::IOAPIC_START < 1 << 32);
/// Interrupt Source Override flags: bus-conforming polarity and trigger.
pub(super) const MPS_INTI_CONFORMS: u16 = 0;
/// Interrupt Source Override flags: active high (0b01), level-triggered (0b11 << 2).
pub(super) const MPS_INTI_LEVEL_ACTIVE_HIGH: u16 = 0x000d;
/// Local APIC NMI: every processor, on LINT1.
const ALL_PROCESSORS: u8 = 0xff;
const LINT1: u8 = 1;

/// The MADT: one enabled local APIC per vCPU (UID = APIC id = index), the IOAPIC (id
/// `cpus`, GSI base 0), the ISA overrides (IRQ 0 on GSI 2; SCI level-triggered) and NMI
/// on every LINT1.
pub(super) fn madt(cpus: u8) -> Vec<u8> {
    let lapic = LocalInterruptController::Address(layout::LAPIC_START as u32);
    let mut madt = MADT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, lapic);
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpus, layout::IOAPIC_START as u32, 0));
    let mut bytes = serialize(&madt);
    bytes.extend(interrupt_source_override(0, gsi::TIMER, MPS_INTI_CONFORMS));
    bytes.extend(interrupt_source_override(
        gsi::SCI as u8,
        gsi::SCI,
        MPS_INTI_LEVEL_ACTIVE_HIGH,
    ));
    bytes.extend(local_apic_nmi(ALL_PROCESSORS, MPS_INTI_CONFORMS, LINT1));
    bytes[MADT_FLAGS_OFFSET..MADT_FLAGS_OFFSET + 4]
        .copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    seal(&mut bytes);
    bytes
}

/// MADT entry type 2: ISA `irq` arrives on `gsi`.
fn interrupt_source_override(irq: u8, gsi: u32, flags: u16) -> [u8; 10] {
    let mut entry = [0u8; 10];
    entry[0] = 2;
    entry[1] = 10;
    entry[2] = 0; // bus: ISA
    entry[3] = irq;
    entry[4..8].copy_from_slice(&gsi.to_le_bytes());
    entry[8..10].copy_from_slice(&flags.to_le_bytes());
    entry
}

/// MADT entry type 4: the local APIC input `lint` of processor `uid` is wired to NMI.
fn local_apic_nmi(uid: u8, flags: u16, lint: u8) -> [u8; 6] {
    let [flags_low, flags_high] = flags.to_le_bytes();
    [4, 6, uid, flags_low, flags_high, lint]
}
