//! The virtio-pci transport driven as a guest driver would: configuration space, then
//! BAR 0.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::common::*;
use super::*;
use crate::devices::pci::config::{
    BAR0, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE, STATUS, STATUS_INTERRUPT,
};
use crate::devices::pci::msix::{MsiMessage, MSIX_ENABLE};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::driver::DriverQueue;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::{QueueNotify, VIRTIO_F_VERSION_1};
use crate::irq::CountingLine;

mod state;
mod wiring;

const QUEUE_BASE: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;

/// What the MSI sink was told.
#[derive(Default)]
struct Sink {
    programmed: Mutex<Vec<(u16, Option<MsiMessage>)>>,
    signalled: Mutex<Vec<u16>>,
}

impl MsiSink for Sink {
    fn program(&self, vector: u16, message: Option<MsiMessage>) {
        self.programmed.lock().unwrap().push((vector, message));
    }
    fn signal(&self, vector: u16) {
        self.signalled.lock().unwrap().push(vector);
    }
}

type RngTransport = VirtioPciTransport<Rng<std::io::Repeat>>;

struct Harness<D: VirtioDevice> {
    transport: VirtioPciTransport<D>,
    memory: GuestMemoryMmap,
    sink: Arc<Sink>,
    line: Arc<CountingLine>,
}

fn harness<D: VirtioDevice>(device: D) -> Harness<D> {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let sink = Arc::new(Sink::default());
    let line = Arc::new(CountingLine::default());
    let transport =
        VirtioPciTransport::new(device, memory.clone(), sink.clone(), line.clone()).unwrap();
    Harness {
        transport,
        memory,
        sink,
        line,
    }
}

fn rng() -> Harness<Rng<std::io::Repeat>> {
    harness(Rng::new(std::io::repeat(0x5a)))
}

impl<D: VirtioDevice> Harness<D> {
    fn config_read(&mut self, offset: u16, len: usize) -> u64 {
        let mut data = [0u8; 8];
        self.transport.read_config(offset, &mut data[..len]);
        crate::bus::le_value(&data[..len])
    }

    fn config_write(&mut self, offset: u16, value: u64, len: usize) -> Option<BarChange> {
        self.transport
            .write_config(offset, &value.to_le_bytes()[..len])
    }

    fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        self.transport
            .access(offset, Access::Read(&mut data[..len]));
        crate::bus::le_value(&data[..len])
    }

    fn write(&mut self, offset: u64, value: u64, len: usize) {
        self.transport
            .access(offset, Access::Write(&value.to_le_bytes()[..len]));
    }

    /// Memory decoding and bus mastering on, as a driver's pci_enable_device does.
    fn enable(&mut self) {
        let command = u64::from(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER);
        self.config_write(COMMAND, command, 2);
    }

    /// ACKNOWLEDGE, DRIVER, the features, FEATURES_OK; returns the status read back.
    fn negotiate(&mut self, features: u64) -> u8 {
        self.enable();
        self.write(
            DEVICE_STATUS,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
            1,
        );
        for select in 0..2 {
            self.write(DRIVER_FEATURE_SELECT, select, 4);
            self.write(DRIVER_FEATURE, (features >> (32 * select)) & 0xffff_ffff, 4);
        }
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(DEVICE_STATUS, u64::from(status), 1);
        self.read(DEVICE_STATUS, 1) as u8
    }

    /// Sets queue `index` up over `driver`, with MSI-X vector `vector`.
    fn setup_queue(&mut self, index: u16, driver: &DriverQueue, vector: u16) {
        let (desc, avail, used) = driver.addresses();
        self.write(QUEUE_SELECT, u64::from(index), 2);
        self.write(QUEUE_SIZE, u64::from(driver.size()), 2);
        self.write(QUEUE_DESC, desc & 0xffff_ffff, 4);
        self.write(QUEUE_DESC + 4, desc >> 32, 4);
        self.write(QUEUE_DRIVER, avail, 8);
        self.write(QUEUE_DEVICE, used, 8);
        self.write(QUEUE_MSIX_VECTOR, u64::from(vector), 2);
        self.write(QUEUE_ENABLE, 1, 2);
    }

    fn driver_ok(&mut self) {
        let status = self.read(DEVICE_STATUS, 1) | u64::from(STATUS_DRIVER_OK);
        self.write(DEVICE_STATUS, status, 1);
    }

    /// MSI-X on, and `vector` unmasked with a message.
    fn enable_msix(&mut self, vector: u16) {
        let control = self.transport.with_state(|s| s.msix_capability()) + 2;
        self.config_write(control, u64::from(MSIX_ENABLE), 2);
        let entry = MSIX_TABLE_OFFSET + 16 * u64::from(vector);
        self.write(entry, 0xfee0_0000, 8);
        self.write(entry + 8, 0x30 + u64::from(vector), 4);
        self.write(entry + 12, 0, 4);
    }

    /// A negotiated device with queue 0 of 8 entries live, and a 16-byte buffer in it.
    fn one_request(&mut self, vector: u16) -> DriverQueue {
        assert_ne!(self.negotiate(VIRTIO_F_VERSION_1) & STATUS_FEATURES_OK, 0);
        let mut driver = DriverQueue::new(QUEUE_BASE, 8);
        self.setup_queue(0, &driver, vector);
        self.driver_ok();
        driver.add_chain(&self.memory, &[(DATA, 16, true)]);
        driver
    }
}

