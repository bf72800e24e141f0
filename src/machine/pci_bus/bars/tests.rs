use std::collections::BTreeMap;
use std::os::fd::AsRawFd;

use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;
use crate::bus::{Access, BusDevice, StopRequest};
use crate::devices::pci::BarKind;

const A: u64 = 0xc000_0000;
const B: u64 = 0xd000_0000;
const NOTIFY: [u64; 2] = [0x3000, 0x3004];

struct Nothing;

impl BusDevice for Nothing {
    fn access(&mut self, _offset: u64, _access: Access<'_>) -> Option<StopRequest> {
        None
    }
}

/// KVM's ioeventfds as far as a move sees them: one per address (a second is refused, as
/// KVM does), and one assignment refused once `assigns_left` reaches 0 (the undo's
/// assignments then succeed).
#[derive(Default)]
struct FakeDoorbells {
    registered: Mutex<BTreeMap<u64, i32>>,
    assigns_left: Mutex<Option<usize>>,
}

fn refused() -> KvmError {
    KvmError::MissingCapability("KVM_IOEVENTFD (refused by the test)")
}

impl DoorbellSwitch for FakeDoorbells {
    fn assign(&self, event: &EventFd, addr: u64) -> Result<(), KvmError> {
        let mut left = self.assigns_left.locked();
        match left.as_mut() {
            Some(0) => {
                *left = None;
                return Err(refused());
            }
            Some(n) => *n -= 1,
            None => {}
        }
        drop(left);
        let mut registered = self.registered.locked();
        if registered.contains_key(&addr) {
            return Err(refused());
        }
        registered.insert(addr, event.as_raw_fd());
        Ok(())
    }

    fn deassign(&self, event: &EventFd, addr: u64) -> Result<(), KvmError> {
        match self.registered.locked().remove(&addr) {
            Some(fd) if fd == event.as_raw_fd() => Ok(()),
            _ => Err(refused()),
        }
    }
}

struct Machine {
    mmio: Arc<SwappableMmio>,
    doorbells: Arc<FakeDoorbells>,
    mover: BarMover,
    events: Vec<i32>,
}

impl Machine {
    /// A device with two doorbells, placed at `A`.
    fn new() -> Self {
        let mmio = Arc::new(SwappableMmio::default());
        let doorbells = Arc::new(FakeDoorbells::default());
        let mover = BarMover::with_switch(&mmio, Some(doorbells.clone() as _));
        let events: Vec<EventFd> = NOTIFY
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let fds = events.iter().map(|event| event.as_raw_fd()).collect();
        mover.bars.locked().push(PlacedBar {
            device: 1,
            name: "virtio-test",
            bar: Arc::new(Mutex::new(Nothing)),
            base: None,
            doorbells: events.into_iter().zip(NOTIFY).collect(),
        });
        let machine = Self {
            mmio,
            doorbells,
            mover,
            events: fds,
        };
        machine.move_to(A);
        assert_eq!(machine.placed(), (Some(A), machine.doorbells_at(A)));
        machine
    }

    fn move_to(&self, new: u64) {
        let change = BarChange {
            bar: BAR,
            old: 0,
            new,
            size: BAR_SIZE,
            kind: BarKind::Memory32,
        };
        self.mover.bar_changed(1, change);
    }

    /// Where the bus and the device think the BAR is, and the doorbells registered.
    fn placed(&self) -> (Option<u64>, BTreeMap<u64, i32>) {
        let base = self.mover.bars.locked()[0].base;
        let on_bus = self
            .mmio
            .locate(base.unwrap_or(0))
            .map(|(_, offset)| offset);
        assert_eq!(on_bus, base.map(|_| 0), "the bus agrees with the device");
        (base, self.doorbells.registered.locked().clone())
    }

    fn doorbells_at(&self, base: u64) -> BTreeMap<u64, i32> {
        NOTIFY
            .iter()
            .map(|at| base + at)
            .zip(self.events.iter().copied())
            .collect()
    }

    fn refuse_after(&self, assigns: usize) {
        *self.doorbells.assigns_left.locked() = Some(assigns);
    }
}

#[test]
fn a_move_takes_the_doorbells_along() {
    let machine = Machine::new();
    machine.move_to(B);
    assert_eq!(machine.placed(), (Some(B), machine.doorbells_at(B)));
    assert!(machine.mmio.locate(A).is_none());
}

#[test]
fn a_doorbell_refused_leaves_the_device_where_it_was() {
    let machine = Machine::new();
    // The second new doorbell fails, after the first was registered.
    machine.refuse_after(1);
    machine.move_to(B);
    assert_eq!(machine.placed(), (Some(A), machine.doorbells_at(A)));
    assert!(machine.mmio.locate(B).is_none(), "the bus did not move");
}

#[test]
fn a_move_by_less_than_the_bar_keeps_one_doorbell_per_address() {
    let machine = Machine::new();
    // Queue 0's new doorbell sits where queue 1's old one was.
    machine.move_to(A + 4);
    assert_eq!(machine.placed(), (Some(A + 4), machine.doorbells_at(A + 4)));
}

#[test]
fn a_doorbell_refused_after_the_bus_moved_moves_it_back() {
    let machine = Machine::new();
    // Moving by 4: queue 1's doorbell is assigned first, then the bus moves, the old ones
    // go, and queue 0's, at queue 1's old address, is refused: everything is undone.
    machine.refuse_after(1);
    machine.move_to(A + 4);
    assert_eq!(machine.placed(), (Some(A), machine.doorbells_at(A)));
}

#[test]
fn a_move_onto_another_device_registers_no_doorbell() {
    let machine = Machine::new();
    machine
        .mmio
        .insert("other", B, 0x1000, Arc::new(Mutex::new(Nothing)))
        .unwrap();
    machine.move_to(B);
    assert_eq!(machine.placed(), (Some(A), machine.doorbells_at(A)));
    assert_eq!(machine.mmio.locate(B).map(|(name, _)| name), Some("other"));
}

#[test]
fn the_steps_of_a_first_placement_end_with_its_publish() {
    let machine = Machine::new();
    let bars = machine.mover.bars.locked();
    let mut unplaced = PlacedBar {
        device: 2,
        name: "fresh",
        bar: bars[0].bar.clone(),
        base: None,
        doorbells: Vec::new(),
    };
    unplaced
        .doorbells
        .push((EventFd::new(EFD_NONBLOCK).unwrap(), 0x3000));
    let steps = move_steps(&unplaced, B);
    assert_eq!(
        steps,
        [
            MoveStep::Assign(0, B + 0x3000),
            MoveStep::Publish { from: None, to: B }
        ]
    );
}
