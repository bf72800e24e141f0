//! Configuration space and the root bus: sizing, masks, capabilities, BAR moves, and
//! the two configuration mechanisms.

use std::sync::{Arc, Mutex};

use super::config::*;
use super::host::*;
use super::PciFunction;
use crate::bus::{Access, BusDevice, StopRequest};
use crate::devices::acpi_pm::ResetControl;

const IDS: PciIds = PciIds {
    vendor: 0x1af4,
    device: 0x1042,
    revision: 1,
    class: 0x01_80_00,
    subsystem_vendor: 0x1af4,
    subsystem: 2,
};

fn read32(space: &ConfigSpace, offset: u16) -> u32 {
    space.u32_at(offset)
}

fn write32(space: &mut ConfigSpace, offset: u16, value: u32) -> Option<BarChange> {
    space.write(offset, &value.to_le_bytes())
}

#[test]
fn identity_registers_read_back_and_are_read_only() {
    let mut space = ConfigSpace::new(IDS);
    assert_eq!(read32(&space, VENDOR_ID), 0x1042_1af4);
    assert_eq!(read32(&space, REVISION_ID), 0x0180_0001);
    assert_eq!(read32(&space, SUBSYSTEM_VENDOR_ID), 0x0002_1af4);
    write32(&mut space, VENDOR_ID, 0);
    write32(&mut space, REVISION_ID, 0);
    write32(&mut space, SUBSYSTEM_VENDOR_ID, 0);
    assert_eq!(read32(&space, VENDOR_ID), 0x1042_1af4);
    assert_eq!(read32(&space, REVISION_ID), 0x0180_0001);
    assert_eq!(read32(&space, SUBSYSTEM_VENDOR_ID), 0x0002_1af4);
}

#[test]
fn command_keeps_only_its_writable_bits_and_status_is_read_only() {
    let mut space = ConfigSpace::new(IDS);
    write32(&mut space, COMMAND, 0xffff_ffff);
    assert_eq!(space.command(), 0x0547);
    assert_eq!(space.u16_at(STATUS), 0);
    space.set_interrupt_status(true);
    assert_eq!(space.u16_at(STATUS), STATUS_INTERRUPT);
    space.write(STATUS, &[0xff, 0xff]);
    assert_eq!(space.u16_at(STATUS), STATUS_INTERRUPT);
    space.write(INTERRUPT_LINE, &[0xff, 0xff]);
    assert_eq!(space.u8_at(INTERRUPT_LINE), 0xff);
    assert_eq!(space.u8_at(INTERRUPT_PIN), 0, "the pin is read-only");
}

#[test]
fn past_the_header_reads_zero_and_ignores_writes() {
    let mut space = ConfigSpace::new(IDS);
    space.write(0x100, &[1, 2, 3, 4]);
    space.write(0xffe, &[1, 2, 3, 4]);
    let mut data = [0xaa; 4];
    space.read(0x100, &mut data);
    assert_eq!(data, [0; 4]);
    space.read(0xffe, &mut data);
    assert_eq!(data, [0; 4], "past the end too");
}

#[test]
fn sizing_each_bar_kind_reads_the_size_mask_with_type_bits() {
    let mut space = ConfigSpace::new(IDS);
    space.add_bar(0, BarKind::Memory32, 0x1000).unwrap();
    space.add_bar(1, BarKind::Io, 0x20).unwrap();
    space.add_bar(2, BarKind::Memory64, 0x4000).unwrap();
    space.add_bar(4, BarKind::Memory64, 1 << 33).unwrap();
    for bar in 0..6u16 {
        assert_eq!(write32(&mut space, BAR0 + 4 * bar, 0xffff_ffff), None);
    }
    assert_eq!(read32(&space, BAR0), 0xffff_f000);
    assert_eq!(read32(&space, BAR0 + 4), 0xffff_ffe1);
    assert_eq!(read32(&space, BAR0 + 8), 0xffff_c004);
    assert_eq!(read32(&space, BAR0 + 12), 0xffff_ffff);
    assert_eq!(read32(&space, BAR0 + 16), 0x0000_0004, "8 GiB: no low bits");
    assert_eq!(read32(&space, BAR0 + 20), 0xffff_fffe);
    assert_eq!(space.bar_size(4), Some(1 << 33));
    assert_eq!(space.bar_size(3), None, "upper half");
}

