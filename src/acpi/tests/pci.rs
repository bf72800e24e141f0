//! The PCI description: the MCFG, `\_SB.PCI0` and `\_SB.MRES`, and the tables without
//! them. Expected descriptor bytes are written out from the ACPI spec's layouts, not
//! from the crate's encoders.

use super::*;
use crate::layout::ports;

/// hushvm's layout with buses 0 to `bus_end` and the given INTx routes.
pub(super) fn pci(bus_end: u8, intx: &[(u8, u32)]) -> AcpiPci {
    AcpiPci {
        ecam_base: layout::PCI_ECAM_START,
        bus_end,
        mmio32: layout::PCI_MMIO32_START..layout::PCI_MMIO32_END,
        io: Some(ports::PCI_IO_START..=u16::MAX),
        intx: intx.to_vec(),
    }
}

pub(super) fn with_pci(pci: AcpiPci) -> AcpiConfig {
    AcpiConfig {
        pci: Some(pci),
        ..config(2, 2)
    }
}

/// The XSDT's entries, as the signatures they point at.
fn xsdt_signatures(tables: &AcpiTables) -> Vec<[u8; 4]> {
    let xsdt = table(tables, b"XSDT");
    (36..xsdt.len())
        .step_by(8)
        .map(|offset| at(tables, u64_at(xsdt, offset), 4).try_into().unwrap())
        .collect()
}

#[test]
fn mcfg_has_one_ecam_allocation_and_an_xsdt_entry() {
    for bus_end in [0, 3, 255] {
        let tables = build(&with_pci(pci(bus_end, &[]))).unwrap();
        let mcfg = table(&tables, b"MCFG");
        assert_eq!(
            mcfg.len(),
            60,
            "header, 8 reserved bytes, one 16-byte entry"
        );
        assert_eq!(u32_at(mcfg, 4), 60);
        assert_eq!(sum(mcfg), 0);
        assert_eq!(mcfg[8], 1, "revision");
        assert_eq!(&mcfg[10..16], &OEM_ID);
        assert_eq!(&mcfg[16..24], &OEM_TABLE_ID);
        assert_eq!(&mcfg[28..32], &CREATOR_ID);
        assert_eq!(u64_at(mcfg, 36), 0, "reserved");
        assert_eq!(u64_at(mcfg, 44), layout::PCI_ECAM_START, "base");
        assert_eq!(u16_at(mcfg, 52), 0, "segment");
        assert_eq!((mcfg[54], mcfg[55]), (0, bus_end), "bus range");
        assert_eq!(u32_at(mcfg, 56), 0, "reserved");
        assert_eq!(xsdt_signatures(&tables), [*b"FACP", *b"APIC", *b"MCFG"]);
    }
}

#[test]
fn every_table_with_pci_sums_to_zero_in_address_order() {
    let tables = build(&with_pci(pci(0, &[(1, 16), (2, 17)]))).unwrap();
    let signatures: Vec<[u8; 4]> = tables.tables.iter().map(|t| t.0).collect();
    let order = [*b"FACS", *b"DSDT", *b"APIC", *b"MCFG", *b"FACP", *b"XSDT"];
    assert_eq!(signatures, order);
    for (signature, addr, len) in &tables.tables {
        let bytes = at(&tables, *addr, *len as usize);
        assert_eq!(u32_at(bytes, 4), *len, "{signature:?}");
        if signature != b"FACS" {
            assert_eq!(sum(bytes), 0, "{signature:?}");
        }
    }
}

#[test]
fn pci0_is_a_pcie_root_bridge_for_segment_0_bus_0() {
    let names = dsdt_names(&with_pci(pci(0, &[])));
    let integer = |name: &str| names[&format!("\\_SB_.PCI0.{name}")].clone();
    assert_eq!(integer("_HID"), Value::Integer(0x080a_d041), "PNP0A08");
    assert_eq!(integer("_CID"), Value::Integer(0x030a_d041), "PNP0A03");
    for name in ["_ADR", "_SEG", "_UID", "_BBN"] {
        assert_eq!(integer(name), Value::Integer(0), "{name}");
    }
}

