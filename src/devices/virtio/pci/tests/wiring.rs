//! The transport as the machine wires it: a function on the root bus whose BAR is a
//! bus device, placed through the BarObserver.

use std::sync::{Arc, Mutex};

use super::*;

/// Where the observer was told BAR 0 went.
#[derive(Default)]
struct Placed(Mutex<Vec<(u8, BarChange)>>);

impl crate::devices::pci::host::BarObserver for Placed {
    fn bar_changed(&self, function: u8, change: BarChange) {
        self.0.lock().unwrap().push((function, change));
    }
}

#[test]
fn one_transport_is_both_a_function_on_the_root_and_its_bar_on_a_bus() {
    use crate::devices::pci::host::{ConfigAddress, PciRoot, SharedFunction};
    let h = rng();
    let shared = Arc::new(Mutex::new(h.transport));
    let function: SharedFunction = shared.clone();
    let bar: crate::bus::SharedDevice = shared;
    let placed = Arc::new(Placed::default());
    let mut root = PciRoot::new(placed.clone());
    assert_eq!(root.add_next(function), Ok(1));
    root.assign_memory_bars(0xc100_0000..0xe000_0000).unwrap();
    let seen = placed.0.lock().unwrap().clone();
    let expected = BarChange {
        bar: 0,
        old: 0,
        new: 0xc100_0000,
        size: BAR_SIZE,
        kind: BarKind::Memory64,
    };
    assert_eq!(seen, vec![(1, expected)]);
    let command = ConfigAddress {
        bus: 0,
        device: 1,
        function: 0,
        register: COMMAND,
    };
    root.config_write(command, &[COMMAND_MEMORY_SPACE as u8]);
    let mut queues = [0u8; 2];
    bar.lock()
        .unwrap()
        .access(NUM_QUEUES, Access::Read(&mut queues));
    assert_eq!(u16::from_le_bytes(queues), 1);
}