#[test]
fn identity_and_bar_describe_a_modern_device() {
    let mut h = rng();
    assert_eq!(h.config_read(0, 4), 0x1044_1af4, "1af4:1040 + entropy");
    assert_eq!(h.config_read(8, 4), 0xff00_0001, "revision 1");
    assert_eq!(h.config_read(0x2c, 4), 0x1100_1af4);
    assert_eq!(h.config_read(0x3d, 1), 1, "INTA");
    h.config_write(BAR0, 0xffff_ffff, 4);
    h.config_write(BAR0 + 4, 0xffff_ffff, 4);
    assert_eq!(h.config_read(BAR0, 4), 0xffff_8004, "32 KiB, 64-bit");
    assert_eq!(h.config_read(BAR0 + 4, 4), 0xffff_ffff);
}

#[test]
fn capabilities_point_into_bar_0() {
    let h = rng();
    h.transport.with_state(|state| {
        let space = state.config_space();
        let caps = space.capabilities();
        let ids: Vec<u8> = caps.iter().map(|c| c.1).collect();
        assert_eq!(ids, vec![9, 9, 9, 9, 9, 0x11]);
        let described: Vec<_> = caps[..5]
            .iter()
            .map(|(at, _)| {
                let (len, kind, bar) = (
                    space.u8_at(at + 2),
                    space.u8_at(at + 3),
                    space.u8_at(at + 4),
                );
                (len, kind, bar, space.u32_at(at + 8), space.u32_at(at + 12))
            })
            .collect();
        assert_eq!(
            described,
            vec![
                (16, 1, 0, 0x0000, 0x38),
                (20, 2, 0, 0x3000, 0x1000),
                (16, 3, 0, 0x1000, 1),
                (16, 4, 0, 0x2000, 0x1000),
                (20, 5, 0, 0, 0),
            ]
        );
        assert_eq!(space.u32_at(caps[1].0 + 16), NOTIFY_OFF_MULTIPLIER);
        let msix = caps[5].0;
        assert_eq!(space.u16_at(msix + 2), 1, "two vectors: queue and config");
        assert_eq!(space.u32_at(msix + 4), 0x4000);
        assert_eq!(space.u32_at(msix + 8), 0x5000);
    });
}

#[test]
fn device_features_read_through_their_select() {
    let mut h = rng();
    h.enable();
    assert_eq!(h.read(DEVICE_FEATURE, 4), 1 << 29, "EVENT_IDX is bit 29");
    h.write(DEVICE_FEATURE_SELECT, 1, 4);
    assert_eq!(h.read(DEVICE_FEATURE, 4), 1, "VERSION_1 is bit 32");
    h.write(DEVICE_FEATURE_SELECT, 2, 4);
    assert_eq!(h.read(DEVICE_FEATURE, 4), 0);
    assert_eq!(h.read(NUM_QUEUES, 2), 1);
    assert_eq!(
        h.read(QUEUE_SIZE, 2),
        64,
        "max size until the driver writes one"
    );
    h.write(QUEUE_SELECT, 5, 2);
    assert_eq!(h.read(QUEUE_SIZE, 2), 0, "no queue 5");
}

#[test]
fn feature_negotiation_refuses_drivers_without_version_1() {
    let mut h = rng();
    assert_eq!(h.negotiate(0) & STATUS_FEATURES_OK, 0);
    h.write(DEVICE_STATUS, 0, 1);
    assert_eq!(
        h.negotiate(VIRTIO_F_VERSION_1 | 1 << 5) & STATUS_FEATURES_OK,
        0
    );
    h.write(DEVICE_STATUS, 0, 1);
    assert_ne!(h.negotiate(VIRTIO_F_VERSION_1) & STATUS_FEATURES_OK, 0);
    h.write(DRIVER_FEATURE_SELECT, 1, 4);
    assert_eq!(h.read(DRIVER_FEATURE, 4), 1);
}