/// A Word Address Space descriptor the bridge produces (min and max fixed).
fn word_window(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
    let mut descriptor = vec![0x88, 13, 0, kind, 0b1100, type_flags];
    for field in [0, min, max, 0, max - min + 1] {
        descriptor.extend(field.to_le_bytes());
    }
    descriptor
}

/// A DWord memory window the bridge produces: non-cacheable, read-write.
fn dword_memory_window(min: u32, max: u32) -> Vec<u8> {
    let mut descriptor = vec![0x87, 23, 0, 0, 0b1100, 0b0001];
    for field in [0, min, max, 0, max - min + 1] {
        descriptor.extend(field.to_le_bytes());
    }
    descriptor
}

fn crs(names: &BTreeMap<String, Value>, device: &str) -> Vec<Vec<u8>> {
    let Value::Buffer(crs) = &names[&format!("\\_SB_.{device}._CRS")] else {
        panic!("{device}: _CRS is not a buffer");
    };
    aml::resources(crs).iter().map(|r| r.to_vec()).collect()
}

#[test]
fn pci0_crs_has_the_bus_range_config_ports_and_windows_exactly() {
    const BUS: u8 = 2;
    const IO: u8 = 1;
    const ENTIRE_RANGE: u8 = 3;
    let buses = word_window(BUS, 0, 0, 3);
    let config_ports = vec![0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8];
    let io = word_window(IO, ENTIRE_RANGE, 0x0d00, 0xffff);
    let memory = dword_memory_window(0xc100_0000, 0xdfff_ffff);
    let names = dsdt_names(&with_pci(pci(3, &[])));
    let all = [buses, config_ports.clone(), io, memory];
    assert_eq!(crs(&names, "PCI0"), all);

    let mut no_io = pci(0, &[]);
    no_io.io = None;
    no_io.mmio32 = 0xf000_0000..1 << 32;
    let names = dsdt_names(&with_pci(no_io));
    let memory = dword_memory_window(0xf000_0000, 0xffff_ffff);
    assert_eq!(
        crs(&names, "PCI0"),
        [word_window(BUS, 0, 0, 0), config_ports, memory]
    );
}

#[test]
fn prt_routes_inta_of_each_device_to_its_gsi() {
    let intx = [(1, 16), (2, 17), (31, 23), (0, 5)];
    let names = dsdt_names(&with_pci(pci(0, &intx)));
    let Value::Package(entries) = &names["\\_SB_.PCI0._PRT"] else {
        panic!("_PRT is not a package");
    };
    let expected: Vec<Value> = intx
        .iter()
        .map(|(device, gsi)| {
            Value::Package(vec![
                Value::Integer((u64::from(*device) << 16) | 0xffff),
                Value::Integer(0), // INTA#
                Value::Integer(0), // no link device: the last field is a GSI
                Value::Integer(u64::from(*gsi)),
            ])
        })
        .collect();
    assert_eq!(entries, &expected);

    let names = dsdt_names(&with_pci(pci(0, &[])));
    assert_eq!(names["\\_SB_.PCI0._PRT"], Value::Package(Vec::new()));
}

#[test]
fn mres_reserves_the_ecam_window() {
    for (bus_end, size) in [(0u8, layout::MIB), (3, 4 * layout::MIB)] {
        let names = dsdt_names(&with_pci(pci(bus_end, &[])));
        assert_eq!(
            names["\\_SB_.MRES._HID"],
            Value::Integer(0x020c_d041),
            "PNP0C02"
        );
        assert_eq!(names["\\_SB_.MRES._UID"], Value::Integer(1));
        let mut memory = vec![0x86, 9, 0, 1];
        memory.extend((layout::PCI_ECAM_START as u32).to_le_bytes());
        memory.extend((size as u32).to_le_bytes());
        assert_eq!(crs(&names, "MRES"), [memory]);
    }
}

