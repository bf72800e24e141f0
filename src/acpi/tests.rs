//! Unit tests: the tables' bytes as an OS reads them, and the DSDT's AML walked by a
//! small parser of the terms the builder emits.

use std::collections::BTreeMap;

use super::tables::{
    IAPC_BOOT_ARCH, MADT_PCAT_COMPAT, MPS_INTI_CONFORMS, MPS_INTI_LEVEL_ACTIVE_HIGH, RESET_VALUE,
};
use super::*;
use crate::layout::{gsi, ports};

fn config(cpus: u8, virtio: usize) -> AcpiConfig {
    AcpiConfig {
        cpus,
        virtio_mmio: (0..virtio as u8)
            .map(|slot| VirtioMmioWindow {
                base: layout::virtio_mmio_slot(slot),
                size: layout::VIRTIO_MMIO_SLOT_SIZE,
                gsi: layout::virtio_mmio_gsi(slot),
            })
            .collect(),
        pci: None,
    }
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |sum, byte| sum.wrapping_add(*byte))
}

/// The bytes of the table with `signature`, found through the `tables` list.
fn table<'a>(tables: &'a AcpiTables, signature: &[u8; 4]) -> &'a [u8] {
    let (_, addr, len) = tables
        .tables
        .iter()
        .find(|(sig, _, _)| sig == signature)
        .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(signature)));
    let offset = (addr - tables.rsdp_addr) as usize;
    &tables.bytes[offset..offset + *len as usize]
}

/// The bytes at guest address `addr` in the block, `len` of them.
fn at(tables: &AcpiTables, addr: u64, len: usize) -> &[u8] {
    let offset = (addr - layout::ACPI_TABLES) as usize;
    &tables.bytes[offset..offset + len]
}

#[test]
fn every_table_sums_to_zero_and_its_length_field_is_its_length() {
    for cpus in [1, 2, 8, MAX_CPUS] {
        let tables = build(&config(cpus, 3)).unwrap();
        for (signature, addr, len) in &tables.tables {
            let bytes = at(&tables, *addr, *len as usize);
            assert_eq!(&bytes[..4], signature);
            assert_eq!(u32_at(bytes, 4), *len, "{signature:?}");
            if signature != b"FACS" {
                assert_eq!(sum(bytes), 0, "{signature:?}");
                assert_eq!(&bytes[10..16], &OEM_ID);
                assert_eq!(&bytes[16..24], &OEM_TABLE_ID);
                assert_eq!(&bytes[28..32], &CREATOR_ID);
            }
            assert_eq!(addr % 16, 0, "{signature:?} aligned");
        }
        assert!(tables.bytes.len() as u64 <= layout::ACPI_TABLES_SIZE);
        let mut spans: Vec<(u64, u64)> = tables
            .tables
            .iter()
            .map(|(_, addr, len)| (*addr, addr + u64::from(*len)))
            .collect();
        spans.sort();
        assert!(spans[0].0 >= tables.rsdp_addr + 36, "after the RSDP");
        assert!(
            spans.windows(2).all(|pair| pair[0].1 <= pair[1].0),
            "no overlap"
        );
        let end = layout::ACPI_TABLES + tables.bytes.len() as u64;
        assert_eq!(
            spans.last().unwrap().1,
            end,
            "the block ends with the last table"
        );
    }
}

#[test]
fn rsdp_checksums_and_xsdt_pointer() {
    let tables = build(&config(2, 1)).unwrap();
    assert_eq!(tables.rsdp_addr, layout::ACPI_TABLES);
    let rsdp = &tables.bytes[..36];
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(sum(rsdp), 0, "extended checksum");
    assert_eq!(&rsdp[9..15], &OEM_ID);
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(u32_at(rsdp, 20), 36, "length");
    let xsdt = u64_at(rsdp, 24);
    assert_eq!(at(&tables, xsdt, 4), b"XSDT");
}