#[test]
fn queue_registers_read_back_and_reset_clears_them() {
    let mut h = rng();
    h.negotiate(VIRTIO_F_VERSION_1);
    let driver = DriverQueue::new(0x1_2345_6000, 16);
    h.setup_queue(0, &driver, 0);
    let (desc, avail, used) = driver.addresses();
    assert_eq!(h.read(QUEUE_DESC, 8), desc);
    assert_eq!(h.read(QUEUE_DRIVER + 4, 4), avail >> 32);
    assert_eq!(h.read(QUEUE_DEVICE, 4), used & 0xffff_ffff);
    assert_eq!(h.read(QUEUE_SIZE, 2), 16);
    assert_eq!(h.read(QUEUE_ENABLE, 2), 1);
    assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), 0);
    assert_eq!(h.read(QUEUE_NOTIFY_OFF, 2), 0);
    h.write(QUEUE_SIZE, 12, 2);
    assert_eq!(h.read(QUEUE_SIZE, 2), 16, "not a power of two: refused");
    h.write(DEVICE_STATUS, 0, 1);
    assert_eq!(h.read(DEVICE_STATUS, 1), 0);
    assert_eq!(h.read(QUEUE_ENABLE, 2), 0);
    assert_eq!(
        h.read(QUEUE_MSIX_VECTOR, 2),
        u64::from(VIRTIO_MSI_NO_VECTOR)
    );
    assert_eq!(h.read(QUEUE_DESC, 8), 0);
}

#[test]
fn vectors_past_the_table_read_back_as_no_vector() {
    let mut h = rng();
    h.enable();
    h.write(CONFIG_MSIX_VECTOR, 1, 2);
    assert_eq!(h.read(CONFIG_MSIX_VECTOR, 2), 1);
    h.write(CONFIG_MSIX_VECTOR, 2, 2);
    assert_eq!(h.read(CONFIG_MSIX_VECTOR, 2), 0xffff);
    h.write(QUEUE_MSIX_VECTOR, 7, 2);
    assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), 0xffff);
}

#[test]
fn a_queue_is_served_through_its_notify_address_and_raises_intx() {
    let mut h = rng();
    let driver = h.one_request(VIRTIO_MSI_NO_VECTOR);
    assert_eq!(RngTransport::notify_address(0), 0x3000);
    assert_eq!(RngTransport::notify_address(3), 0x300c);
    h.write(RngTransport::notify_address(0), 0, 2);
    assert_eq!(driver.used_idx(&h.memory), 1);
    assert_eq!(driver.used(&h.memory, 0), (0, 16));
    let mut bytes = [0u8; 16];
    h.memory.read_slice(&mut bytes, GuestAddress(DATA)).unwrap();
    assert_eq!(bytes, [0x5a; 16]);
    assert_eq!(h.line.pulses(), 1);
    assert_eq!(h.transport.notifications(), 1);
    assert_ne!(h.config_read(STATUS, 2) as u16 & STATUS_INTERRUPT, 0);
    assert_eq!(h.read(ISR_OFFSET, 1), u64::from(ISR_QUEUE));
    assert_eq!(h.read(ISR_OFFSET, 1), 0, "read-to-clear");
    assert_eq!(h.config_read(STATUS, 2) as u16 & STATUS_INTERRUPT, 0);
    assert!(h.sink.signalled.lock().unwrap().is_empty());
}

#[test]
fn a_polled_queue_is_seen_without_its_doorbell_once_the_driver_is_ready() {
    let mut h = rng();
    assert_ne!(h.negotiate(VIRTIO_F_VERSION_1) & STATUS_FEATURES_OK, 0);
    let mut driver = DriverQueue::new(QUEUE_BASE, 8);
    h.setup_queue(0, &driver, VIRTIO_MSI_NO_VECTOR);
    driver.add_chain(&h.memory, &[(DATA, 16, true)]);
    assert!(!h.transport.avail_moved(), "not before DRIVER_OK");
    h.driver_ok();
    assert!(h.transport.avail_moved());
    assert!(!h.transport.avail_moved(), "seen once");
    h.transport.notify(None);
    assert_eq!(driver.used_idx(&h.memory), 1);
    driver.add_chain(&h.memory, &[(DATA, 16, true)]);
    assert!(h.transport.avail_moved());
}