#[test]
fn without_pci_there_is_no_mcfg_and_no_pci_devices() {
    let plain = build(&config(2, 2)).unwrap();
    let signatures: Vec<[u8; 4]> = plain.tables.iter().map(|t| t.0).collect();
    assert_eq!(
        signatures,
        [*b"FACS", *b"DSDT", *b"APIC", *b"FACP", *b"XSDT"]
    );
    assert_eq!(xsdt_signatures(&plain), [*b"FACP", *b"APIC"]);
    let plain_names = dsdt_names(&config(2, 2));
    // With PCI, the DSDT holds the same objects and PCI0's and MRES's besides.
    let mut names = dsdt_names(&with_pci(pci(0, &[(1, 16)])));
    names.retain(|name, _| !name.starts_with("\\_SB_.PCI0.") && !name.starts_with("\\_SB_.MRES."));
    assert_eq!(names, plain_names);
    let with = build(&with_pci(pci(0, &[]))).unwrap();
    for signature in [b"FACS", b"APIC"] {
        assert_eq!(table(&with, signature), table(&plain, signature));
    }
}

#[test]
fn bad_pci_descriptions_are_refused() {
    let refused = |pci: AcpiPci| build(&with_pci(pci)).unwrap_err();
    let ecam = |base, bus_end| AcpiError::PciEcamWindow { base, bus_end };
    let mut high = pci(0, &[]);
    high.ecam_base = (1 << 32) - layout::MIB;
    high.bus_end = 1;
    assert_eq!(refused(high), ecam((1 << 32) - layout::MIB, 1));
    let mut misaligned = pci(0, &[]);
    misaligned.ecam_base += 0x1000;
    assert_eq!(
        refused(misaligned),
        ecam(layout::PCI_ECAM_START + 0x1000, 0)
    );

    let mmio32 = |start, end| AcpiError::PciMmio32Window { start, end };
    for (start, end) in [(0xc100_0000, 0xc100_0000), (0xc100_0000, (1 << 32) + 1)] {
        let mut bad = pci(0, &[]);
        bad.mmio32 = start..end;
        assert_eq!(refused(bad), mmio32(start, end));
    }
    let mut over_ecam = pci(0, &[]);
    over_ecam.mmio32 = 0xc100_0000..layout::PCI_ECAM_START + 1;
    let overlap = AcpiError::PciMmio32OverlapsEcam {
        start: 0xc100_0000,
        end: layout::PCI_ECAM_START + 1,
    };
    assert_eq!(refused(over_ecam), overlap);

    for (start, end) in [(0x0d00, 0x0cff), (0x0c00, 0x0cf8), (0x0cff, 0xffff)] {
        let mut bad = pci(0, &[]);
        bad.io = Some(start..=end);
        assert_eq!(refused(bad), AcpiError::PciIoWindow { start, end });
    }
    let device = |device| AcpiError::PciIntxDevice { device };
    assert_eq!(refused(pci(0, &[(32, 16)])), device(32));
    assert_eq!(refused(pci(0, &[(1, 16), (2, 17), (1, 18)])), device(1));
}

#[test]
fn the_most_devices_and_a_full_intx_table_still_fit() {
    let intx: Vec<(u8, u32)> = (0..32)
        .map(|device| (device, 16 + u32::from(device % 8)))
        .collect();
    let mut most = with_pci(pci(255, &intx));
    most.cpus = MAX_CPUS;
    most.virtio_mmio = vec![config(1, 1).virtio_mmio[0]; MAX_VIRTIO_DEVICES];
    let tables = build(&most).unwrap();
    let names = aml::walk(&table(&tables, b"DSDT")[36..]);
    let Value::Package(entries) = &names["\\_SB_.PCI0._PRT"] else {
        panic!("_PRT is not a package");
    };
    assert_eq!(entries.len(), 32);
}
