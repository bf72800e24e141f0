//! Saved states from a hostile past: each device's real state with its fields changed
//! at random (boundary values, lengths one off, flags flipped), restored, and the
//! device then driven with random accesses. A restore may refuse; nothing may panic,
//! then or later.

use std::sync::Arc;

use serde_json::Value;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::testing::HandClock;
use super::{restore, save, Persist, SavedState};
use crate::bus::{Access, BusDevice};
use crate::devices::acpi_pm::{Pm1Control, Pm1Event, PmTimer};
use crate::devices::data_port::DataPort;
use crate::devices::fw_cfg::FwCfg;
use crate::devices::pci::msix::{MsiMessage, MsiSink};
use crate::devices::rtc::Rtc;
use crate::devices::uart::Uart;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::pci::VirtioPciTransport;
use crate::irq::CountingLine;

const ROUNDS: usize = 300;
const ACCESSES: usize = 64;

struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A value a field might be made to hold: a boundary or anything.
    fn number(&mut self, was: &serde_json::Number) -> Value {
        let near = was.as_u64().unwrap_or(0);
        let choices = [
            0,
            1,
            near.wrapping_add(1),
            near.wrapping_sub(1),
            0x7f,
            0x80,
            0xff,
            0x100,
            0xffff,
            u64::from(u32::MAX),
            u64::MAX,
            self.next() & 0xff,
            self.next(),
        ];
        match self.below(12) {
            0 if was.as_i64().is_some() => Value::from(i64::MIN),
            _ => Value::from(choices[self.below(choices.len() as u64) as usize]),
        }
    }

    /// Changes a few leaves of `value` (and sometimes an array's length).
    fn mutate(&mut self, value: &mut Value) {
        match value {
            Value::Bool(flag) => *flag = !*flag,
            Value::Number(number) => *value = self.number(&number.clone()),
            Value::Array(items) => {
                match self.below(8) {
                    0 => {
                        items.pop();
                    }
                    1 => items.push(items.last().cloned().unwrap_or(Value::from(0))),
                    _ => {}
                }
                if !items.is_empty() {
                    let at = self.below(items.len() as u64) as usize;
                    self.mutate(&mut items[at]);
                }
            }
            Value::Object(fields) => {
                let count = fields.len() as u64;
                for _ in 0..=self.below(3) {
                    let at = self.below(count.max(1)) as usize;
                    if let Some((_, field)) = fields.iter_mut().nth(at) {
                        self.mutate(field);
                    }
                }
            }
            Value::Null => *value = Value::from(self.below(4)),
            Value::String(_) => {}
        }
    }

    fn access(&mut self, device: &mut dyn BusDevice, range: u64) {
        let len = [1, 2, 4, 8][self.below(4) as usize];
        let offset = self.below(range);
        let mut data = self.next().to_le_bytes();
        match self.below(2) {
            0 => device.access(offset, Access::Read(&mut data[..len])),
            _ => device.access(offset, Access::Write(&data[..len])),
        };
    }
}

/// Restores mutated copies of `device`'s state into devices from `fresh`, each then
/// driven at random over `range` bytes (with `between` run now and then); returns how
/// many restores were accepted.
fn survives<D: Persist + BusDevice>(
    random: &mut Random,
    device: &D,
    mut fresh: impl FnMut() -> D,
    range: u64,
    mut between: impl FnMut(&mut D),
) -> usize {
    let saved = save(device).unwrap();
    let mut accepted = 0;
    for _ in 0..ROUNDS {
        let mut hostile: SavedState = saved.clone();
        random.mutate(&mut hostile.state);
        let mut target = fresh();
        if restore(&mut target, &hostile).is_err() {
            continue;
        }
        accepted += 1;
        for _ in 0..ACCESSES {
            random.access(&mut target, range);
            if random.below(8) == 0 {
                between(&mut target);
            }
        }
    }
    accepted
}