#[test]
fn intx_is_level_triggered_through_resample() {
    let mut h = rng();
    let mut driver = h.one_request(VIRTIO_MSI_NO_VECTOR);
    h.transport.notify(Some(0));
    driver.add_chain(&h.memory, &[(DATA, 16, true)]);
    h.transport.notify(None);
    assert_eq!(
        h.line.pulses(),
        1,
        "one rising edge while the ISR stays set"
    );
    h.transport.intx_resample();
    assert_eq!(h.line.pulses(), 2, "still set at EOI: raised again");
    h.read(ISR_OFFSET, 4);
    h.transport.intx_resample();
    assert_eq!(h.line.pulses(), 2, "cleared: stays low");
    let command = u64::from(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE);
    h.config_write(COMMAND, command, 2);
    driver.add_chain(&h.memory, &[(DATA, 16, true)]);
    h.transport.notify(Some(0));
    assert_eq!(h.line.pulses(), 2, "INTx disabled");
    h.enable();
    assert_eq!(h.line.pulses(), 3, "re-enabled with the ISR set");
}

#[test]
fn a_queue_raises_its_own_msix_vector() {
    let mut h = rng();
    h.enable();
    h.enable_msix(1);
    let driver = h.one_request(1);
    h.write(CONFIG_MSIX_VECTOR, 0, 2);
    h.write(RngTransport::notify_address(0), 0, 4);
    assert_eq!(driver.used_idx(&h.memory), 1);
    assert_eq!(*h.sink.signalled.lock().unwrap(), vec![1]);
    let message = Some(MsiMessage {
        address: 0xfee0_0000,
        data: 0x31,
    });
    assert_eq!(*h.sink.programmed.lock().unwrap(), vec![(1, message)]);
    assert_eq!(h.line.pulses(), 0, "no INTx with MSI-X");
    assert_eq!(h.read(ISR_OFFSET, 1), 0, "no queue bit with MSI-X");
}

#[test]
fn a_masked_queue_vector_is_left_pending_in_the_pba() {
    let mut h = rng();
    h.enable();
    h.enable_msix(1);
    h.write(MSIX_TABLE_OFFSET + 16 + 12, 1, 4);
    let _driver = h.one_request(1);
    h.transport.notify(Some(0));
    assert!(h.sink.signalled.lock().unwrap().is_empty());
    assert_eq!(h.read(MSIX_PBA_OFFSET, 8), 0b10);
    h.write(MSIX_TABLE_OFFSET + 16 + 12, 0, 4);
    assert_eq!(*h.sink.signalled.lock().unwrap(), vec![1]);
    assert_eq!(h.read(MSIX_PBA_OFFSET, 8), 0);
}

#[test]
fn nothing_is_served_before_driver_ok_or_without_bus_mastering() {
    let mut h = rng();
    h.negotiate(VIRTIO_F_VERSION_1);
    let mut driver = DriverQueue::new(QUEUE_BASE, 8);
    h.setup_queue(0, &driver, VIRTIO_MSI_NO_VECTOR);
    driver.add_chain(&h.memory, &[(DATA, 16, true)]);
    h.transport.notify(Some(0));
    assert_eq!(driver.used_idx(&h.memory), 0, "before DRIVER_OK");
    h.driver_ok();
    h.config_write(COMMAND, u64::from(COMMAND_MEMORY_SPACE), 2);
    h.transport.notify(None);
    assert_eq!(driver.used_idx(&h.memory), 0, "bus mastering off");
    h.enable();
    h.transport.notify(Some(7));
    h.transport.notify(Some(u32::MAX));
    assert_eq!(driver.used_idx(&h.memory), 0, "no such queue");
    h.transport.notify(None);
    assert_eq!(driver.used_idx(&h.memory), 1);
}

#[test]
fn bar_0_does_not_decode_with_memory_space_off() {
    let mut h = rng();
    assert_eq!(h.read(NUM_QUEUES, 2), 0xffff);
    h.write(DEVICE_STATUS, 1, 1);
    h.enable();
    assert_eq!(h.read(DEVICE_STATUS, 1), 0, "the write was dropped");
    assert_eq!(h.read(NUM_QUEUES, 2), 1);
}

#[test]
fn the_pci_cfg_window_reaches_bar_0_without_decoding() {
    let mut h = rng();
    let cap = h
        .transport
        .with_state(|s| s.config_space().capabilities()[4].0);
    h.config_write(cap + 8, NUM_QUEUES, 4);
    h.config_write(cap + 12, 2, 4);
    assert_eq!(h.config_read(cap + 16, 4), 1, "num_queues");
    h.config_write(cap + 8, DEVICE_STATUS, 4);
    h.config_write(cap + 12, 1, 4);
    h.config_write(cap + 16, u64::from(STATUS_ACKNOWLEDGE), 4);
    h.enable();
    assert_eq!(h.read(DEVICE_STATUS, 1), u64::from(STATUS_ACKNOWLEDGE));
    h.config_write(cap + 12, 3, 4);
    assert_eq!(h.config_read(cap + 16, 1), 1, "bad length: no access");
}

