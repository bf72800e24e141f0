use super::*;

/// Remembers the last access and answers reads with its offset.
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Recorder {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match access {
            Access::Read(data) => data.fill(offset as u8),
            Access::Write(data) => self.writes.push((offset, data.to_vec())),
        }
        None
    }
}

fn recorder() -> Arc<Mutex<Recorder>> {
    Arc::new(Mutex::new(Recorder::default()))
}

#[test]
fn pio_dispatch_reaches_device_with_offset_in_both_directions() {
    let device = recorder();
    let mut bus = PioBus::default();
    bus.insert("rec", 0x70, 2, device.clone()).unwrap();
    let mut data = [0u8; 1];
    assert_eq!(
        bus.dispatch(0x71, Access::Read(&mut data)),
        Dispatch::Handled(None)
    );
    assert_eq!(data, [1]);
    assert_eq!(
        bus.dispatch(0x70, Access::Write(&[0x8f])),
        Dispatch::Handled(None)
    );
    assert_eq!(device.lock().unwrap().writes, vec![(0, vec![0x8f])]);
}

#[test]
fn overlapping_and_bad_ranges_are_rejected() {
    let mut bus = PioBus::default();
    bus.insert("a", 0x60, 5, recorder()).unwrap();
    assert!(matches!(
        bus.insert("b", 0x64, 1, recorder()),
        Err(BusError::Overlap { other: "a", .. })
    ));
    assert!(matches!(
        bus.insert("c", 0xffff, 2, recorder()),
        Err(BusError::BadRange { .. })
    ));
    assert!(matches!(
        bus.insert("d", 0x10, 0, recorder()),
        Err(BusError::BadRange { .. })
    ));
    bus.insert("e", 0x65, 1, recorder()).unwrap();

    let mut mmio = MmioBus::default();
    mmio.insert("m1", 0x1000, 0x100, recorder()).unwrap();
    assert!(mmio.insert("m2", 0x10ff, 1, recorder()).is_err());
    assert!(mmio.insert("m3", 0xfff, 2, recorder()).is_err());
    assert!(mmio.insert("m4", u64::MAX, 2, recorder()).is_err());
    mmio.insert("m5", 0x1100, 0x100, recorder()).unwrap();
}

#[test]
fn unclaimed_reads_are_all_ones_and_accesses_past_the_end_are_unclaimed() {
    let mut bus = IoBuses::default();
    bus.pio.insert("rtc", 0x70, 2, recorder()).unwrap();
    bus.mmio.insert("m", 0x1000, 0x10, recorder()).unwrap();
    let mut data = [0u8; 4];
    assert_eq!(
        bus.dispatch(AddressSpace::Pio, 0x1234, Access::Read(&mut data)),
        Dispatch::Unclaimed
    );
    assert_eq!(data, [0xff; 4]);
    let mut data = [0u8; 4];
    assert_eq!(
        bus.dispatch(AddressSpace::Pio, 0x71, Access::Read(&mut data)),
        Dispatch::Unclaimed,
        "a 4-byte read at 0x71 runs past the device"
    );
    assert_eq!(data, [0xff; 4]);
    let mut data = [0u8; 4];
    assert_eq!(
        bus.dispatch(AddressSpace::Mmio, 0x100c, Access::Read(&mut data)),
        Dispatch::Handled(None)
    );
    assert_eq!(data, [0xc; 4]);
    assert_eq!(
        bus.dispatch(AddressSpace::Mmio, 0x100e, Access::Write(&[1, 2, 3, 4])),
        Dispatch::Unclaimed
    );
    assert_eq!(
        bus.dispatch(AddressSpace::Mmio, 0xfff, Access::Write(&[1])),
        Dispatch::Unclaimed
    );
    assert_eq!(
        bus.dispatch(AddressSpace::Pio, 0x1_0000, Access::Write(&[1])),
        Dispatch::Unclaimed
    );
}

#[test]
fn mmio_lookup_finds_the_right_range_among_many() {
    let mut bus = MmioBus::default();
    let devices: Vec<_> = (0..8).map(|_| recorder()).collect();
    for (i, device) in devices.iter().enumerate().rev() {
        bus.insert("m", 0x1000 * (i as u64 + 1), 0x100, device.clone())
            .unwrap();
    }
    for i in 0..8u64 {
        bus.dispatch(0x1000 * (i + 1) + 0xff, Access::Write(&[i as u8]));
    }
    for (i, device) in devices.iter().enumerate() {
        assert_eq!(device.lock().unwrap().writes, vec![(0xff, vec![i as u8])]);
    }
    assert_eq!(
        bus.dispatch(0x1100, Access::Write(&[0])),
        Dispatch::Unclaimed
    );
}

#[test]
fn le_value_reads_little_endian() {
    assert_eq!(le_value(&[0x34, 0x12]), 0x1234);
    assert_eq!(le_value(&[]), 0);
    assert_eq!(Access::Write(&[1, 0, 0, 0]).write_value(), 1);
}

#[test]
fn locate_names_the_device_and_the_offset() {
    let mut buses = IoBuses::default();
    buses.pio.insert("rtc", 0x70, 2, recorder()).unwrap();
    buses.mmio.insert("mm", 0x1000, 0x100, recorder()).unwrap();
    assert_eq!(buses.locate(AddressSpace::Pio, 0x71), Some(("rtc", 1)));
    assert_eq!(buses.locate(AddressSpace::Pio, 0x72), None);
    assert_eq!(buses.locate(AddressSpace::Pio, 0x1_0070), None);
    assert_eq!(buses.locate(AddressSpace::Mmio, 0x1050), Some(("mm", 0x50)));
    assert_eq!(buses.locate(AddressSpace::Mmio, 0x10ff), Some(("mm", 0xff)));
    assert_eq!(buses.locate(AddressSpace::Mmio, 0x1100), None);
    assert_eq!(buses.locate(AddressSpace::Mmio, 0xfff), None);
}

#[test]
fn pio_devices_across_and_at_the_ends_of_the_table_pages_are_found() {
    let (across, last, first) = (recorder(), recorder(), recorder());
    let mut bus = PioBus::default();
    bus.insert("across", 0x1fe, 4, across.clone()).unwrap();
    bus.insert("last", 0xffff, 1, last.clone()).unwrap();
    bus.insert("first", 0, 1, first.clone()).unwrap();
    // 0x1fe..0x202 spans two second-level tables; each port keeps its offset.
    for (port, offset) in [(0x1fe, 0), (0x1ff, 1), (0x200, 2), (0x201, 3)] {
        let mut data = [0u8; 1];
        assert_eq!(
            bus.dispatch(port, Access::Read(&mut data)),
            Dispatch::Handled(None)
        );
        assert_eq!(data, [offset], "port {port:#x}");
    }
    bus.dispatch(0xffff, Access::Write(&[7]));
    bus.dispatch(0, Access::Write(&[9]));
    assert_eq!(last.lock().unwrap().writes, vec![(0, vec![7])]);
    assert_eq!(first.lock().unwrap().writes, vec![(0, vec![9])]);
    // Ports beside them, in a page with a table and in one without, are unclaimed.
    for port in [0x1fd, 0x202, 0xfffe, 0x8000] {
        let mut data = [0u8; 1];
        assert_eq!(
            bus.dispatch(port, Access::Read(&mut data)),
            Dispatch::Unclaimed
        );
        assert_eq!(data, [0xff], "port {port:#x}");
    }
    // An access that runs past its device's end is not the device's.
    assert_eq!(
        bus.dispatch(0x201, Access::Write(&[1, 2])),
        Dispatch::Unclaimed
    );
}