#[test]
fn xsdt_lists_the_fadt_and_the_madt() {
    let tables = build(&config(1, 0)).unwrap();
    let xsdt = table(&tables, b"XSDT");
    let entries: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|o| u64_at(xsdt, o))
        .collect();
    let signatures: Vec<&[u8]> = entries.iter().map(|a| at(&tables, *a, 4)).collect();
    assert_eq!(signatures, [b"FACP", b"APIC"]);
}

#[test]
fn fadt_describes_the_pm_blocks_sci_reset_and_pointers() {
    let tables = build(&config(1, 0)).unwrap();
    let fadt = table(&tables, b"FACP");
    assert_eq!(fadt.len(), 276, "ACPI 6.5 FADT");
    assert_eq!((fadt[8], fadt[131]), (6, 5), "revision 6.5");
    let dsdt = u32_at(fadt, 40);
    assert_eq!(u64::from(dsdt), u64_at(fadt, 140), "DSDT and X_DSDT");
    assert_eq!(at(&tables, dsdt.into(), 4), b"DSDT");
    let facs = u32_at(fadt, 36);
    assert_eq!(u64::from(facs), u64_at(fadt, 132), "FIRMWARE_CTRL and X_");
    assert_eq!(facs % 64, 0, "FACS alignment");
    assert_eq!(at(&tables, facs.into(), 8), b"FACS\x40\0\0\0");
    assert_eq!(u16_at(fadt, 46), gsi::SCI as u16);
    assert_eq!(u32_at(fadt, 48), 0, "no SMI_CMD");
    let blocks = [
        (56, 88, 148, ports::ACPI_PM1_EVENT, 4),
        (64, 89, 172, ports::ACPI_PM1_CONTROL, 2),
        (76, 91, 208, ports::ACPI_PM_TIMER, 4),
    ];
    for (legacy, len, gas, port, bytes) in blocks {
        assert_eq!(u32_at(fadt, legacy), u32::from(port));
        assert_eq!(fadt[len], bytes);
        assert_eq!(fadt[gas], 1, "system I/O");
        assert_eq!(fadt[gas + 1], bytes * 8, "bit width");
        assert_eq!(u64_at(fadt, gas + 4), u64::from(port));
    }
    let flags = u32_at(fadt, 112);
    let wanted = [0, 2, 4, 5, 6, 8, 10]; // WBINVD PROC_C1 PWR SLP FIX_RTC TMR_VAL_EXT RESET
    assert_eq!(flags, wanted.iter().map(|bit| 1 << bit).sum::<u32>());
    assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
    assert_eq!(
        &fadt[116..120],
        &[1, 8, 0, 1],
        "RESET_REG: I/O, 8 bits, byte access"
    );
    assert_eq!(u64_at(fadt, 120), u64::from(ports::RESET_CONTROL));
    assert_eq!(fadt[128], RESET_VALUE);
    assert_eq!(u16_at(fadt, 109), IAPC_BOOT_ARCH);
    assert_eq!(IAPC_BOOT_ARCH & 0b1110, 0b0110, "8042, no VGA, MSI allowed");
    assert_eq!(fadt[108], crate::devices::rtc::reg::CENTURY);
}

/// The MADT's interrupt controller structures: (type, body after type and length).
fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
    let mut entries = Vec::new();
    let mut offset = 44;
    while offset < madt.len() {
        let (kind, len) = (madt[offset], madt[offset + 1] as usize);
        assert!(len >= 2 && offset + len <= madt.len(), "entry at {offset}");
        entries.push((kind, &madt[offset + 2..offset + len]));
        offset += len;
    }
    entries
}