#[test]
fn unimplemented_bars_read_zero() {
    let mut space = ConfigSpace::new(IDS);
    space.add_bar(2, BarKind::Memory32, 0x100).unwrap();
    for bar in [0u16, 1, 3, 4, 5] {
        assert_eq!(write32(&mut space, BAR0 + 4 * bar, 0xffff_ffff), None);
        assert_eq!(read32(&space, BAR0 + 4 * bar), 0);
    }
}

#[test]
fn bad_bars_are_refused() {
    let mut space = ConfigSpace::new(IDS);
    assert!(space.add_bar(5, BarKind::Memory64, 0x1000).is_err());
    assert!(space.add_bar(6, BarKind::Memory32, 0x1000).is_err());
    assert!(space.add_bar(0, BarKind::Memory32, 0x1001).is_err());
    assert!(space.add_bar(0, BarKind::Memory32, 8).is_err());
    assert!(space.add_bar(0, BarKind::Io, 512).is_err());
    space.add_bar(0, BarKind::Memory64, 0x1000).unwrap();
    assert!(
        space.add_bar(1, BarKind::Io, 4).is_err(),
        "upper half taken"
    );
    assert!(space.add_bar(0, BarKind::Io, 4).is_err());
}

#[test]
fn bar_moves_are_reported_exactly_once_and_sizing_moves_nothing() {
    let mut space = ConfigSpace::new(IDS);
    space.add_bar(0, BarKind::Memory32, 0x1000).unwrap();
    let change = write32(&mut space, BAR0, 0xc100_0000);
    assert_eq!(
        change,
        Some(BarChange {
            bar: 0,
            old: 0,
            new: 0xc100_0000,
            size: 0x1000,
            kind: BarKind::Memory32
        })
    );
    assert_eq!(write32(&mut space, BAR0, 0xc100_0000), None, "same place");
    assert_eq!(write32(&mut space, BAR0, 0xffff_ffff), None, "sizing");
    assert_eq!(write32(&mut space, BAR0, 0xc100_0000), None, "restored");
    assert_eq!(space.bar_address(0), Some(0xc100_0000));
    let change = write32(&mut space, BAR0, 0xc100_2fff).unwrap();
    assert_eq!((change.old, change.new), (0xc100_0000, 0xc100_2000));
    assert_eq!(space.write(BAR0 + 1, &[0x30]).unwrap().new, 0xc100_3000);
}

#[test]
fn a_64_bit_bar_moves_with_either_half() {
    let mut space = ConfigSpace::new(IDS);
    space.add_bar(2, BarKind::Memory64, 0x4000).unwrap();
    let low = write32(&mut space, BAR0 + 8, 0xc100_0000).unwrap();
    assert_eq!(
        (low.bar, low.new, low.kind),
        (2, 0xc100_0000, BarKind::Memory64)
    );
    let high = write32(&mut space, BAR0 + 12, 0x1).unwrap();
    assert_eq!((high.old, high.new), (0xc100_0000, 0x1_c100_0000));
    assert_eq!(write32(&mut space, BAR0 + 12, 0xffff_ffff), None);
    assert_eq!(write32(&mut space, BAR0 + 12, 0x1), None);
    assert_eq!(space.bar_address(2), Some(0x1_c100_0000));
}

#[test]
fn io_and_memory_decoding_follow_the_command_register() {
    let mut space = ConfigSpace::new(IDS);
    space.add_bar(0, BarKind::Memory64, 0x1000).unwrap();
    space.add_bar(2, BarKind::Io, 0x10).unwrap();
    assert!(!space.decodes(0) && !space.decodes(2));
    space.write(COMMAND, &[COMMAND_MEMORY_SPACE as u8]);
    assert!(space.decodes(0) && !space.decodes(2));
    space.write(COMMAND, &[COMMAND_IO_SPACE as u8]);
    assert!(!space.decodes(0) && space.decodes(2));
    assert!(!space.decodes(1) && !space.decodes(5) && !space.decodes(200));
}

