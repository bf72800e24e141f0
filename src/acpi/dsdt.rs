//! The DSDT: the devices the guest cannot discover by itself, and the S5 sleep type.

use acpi_tables::aml::{
    self, Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope,
    IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{seal, AcpiConfig, VirtioMmioWindow, OEM_ID, OEM_REVISION, OEM_TABLE_ID, SLP_TYP_S5};
use crate::layout::{gsi, ports};

/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
const HEADER_LEN: u32 = 36;
/// The _HID Linux's virtio_mmio driver matches through ACPI.
pub(super) const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// The _HID of a processor declared as a device (ACPI 6, 8.4).
const PROCESSOR_HID: &str = "ACPI0007";

/// The DSDT for `config` (already checked: at most 256 virtio devices, 254 vCPUs, every
/// window below 4 GiB, a PCI description the descriptors can encode).
pub(super) fn dsdt(config: &AcpiConfig) -> Vec<u8> {
    let mut devices = Vec::new();
    for id in 0..config.cpus {
        devices.extend(processor(id));
    }
    devices.extend(isa_device(
        "COM1",
        "PNP0501",
        ports::COM1,
        ports::COM1_COUNT,
        gsi::COM1,
    ));
    devices.extend(isa_device(
        "RTC_",
        "PNP0B00",
        ports::RTC,
        ports::RTC_COUNT,
        gsi::RTC,
    ));
    for (index, window) in config.virtio_mmio.iter().enumerate() {
        devices.extend(virtio_mmio(index, window));
    }
    if let Some(pci) = &config.pci {
        devices.extend(super::pci::devices(pci));
    }
    let mut sdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.append_slice(&Scope::raw(Path::new("\\_SB_"), devices));
    sdt.append_slice(&aml_bytes(&s5()));
    let mut bytes = sdt.as_slice().to_vec();
    seal(&mut bytes);
    bytes
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// `\_S5`: the PM1a SLP_TYP value for soft-off (there is no PM1b; the rest is reserved).
fn s5() -> Name {
    Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&SLP_TYP_S5, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    )
}

/// Processor device `Cnnn`, so the OS ties the MADT entry of UID `id` to a namespace
/// object.
fn processor(id: u8) -> Vec<u8> {
    let name = format!("C{id:03X}");
    let hid = Name::new(Path::new("_HID"), &PROCESSOR_HID);
    let uid = Name::new(Path::new("_UID"), &id);
    aml_bytes(&Device::new(Path::new(&name), vec![&hid, &uid]))
}

/// An ISA device with one I/O range and one edge-triggered, active-high interrupt.
fn isa_device(name: &str, eisa_id: &str, port: u16, count: u16, irq: u32) -> Vec<u8> {
    let hid = Name::new(Path::new("_HID"), &EISAName::new(eisa_id));
    let uid = Name::new(Path::new("_UID"), &aml::ZERO);
    let io = IO::new(port, port, 1, count as u8);
    let interrupt = Interrupt::new(true, true, false, false, irq);
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&io, &interrupt]),
    );
    aml_bytes(&Device::new(Path::new(name), vec![&hid, &uid, &crs]))
}

/// virtio-mmio device `VRnn`: its window and its interrupt (edge-triggered, active high,
/// exclusive), as Linux's virtio_mmio driver reads them.
fn virtio_mmio(index: usize, window: &VirtioMmioWindow) -> Vec<u8> {
    let name = format!("VR{index:02X}");
    let hid = Name::new(Path::new("_HID"), &VIRTIO_MMIO_HID);
    let uid = Name::new(Path::new("_UID"), &(index as u32));
    let memory = Memory32Fixed::new(true, window.base as u32, window.size as u32);
    let interrupt = Interrupt::new(true, true, false, false, window.gsi);
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&memory, &interrupt]),
    );
    aml_bytes(&Device::new(Path::new(&name), vec![&hid, &uid, &crs]))
}