#[test]
fn madt_has_one_lapic_per_vcpu_the_ioapic_overrides_and_nmi() {
    for cpus in [1u8, 2, 8] {
        let tables = build(&config(cpus, 0)).unwrap();
        let madt = table(&tables, b"APIC");
        assert_eq!(u32_at(madt, 36) as u64, layout::LAPIC_START);
        assert_eq!(u32_at(madt, 40), MADT_PCAT_COMPAT);
        let entries = madt_entries(madt);
        let lapics: Vec<&[u8]> = entries.iter().filter(|e| e.0 == 0).map(|e| e.1).collect();
        assert_eq!(lapics.len(), usize::from(cpus));
        for (id, lapic) in lapics.iter().enumerate() {
            assert_eq!(
                lapic,
                &[id as u8, id as u8, 1, 0, 0, 0],
                "UID, APIC id, enabled"
            );
        }
        let ioapics: Vec<&[u8]> = entries.iter().filter(|e| e.0 == 1).map(|e| e.1).collect();
        assert_eq!(ioapics.len(), 1);
        assert_eq!(ioapics[0][0], cpus, "IOAPIC id");
        assert_eq!(u32_at(ioapics[0], 2) as u64, layout::IOAPIC_START);
        assert_eq!(u32_at(ioapics[0], 6), 0, "GSI base");
        let overrides: Vec<(u8, u8, u32, u16)> = entries
            .iter()
            .filter(|e| e.0 == 2)
            .map(|(_, b)| (b[0], b[1], u32_at(b, 2), u16_at(b, 6)))
            .collect();
        let sci = (0, gsi::SCI as u8, gsi::SCI, MPS_INTI_LEVEL_ACTIVE_HIGH);
        assert_eq!(overrides, [(0, 0, gsi::TIMER, MPS_INTI_CONFORMS), sci]);
        let nmis: Vec<&[u8]> = entries.iter().filter(|e| e.0 == 4).map(|e| e.1).collect();
        assert_eq!(nmis, [&[0xff, 0, 0, 1][..]], "all processors, LINT1");
        assert_eq!(entries.len(), usize::from(cpus) + 4);
    }
}

#[test]
fn bad_configurations_are_refused() {
    assert_eq!(build(&config(0, 0)), Err(AcpiError::NoCpus));
    assert_eq!(
        build(&config(255, 0)),
        Err(AcpiError::TooManyCpus { cpus: 255 })
    );
    let mut many = config(1, 0);
    many.virtio_mmio = vec![config(1, 1).virtio_mmio[0]; MAX_VIRTIO_DEVICES + 1];
    assert_eq!(
        build(&many),
        Err(AcpiError::TooManyVirtioDevices { count: 257 })
    );
    let high = VirtioMmioWindow {
        base: layout::MMIO_HOLE_END - 0x800,
        size: 0x1000,
        gsi: 5,
    };
    let mut above = config(1, 0);
    above.virtio_mmio.push(high);
    assert_eq!(
        build(&above),
        Err(AcpiError::VirtioWindowAbove4G {
            base: high.base,
            size: high.size
        })
    );
    let fits = build(&config(2, 3)).unwrap().bytes.len() as u64;
    assert_eq!(
        build_within(&config(2, 3), fits - 1),
        Err(AcpiError::TooLarge {
            bytes: fits,
            limit: fits - 1
        })
    );
}

#[test]
fn the_most_devices_still_fit() {
    let mut most = config(MAX_CPUS, 0);
    most.virtio_mmio = vec![config(1, 1).virtio_mmio[0]; MAX_VIRTIO_DEVICES];
    let tables = build(&most).unwrap();
    let names = aml::walk(&table(&tables, b"DSDT")[36..]);
    assert!(names.contains_key("\\_SB_.VRFF._CRS"));
    assert!(names.contains_key("\\_SB_.C0FD._UID"));
}

mod aml;
mod pci;

use aml::Value;

fn dsdt_names(config: &AcpiConfig) -> BTreeMap<String, Value> {
    let tables = build(config).unwrap();
    aml::walk(&table(&tables, b"DSDT")[36..])
}