#[test]
fn capabilities_chain_from_0x34_with_their_own_masks() {
    let mut space = ConfigSpace::new(IDS);
    assert!(space.capabilities().is_empty());
    let first = space
        .add_capability(0x09, &[1, 2, 3], &[0, 0xff, 0])
        .unwrap();
    let second = space.add_capability(0x11, &[0; 10], &[0xff; 10]).unwrap();
    assert_eq!((first, second), (0x40, 0x48));
    assert_eq!(space.u8_at(CAPABILITIES_POINTER), 0x40);
    assert_ne!(space.u16_at(STATUS) & STATUS_CAPABILITIES, 0);
    assert_eq!(space.capabilities(), vec![(0x40, 0x09), (0x48, 0x11)]);
    space.write(0x40, &[0xee, 0xee, 0xee, 0xee]);
    assert_eq!(
        read32(&space, 0x40),
        0xee01_4809,
        "id and next are read-only"
    );
    space.write(0x48, &[0xee; 4]);
    assert_eq!(read32(&space, 0x48), 0xeeee_0011);
    assert!(space.add_capability(1, &[0], &[]).is_err());
    assert!(space.add_capability(1, &[0; 200], &[0; 200]).is_err());
}

#[test]
fn capability_walk_survives_a_loop() {
    let mut space = ConfigSpace::new(IDS);
    space.add_capability(0x09, &[0; 2], &[0; 2]).unwrap();
    space.set_bytes(0x41, &[0x40]);
    assert_eq!(space.capabilities().len(), 48);
}

/// Records every BAR move.
#[derive(Default)]
struct Moves(Mutex<Vec<(u8, BarChange)>>);

impl BarObserver for Moves {
    fn bar_changed(&self, function: u8, change: BarChange) {
        self.0.lock().unwrap().push((function, change));
    }
}

/// A function that is only a configuration space.
struct Plain(ConfigSpace);

impl PciFunction for Plain {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.0.read(offset, data);
    }
    fn write_config(&mut self, offset: u16, data: &[u8]) -> Option<BarChange> {
        self.0.write(offset, data)
    }
}

fn root() -> (Arc<PciRoot>, Arc<Moves>) {
    let moves = Arc::new(Moves::default());
    let mut root = PciRoot::new(moves.clone());
    let mut space = ConfigSpace::new(IDS);
    space.add_bar(0, BarKind::Memory32, 0x1000).unwrap();
    space.add_bar(1, BarKind::Memory32, 0x1000).unwrap();
    assert_eq!(root.add_next(Arc::new(Mutex::new(Plain(space)))), Ok(1));
    (Arc::new(root), moves)
}

fn io(root: &Arc<PciRoot>) -> PciConfigIo {
    PciConfigIo::new(root.clone(), ResetControl::default())
}

fn port_read(io: &mut PciConfigIo, offset: u64, len: usize) -> u64 {
    let mut data = [0u8; 8];
    io.access(offset, Access::Read(&mut data[..len]));
    crate::bus::le_value(&data[..len])
}

fn port_write(io: &mut PciConfigIo, offset: u64, value: u64, len: usize) -> Option<StopRequest> {
    io.access(offset, Access::Write(&value.to_le_bytes()[..len]))
}

fn select(io: &mut PciConfigIo, device: u32, register: u32) {
    port_write(io, 0, u64::from(0x8000_0000 | device << 11 | register), 4);
}

#[test]
fn cf8_cfc_reads_any_width_at_any_offset() {
    let (root, _) = root();
    let mut io = io(&root);
    select(&mut io, 1, 0);
    assert_eq!(port_read(&mut io, 4, 4), 0x1042_1af4);
    assert_eq!(port_read(&mut io, 4, 2), 0x1af4);
    assert_eq!(port_read(&mut io, 5, 1), 0x1a);
    assert_eq!(port_read(&mut io, 6, 2), 0x1042);
    assert_eq!(port_read(&mut io, 7, 1), 0x10);
    assert_eq!(
        port_read(&mut io, 0, 4),
        0x8000_0800,
        "the address reads back"
    );
    select(&mut io, 0, 8);
    assert_eq!(
        port_read(&mut io, 4, 4) >> 8,
        0x06_00_00,
        "host bridge class"
    );
    select(&mut io, 0, 0);
    assert_eq!(port_read(&mut io, 4, 4), 0x0008_1b36);
}

