//! The PCI host bridge as ACPI describes it: the MCFG (where ECAM is), `\_SB.PCI0` (the
//! root bridge: its bus range, windows and INTx routing) and `\_SB.MRES`, a motherboard
//! resource that reserves the ECAM window.
//!
//! Linux uses an MCFG window only if it is reserved, in the e820 map or by a PNP0C01 or
//! PNP0C02 device ("PCI: MMCONFIG at ... reserved as ACPI motherboard resource");
//! hushvm's e820 map leaves the device hole out, so MRES reserves it.
//!
//! `_PRT` uses the GSI form (no link devices: the source is 0 and the last field the
//! GSI), which OSes read as level-triggered, active low, shareable.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Memory32Fixed, Name, Package,
    Path, ResourceTemplate, IO,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::{Aml, AmlSink};

use super::tables::serialize;
use super::{seal, AcpiError, AcpiPci, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::devices::pci::host::DEVICES;
use crate::layout::{self, ports};

/// ECAM gives each bus 1 MiB (32 devices, 8 functions, 4 KiB each).
const ECAM_BUS_SIZE: u64 = layout::MIB;
/// `_PRT` address: the device in the high word, 0xffff for "any function".
const ANY_FUNCTION: u32 = 0xffff;
/// `_PRT` pin: INTA#.
const INTA: u8 = 0;

/// The bytes of the ECAM window: 1 MiB for each bus from 0 to `bus_end`.
fn ecam_size(pci: &AcpiPci) -> u64 {
    (u64::from(pci.bus_end) + 1) * ECAM_BUS_SIZE
}

/// Refuses what the descriptors cannot encode or an OS would reject: windows past
/// 4 GiB or empty, a misaligned ECAM base, the memory window over ECAM, an I/O window
/// over the configuration ports, INTx for a device bus 0 cannot have or routed twice.
pub(super) fn check(pci: &AcpiPci) -> Result<(), AcpiError> {
    let ecam = pci.ecam_base..pci.ecam_base.saturating_add(ecam_size(pci));
    if pci.ecam_base % ECAM_BUS_SIZE != 0 || ecam.end > 1 << 32 {
        return Err(AcpiError::PciEcamWindow {
            base: pci.ecam_base,
            bus_end: pci.bus_end,
        });
    }
    let mmio = &pci.mmio32;
    let (start, end) = (mmio.start, mmio.end);
    if mmio.is_empty() || end > 1 << 32 {
        return Err(AcpiError::PciMmio32Window { start, end });
    }
    if start < ecam.end && ecam.start < end {
        return Err(AcpiError::PciMmio32OverlapsEcam { start, end });
    }
    if let Some(io) = &pci.io {
        let config_end = ports::PCI_CONFIG + ports::PCI_CONFIG_COUNT - 1;
        if io.is_empty() || (*io.start() <= config_end && ports::PCI_CONFIG <= *io.end()) {
            let (start, end) = (*io.start(), *io.end());
            return Err(AcpiError::PciIoWindow { start, end });
        }
    }
    for (index, (device, _)) in pci.intx.iter().enumerate() {
        let twice = pci.intx[..index].iter().any(|(other, _)| other == device);
        if *device >= DEVICES || twice {
            return Err(AcpiError::PciIntxDevice { device: *device });
        }
    }
    Ok(())
}

/// The MCFG (the crate's): one allocation for segment 0, buses 0 to `bus_end`.
pub(super) fn mcfg(pci: &AcpiPci) -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(pci.ecam_base, 0, 0, pci.bus_end);
    let mut bytes = serialize(&mcfg);
    seal(&mut bytes);
    bytes
}

/// The DSDT devices under `\_SB`: PCI0 and MRES (`pci` already checked).
pub(super) fn devices(pci: &AcpiPci) -> Vec<u8> {
    let mut bytes = host_bridge(pci);
    bytes.extend(motherboard_resources(pci));
    bytes
}

/// `PCI0`: a PCI Express root bridge (PNP0A08, compatible with PCI's PNP0A03) for
/// segment 0 from bus 0, with its resources and its INTx routing.
fn host_bridge(pci: &AcpiPci) -> Vec<u8> {
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0A08"));
    let cid = Name::new(Path::new("_CID"), &EISAName::new("PNP0A03"));
    let adr = Name::new(Path::new("_ADR"), &aml::ZERO);
    let seg = Name::new(Path::new("_SEG"), &aml::ZERO);
    let uid = Name::new(Path::new("_UID"), &aml::ZERO);
    let bbn = Name::new(Path::new("_BBN"), &aml::ZERO);
    let crs = Name::new(Path::new("_CRS"), &BridgeResources(pci));
    let prt = Name::new(Path::new("_PRT"), &RoutingTable(&pci.intx));
    let children: Vec<&dyn Aml> = vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs, &prt];
    serialize(&Device::new(Path::new("PCI0"), children))
}

/// The root bridge's `_CRS`: the buses it decodes, the configuration ports it consumes
/// and the windows it passes on to devices (producers: the crate's address-space
/// descriptors leave the consumer bit clear), memory as non-cacheable read-write.
struct BridgeResources<'a>(&'a AcpiPci);

impl Aml for BridgeResources<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let pci = self.0;
        let buses = AddressSpace::new_bus_number(0u16, u16::from(pci.bus_end));
        let config = IO::new(
            ports::PCI_CONFIG,
            ports::PCI_CONFIG,
            1,
            ports::PCI_CONFIG_COUNT as u8,
        );
        let io = pci
            .io
            .as_ref()
            .map(|io| AddressSpace::new_io(*io.start(), *io.end(), None));
        // Checked: the window is not empty and ends at most at 4 GiB.
        let memory = AddressSpace::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            pci.mmio32.start as u32,
            (pci.mmio32.end - 1) as u32,
            None,
        );
        let mut resources: Vec<&dyn Aml> = vec![&buses, &config];
        if let Some(io) = &io {
            resources.push(io);
        }
        resources.push(&memory);
        ResourceTemplate::new(resources).to_aml_bytes(sink);
    }
}

/// `_PRT`: for each (device, GSI), INTA# of any function of the device goes to GSI.
struct RoutingTable<'a>(&'a [(u8, u32)]);

impl Aml for RoutingTable<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let addresses: Vec<u32> = self
            .0
            .iter()
            .map(|(device, _)| (u32::from(*device) << 16) | ANY_FUNCTION)
            .collect();
        let entries: Vec<Package> = addresses
            .iter()
            .zip(self.0)
            .map(|(address, (_, gsi))| Package::new(vec![address, &INTA, &aml::ZERO, gsi]))
            .collect();
        let entries: Vec<&dyn Aml> = entries.iter().map(|e| e as &dyn Aml).collect();
        Package::new(entries).to_aml_bytes(sink);
    }
}

/// `MRES`: a motherboard resource device (PNP0C02) that reserves the ECAM window, so
/// the OS trusts the MCFG and places nothing there.
fn motherboard_resources(pci: &AcpiPci) -> Vec<u8> {
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0C02"));
    let uid = Name::new(Path::new("_UID"), &MRES_UID);
    // Checked: the window ends below 4 GiB, so base and size fit 32 bits.
    let ecam = Memory32Fixed::new(true, pci.ecam_base as u32, ecam_size(pci) as u32);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&ecam]));
    serialize(&Device::new(Path::new("MRES"), vec![&hid, &uid, &crs]))
}

/// MRES's `_UID`: any value unique among PNP0C02 devices; it is the only one.
const MRES_UID: u8 = 1;