#[test]
fn a_block_device_serves_a_read_over_pci() {
    let disk: Vec<u8> = (0..8 * 512).map(|i| (i / 512) as u8).collect();
    let mut h = harness(Block::new(disk, false, "pci"));
    assert_eq!(h.config_read(0, 4), 0x1042_1af4);
    assert_eq!(h.read(DEVICE_CONFIG_OFFSET, 8), u64::MAX, "disabled BAR");
    h.enable();
    assert_eq!(h.read(DEVICE_CONFIG_OFFSET, 8), 8, "capacity in sectors");
    assert_ne!(h.negotiate(VIRTIO_F_VERSION_1) & STATUS_FEATURES_OK, 0);
    let mut driver = DriverQueue::new(QUEUE_BASE, 8);
    h.setup_queue(0, &driver, VIRTIO_MSI_NO_VECTOR);
    h.driver_ok();
    let mut header = [0u8; 16];
    header[8] = 3; // sector 3, type 0 (read)
    h.memory.write_slice(&header, GuestAddress(DATA)).unwrap();
    let buffers = [
        (DATA, 16, false),
        (DATA + 0x1000, 512, true),
        (DATA + 0x2000, 1, true),
    ];
    driver.add_chain(&h.memory, &buffers);
    h.write(RngTransport::notify_address(0), 0, 2);
    assert_eq!(driver.used(&h.memory, 0), (0, 513));
    let byte: u8 = h.memory.read_obj(GuestAddress(DATA + 0x1000)).unwrap();
    assert_eq!(byte, 3);
}

#[test]
fn a_broken_ring_asks_for_a_reset_with_a_config_interrupt() {
    let mut h = rng();
    let driver = h.one_request(VIRTIO_MSI_NO_VECTOR);
    // An available index far ahead of the ring's size is a driver error.
    let (_, avail, _) = driver.addresses();
    h.memory.write_obj(200u16, GuestAddress(avail + 2)).unwrap();
    h.transport.notify(Some(0));
    assert_ne!(h.read(DEVICE_STATUS, 1) as u8 & STATUS_NEEDS_RESET, 0);
    assert_eq!(h.read(ISR_OFFSET, 1), u64::from(ISR_CONFIG));
    h.write(DEVICE_STATUS, 0xff, 1);
    assert_ne!(
        h.read(DEVICE_STATUS, 1) as u8 & STATUS_NEEDS_RESET,
        0,
        "sticky"
    );
}

/// xorshift64: a fixed sequence, so a failure reproduces.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn random_common_configuration_accesses_keep_the_invariants() {
    let mut h = rng();
    h.enable();
    let mut state = 0x5eed_0004u64;
    for _ in 0..10_000 {
        let r = xorshift(&mut state);
        let value = xorshift(&mut state);
        let len = [1usize, 2, 4, 8][(r & 3) as usize];
        let offset = (r >> 8) % 0x40;
        match (r >> 4) & 7 {
            0 => h.transport.notify(Some((r >> 32) as u32 % 3)),
            1 => h.write(ISR_OFFSET + offset % 8, value, len),
            2 | 3 => {
                h.read(offset, len);
            }
            _ => h.write(offset, value, len),
        }
        let registers = h.transport.core().registers();
        let common = &registers.common;
        if common.status() & STATUS_FEATURES_OK != 0 {
            assert_ne!(common.features().accepted() & VIRTIO_F_VERSION_1, 0);
            assert_eq!(common.features().accepted() & !VIRTIO_F_VERSION_1, 0);
        }
        let vectors = registers.transport.vectors();
        for vector in vectors.queues.iter().chain([&vectors.config]) {
            assert!(*vector < 2 || *vector == VIRTIO_MSI_NO_VECTOR);
        }
    }
}

#[test]
fn a_reset_lowers_the_interrupt() {
    let mut h = rng();
    let _driver = h.one_request(VIRTIO_MSI_NO_VECTOR);
    h.transport.notify(Some(0));
    assert_ne!(h.config_read(STATUS, 2) as u16 & STATUS_INTERRUPT, 0);
    h.write(DEVICE_STATUS, 0, 1);
    assert_eq!(h.config_read(STATUS, 2) as u16 & STATUS_INTERRUPT, 0);
    assert_eq!(h.read(ISR_OFFSET, 1), 0);
    h.transport.intx_resample();
    assert_eq!(h.line.pulses(), 1);
}