#[test]
fn disabled_address_and_missing_functions_read_all_ones() {
    let (root, _) = root();
    let mut io = io(&root);
    port_write(&mut io, 0, 0x0000_0800, 4);
    assert_eq!(port_read(&mut io, 4, 4), 0xffff_ffff);
    for device in [2u32, 31] {
        select(&mut io, device, 0);
        assert_eq!(port_read(&mut io, 4, 4), 0xffff_ffff, "device {device}");
    }
    port_write(&mut io, 0, 0x8001_0800, 4);
    assert_eq!(port_read(&mut io, 4, 4), 0xffff_ffff, "bus 1");
    port_write(&mut io, 0, 0x8000_0900, 4);
    assert_eq!(port_read(&mut io, 4, 2), 0xffff, "function 1");
}

#[test]
fn cf8_takes_only_dword_accesses_and_keeps_its_meaningful_bits() {
    let (root, _) = root();
    let mut io = io(&root);
    port_write(&mut io, 0, 0xffff_ffff, 4);
    assert_eq!(port_read(&mut io, 0, 4), 0x80ff_fffc);
    port_write(&mut io, 0, 0, 2);
    port_write(&mut io, 2, 0, 2);
    assert_eq!(port_read(&mut io, 0, 4), 0x80ff_fffc, "word writes dropped");
    assert_eq!(port_read(&mut io, 0, 2), 0xffff);
    assert_eq!(port_read(&mut io, 3, 1), 0xff);
    assert_eq!(
        io.posted_registers(),
        &[crate::bus::PostedRegister::bounded(0, 4)]
    );
}

#[test]
fn a_byte_write_to_cf9_reaches_reset_control() {
    let (root, _) = root();
    let mut io = io(&root);
    select(&mut io, 1, 0);
    assert_eq!(port_write(&mut io, 1, 0x02, 1), None);
    assert_eq!(port_read(&mut io, 1, 1), 0x02);
    assert_eq!(port_write(&mut io, 1, 0x06, 1), Some(StopRequest::Reset));
    assert_eq!(port_read(&mut io, 0, 4), 0x8000_0800, "address untouched");
}

#[test]
fn cfc_writes_reach_the_function_and_report_bar_moves_once() {
    let (root, moves) = root();
    let mut io = io(&root);
    select(&mut io, 1, 0x10);
    port_write(&mut io, 4, 0xffff_ffff, 4);
    assert_eq!(port_read(&mut io, 4, 4), 0xffff_f000);
    port_write(&mut io, 4, 0, 4);
    assert!(moves.0.lock().unwrap().is_empty(), "sizing is not a move");
    port_write(&mut io, 6, 0xc100, 2);
    port_write(&mut io, 6, 0xc100, 2);
    let seen = moves.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].0, seen[0].1.bar, seen[0].1.new),
        (1, 0, 0xc100_0000)
    );
}

#[test]
fn ecam_and_cf8_see_the_same_functions() {
    let (root, moves) = root();
    let mut io = io(&root);
    let mut ecam = PciEcam::new(root.clone());
    let ecam_read = |ecam: &mut PciEcam, offset: u64, len: usize| {
        let mut data = [0u8; 8];
        ecam.access(offset, Access::Read(&mut data[..len]));
        crate::bus::le_value(&data[..len])
    };
    let device1 = 1 << 15;
    assert_eq!(ecam_read(&mut ecam, device1, 4), 0x1042_1af4);
    assert_eq!(ecam_read(&mut ecam, 0, 4), 0x0008_1b36);
    assert_eq!(ecam_read(&mut ecam, 2 << 15, 4), 0xffff_ffff);
    assert_eq!(ecam_read(&mut ecam, 1 << 20 | device1, 4), 0xffff_ffff);
    assert_eq!(
        ecam_read(&mut ecam, device1 | 0x100, 4),
        0,
        "extended space"
    );
    assert_eq!(ecam_read(&mut ecam, 256 << 20, 4), 0xffff_ffff);
    assert_eq!(ecam_read(&mut ecam, device1 | 0xffe, 4), 0xffff_ffff);
    // An 8-byte write over BAR0 and BAR1 moves both, once each.
    let bars = 0xc100_2000_c100_1000u64.to_le_bytes();
    ecam.access(device1 | 0x10, Access::Write(&bars));
    select(&mut io, 1, 0x14);
    assert_eq!(port_read(&mut io, 4, 4), 0xc100_2000);
    let news: Vec<_> = moves.0.lock().unwrap().iter().map(|m| m.1.new).collect();
    assert_eq!(news, vec![0xc100_1000, 0xc100_2000]);
    assert_eq!(
        ecam_read(&mut ecam, device1 | 0x10, 8),
        0xc100_2000_c100_1000
    );
}