#[test]
fn hostile_states_are_refused_or_harmless() {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let clock = HandClock::at(1_795_295_200_000_000_000);
    let mut rtc = Rtc::new(clock.clone());
    rtc.access(0, Access::Write(&[0x0b]));
    rtc.access(1, Access::Write(&[0xc2]));
    let tick = |rtc: &mut Rtc<HandClock>| {
        clock.advance(std::time::Duration::from_millis(700));
        rtc.tick();
        let _ = rtc.next_event();
    };
    let counts = [
        survives(&mut random, &rtc, || Rtc::new(clock.clone()), 2, tick),
        {
            let mut uart = Uart::new(Vec::new());
            uart.access(2, Access::Write(&[0xc7]));
            uart.receive(b"queued input");
            let flush = |uart: &mut Uart<Vec<u8>>| uart.flush_transmit();
            survives(&mut random, &uart, || Uart::new(Vec::new()), 8, flush)
        },
        survives(
            &mut random,
            &PmTimer::new(clock.clone()),
            || PmTimer::new(clock.clone()),
            4,
            |_| {},
        ),
        survives(
            &mut random,
            &Pm1Event::default(),
            Pm1Event::default,
            4,
            |_| {},
        ),
        survives(
            &mut random,
            &Pm1Control::default(),
            Pm1Control::default,
            2,
            |_| {},
        ),
        survives(
            &mut random,
            &FwCfg::new(1 << 20, 1),
            || FwCfg::new(1 << 20, 1),
            2,
            |_| {},
        ),
        {
            let mut port = DataPort::default();
            port.access(0, Access::Write(&[1, 2, 3]));
            survives(&mut random, &port, DataPort::default, 8, |_| {})
        },
        {
            let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let disk = || {
                let device = Block::new(vec![0u8; 4096], false, "blk0");
                MmioTransport::new(device, memory.clone(), Arc::new(CountingLine::default()))
            };
            let mut live = disk();
            for (offset, value) in [(0x070u64, 3u32), (0x038, 8), (0x044, 1), (0x070, 15)] {
                live.access(offset, Access::Write(&value.to_le_bytes()));
            }
            let ring = |device: &mut MmioTransport<Block<Vec<u8>>>| {
                crate::devices::virtio::QueueNotify::notify(device, None);
            };
            survives(&mut random, &live, disk, 0x200, ring)
        },
    ];
    let pci = virtio_pci_survives(&mut random);
    assert!(pci > 0, "no virtio-pci state got through");
    // Some of each kind got through validation and were driven, or the test proved little.
    assert!(counts.iter().all(|accepted| *accepted > 0), "{counts:?}");
}

struct NoRoutes;

impl MsiSink for NoRoutes {
    fn program(&self, _vector: u16, _message: Option<MsiMessage>) {}
    fn signal(&self, _vector: u16) {}
}

/// virtio-pci, whose restore is its own (it gives back BAR moves): configuration space,
/// MSI-X and vectors from a hostile past, then random BAR and configuration accesses.
fn virtio_pci_survives(random: &mut Random) -> usize {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let function = || {
        let device = Block::new(vec![0u8; 4096], false, "blk0");
        let line = Arc::new(CountingLine::default());
        VirtioPciTransport::new(device, memory.clone(), Arc::new(NoRoutes), line).unwrap()
    };
    let live = function();
    live.write_config(0x04, &[0x06]);
    live.write_config(0x10, &0xe000_0000u32.to_le_bytes());
    let saved = live.save_saved().unwrap();
    let mut accepted = 0;
    for _ in 0..ROUNDS {
        let mut hostile = saved.clone();
        random.mutate(&mut hostile.state);
        let mut target = function();
        if target.restore_saved(&hostile).is_err() {
            continue;
        }
        accepted += 1;
        for _ in 0..ACCESSES {
            random.access(&mut target, 0x8000);
            let offset = random.below(0x100) as u16;
            target.write_config(offset, &random.next().to_le_bytes()[..4]);
            target.read_config(offset, &mut [0u8; 4]);
            crate::devices::virtio::QueueNotify::notify(&target, None);
        }
    }
    accepted
}