#[test]
fn dsdt_has_com1_and_the_rtc_with_their_resources() {
    let names = dsdt_names(&config(1, 0));
    assert_eq!(
        names["\\_SB_.COM1._HID"],
        Value::Integer(0x0105_d041),
        "PNP0501"
    );
    assert_eq!(
        names["\\_SB_.RTC_._HID"],
        Value::Integer(0x000b_d041),
        "PNP0B00"
    );
    for (device, port, count, irq) in [
        ("COM1", ports::COM1, ports::COM1_COUNT, gsi::COM1),
        ("RTC_", ports::RTC, ports::RTC_COUNT, gsi::RTC),
    ] {
        assert_eq!(names[&format!("\\_SB_.{device}._UID")], Value::Integer(0));
        let Value::Buffer(crs) = &names[&format!("\\_SB_.{device}._CRS")] else {
            panic!("{device}: _CRS is not a buffer");
        };
        let [p0, p1] = port.to_le_bytes();
        let io = [0x47, 1, p0, p1, p0, p1, 1, count as u8];
        let interrupt = aml::extended_irq(irq, 0b0011); // consumer, edge, high, exclusive
        assert_eq!(aml::resources(crs), [&io[..], &interrupt[..]], "{device}");
    }
}

#[test]
fn dsdt_has_one_lnro0005_device_per_virtio_window() {
    let config = config(1, 3);
    let names = dsdt_names(&config);
    for (index, window) in config.virtio_mmio.iter().enumerate() {
        let device = format!("\\_SB_.VR{index:02X}");
        assert_eq!(
            names[&format!("{device}._HID")],
            Value::String("LNRO0005".into())
        );
        assert_eq!(
            names[&format!("{device}._UID")],
            Value::Integer(index as u64)
        );
        let Value::Buffer(crs) = &names[&format!("{device}._CRS")] else {
            panic!("{device}: _CRS is not a buffer");
        };
        let mut memory = vec![0x86, 9, 0, 1];
        memory.extend((window.base as u32).to_le_bytes());
        memory.extend((window.size as u32).to_le_bytes());
        let interrupt = aml::extended_irq(window.gsi, 0b0011);
        assert_eq!(aml::resources(crs), [&memory[..], &interrupt[..]]);
    }
    assert!(!names.contains_key("\\_SB_.VR03._HID"));
}

#[test]
fn dsdt_has_a_processor_device_per_vcpu_and_s5() {
    let names = dsdt_names(&config(8, 0));
    for id in 0..8u64 {
        assert_eq!(names[&format!("\\_SB_.C{id:03X}._UID")], Value::Integer(id));
        let hid = Value::String("ACPI0007".into());
        assert_eq!(names[&format!("\\_SB_.C{id:03X}._HID")], hid);
    }
    assert!(!names.contains_key("\\_SB_.C008._HID"));
    let s5 = Value::Package(vec![
        Value::Integer(u64::from(SLP_TYP_S5)),
        Value::Integer(0),
        Value::Integer(0),
        Value::Integer(0),
    ]);
    assert_eq!(names["\\_S5_"], s5);
    assert_eq!(SLP_TYP_S5, 5);
}

/// Writes every table (not the RSDP, which `iasl -d` does not take alone) of a
/// 2-vCPU, 2-virtio machine with PCI (two INTx routes) into `$HUSHVM_ACPI_DUMP`, for
/// src/acpi/iasl-check.sh.
#[test]
#[ignore = "writes files for iasl; run by src/acpi/iasl-check.sh"]
fn dump_tables_for_iasl() {
    let dir = std::path::PathBuf::from(std::env::var_os("HUSHVM_ACPI_DUMP").unwrap());
    let tables = build(&pci::with_pci(pci::pci(0, &[(1, 16), (2, 17)]))).unwrap();
    for (signature, addr, len) in &tables.tables {
        let name = String::from_utf8_lossy(signature).to_lowercase();
        let bytes = at(&tables, *addr, *len as usize);
        std::fs::write(dir.join(format!("{name}.dat")), bytes).unwrap();
    }
}