#[test]
fn device_numbers_are_checked() {
    let (_, _) = root();
    let mut root = PciRoot::new(Arc::new(Moves::default()));
    let plain = || -> SharedFunction { Arc::new(Mutex::new(Plain(ConfigSpace::new(IDS)))) };
    assert!(root.add(0, plain()).is_err(), "the host bridge's");
    assert!(root.add(32, plain()).is_err());
    root.add(31, plain()).unwrap();
    assert!(root.add(31, plain()).is_err());
    for expected in 1..31 {
        assert_eq!(root.add_next(plain()), Ok(expected));
    }
    assert!(root.add_next(plain()).is_err());
}

/// xorshift64: a fixed sequence, so a failure reproduces.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn random_configuration_accesses_keep_the_invariants() {
    let (root, moves) = root();
    let mut io = io(&root);
    let mut ecam = PciEcam::new(root.clone());
    let mut state = 0x5eed_0001u64;
    for _ in 0..10_000 {
        let r = xorshift(&mut state);
        let len = [1usize, 2, 4, 8][(r & 3) as usize];
        let value = xorshift(&mut state).to_le_bytes();
        let ecam_offset = (r >> 8) % (2 << 20);
        if r & 4 == 0 {
            let port = (r >> 4) & 7;
            let len = len.min(8 - port as usize).min(4);
            if r & 8 == 0 {
                port_write(&mut io, port, u64::from_le_bytes(value), len);
            } else {
                port_read(&mut io, port, len);
            }
        } else if r & 8 == 0 {
            ecam.access(ecam_offset, Access::Write(&value[..len]));
        } else {
            ecam.access(ecam_offset, Access::Read(&mut [0u8; 8][..len]));
        }
    }
    let mut ids = [0u8; 4];
    root.config_read(address(1, 0), &mut ids);
    assert_eq!(u32::from_le_bytes(ids), 0x1042_1af4, "identity survives");
    root.config_read(address(0, 0), &mut ids);
    assert_eq!(u32::from_le_bytes(ids), 0x0008_1b36);
    let mut placed = [0u64; 6];
    for (_, change) in moves.0.lock().unwrap().iter() {
        assert_eq!(change.old, placed[usize::from(change.bar)], "moves chain");
        assert_ne!(change.old, change.new);
        placed[usize::from(change.bar)] = change.new;
    }
}

fn address(device: u8, register: u16) -> ConfigAddress {
    ConfigAddress {
        bus: 0,
        device,
        function: 0,
        register,
    }
}

#[test]
fn memory_bars_are_assigned_aligned_once_each_and_within_the_window() {
    let moves = Arc::new(Moves::default());
    let mut root = PciRoot::new(moves.clone());
    let mut first = ConfigSpace::new(IDS);
    first.add_bar(0, BarKind::Memory32, 0x1000).unwrap();
    first.add_bar(1, BarKind::Io, 0x20).unwrap();
    first.add_bar(2, BarKind::Memory64, 0x8000).unwrap();
    let mut second = ConfigSpace::new(IDS);
    second.add_bar(4, BarKind::Memory64, 0x4000).unwrap();
    root.add(1, Arc::new(Mutex::new(Plain(first)))).unwrap();
    root.add(3, Arc::new(Mutex::new(Plain(second)))).unwrap();
    let window = 0xc100_0000..0xc100_0000 + 0x2_0000;
    root.assign_memory_bars(window.clone()).unwrap();
    let seen: Vec<_> = moves
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(device, change)| (*device, change.bar, change.old, change.new))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, 0, 0, 0xc100_0000),
            (1, 2, 0, 0xc100_8000),
            (3, 4, 0, 0xc101_0000),
        ]
    );
    let mut too_small = PciRoot::new(Arc::new(Moves::default()));
    let mut big = ConfigSpace::new(IDS);
    big.add_bar(0, BarKind::Memory32, 0x4_0000).unwrap();
    too_small.add(1, Arc::new(Mutex::new(Plain(big)))).unwrap();
    assert_eq!(
        too_small.assign_memory_bars(window),
        Err(PciError::WindowFull {
            device: 1,
            bar: 0,
            size: 0x4_0000
        })
    );
}
