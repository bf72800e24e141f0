//! A PCI function built as the virtio-pci transport builds one (a configuration space
//! with a memory BAR and an MSI-X capability, the table and PBA in that BAR), saved
//! mid-use and restored into a fresh one.

use std::sync::Arc;

use super::super::{MsiMessage, MsixLayout, MsixState, MSIX_CAPABILITY_ID};
use super::*;
use crate::bus::{Access, BusDevice, StopRequest};
use crate::devices::pci::config::{
    BarChange, BarKind, ConfigSpace, PciIds, SavedConfigSpace, BAR0, COMMAND, COMMAND_MEMORY_SPACE,
};
use crate::devices::pci::msix::tests::{Event, Recorder};
use crate::devices::persist::testing::{restores_identically, run, through_json, Step};
use crate::devices::persist::{open, Persist};

const LAYOUT: MsixLayout = MsixLayout {
    vectors: 3,
    table_bar: 0,
    table_offset: 0,
    pba_bar: 0,
    pba_offset: 0x1000,
};
/// Where the test's accesses go: configuration space, BAR 0, or "the device raises
/// vector N" (a one-byte write of N).
const CONFIG: u64 = 0;
const BAR: u64 = 0x1_0000;
const RAISE: u64 = 0x2_0000;
const PBA: u64 = BAR + LAYOUT.pba_offset as u64;

struct Function {
    config: ConfigSpace,
    msix: MsixState,
    control: u16,
    moves: Vec<BarChange>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedFunction {
    config: SavedConfigSpace,
    msix: SavedMsix,
}

impl Function {
    fn new(sink: Arc<Recorder>) -> Self {
        let ids = PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x01_80_00,
            subsystem_vendor: 0x1af4,
            subsystem: 2,
        };
        let mut config = ConfigSpace::new(ids);
        config.add_bar(0, BarKind::Memory32, 0x2000).unwrap();
        let msix = MsixState::new(LAYOUT, sink).unwrap();
        let (body, mask) = msix.capability();
        let at = config
            .add_capability(MSIX_CAPABILITY_ID, &body, &mask)
            .unwrap();
        Self {
            config,
            msix,
            control: at + 2,
            moves: Vec::new(),
        }
    }
}

impl BusDevice for Function {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        let table_end = BAR + self.msix.table_size();
        match (offset, access) {
            (CONFIG..BAR, Access::Read(data)) => self.config.read(offset as u16, data),
            (CONFIG..BAR, Access::Write(data)) => {
                self.moves.extend(self.config.write(offset as u16, data));
                self.msix.write_control(self.config.u16_at(self.control));
            }
            (BAR..PBA, Access::Read(data)) if offset < table_end => {
                self.msix.read_table(offset - BAR, data)
            }
            (BAR..PBA, Access::Write(data)) => self.msix.write_table(offset - BAR, data),
            (PBA..RAISE, Access::Read(data)) => self.msix.read_pba(offset - PBA, data),
            (RAISE, Access::Write([vector])) => self.msix.notify(u16::from(*vector)),
            (_, Access::Read(data)) => data.fill(0xff),
            (_, Access::Write(_)) => {}
        }
        None
    }
}

impl Persist for Function {
    const KIND: &'static str = "test-pci-function";
    const VERSION: u32 = 1;
    type State = SavedFunction;

    fn save(&self) -> SavedFunction {
        SavedFunction {
            config: self.config.save_state(),
            msix: self.msix.save_state(),
        }
    }

    fn restore(&mut self, state: &SavedFunction) -> Result<(), StateError> {
        self.msix.check_state(&state.msix)?;
        let moves = self.config.restore_state(&state.config)?;
        self.msix.restore_state(&state.msix)?;
        self.moves.extend(moves);
        Ok(())
    }
}

fn write32(offset: u64, value: u32) -> Step {
    Step::Write(offset, value.to_le_bytes().to_vec())
}

/// The table entry's dword `dword` (0 address low, 2 data, 3 control) of `vector`.
fn entry(vector: u64, dword: u64) -> u64 {
    BAR + vector * 16 + dword * 4
}

#[test]
fn a_moved_bar_and_vectors_programmed_masked_and_pending_survive() {
    let sink = Arc::new(Recorder::default());
    let mut original = Function::new(sink.clone());
    let mut setup = vec![
        write32(CONFIG + u64::from(BAR0), 0xe000_0000),
        Step::Write(
            CONFIG + u64::from(COMMAND),
            vec![COMMAND_MEMORY_SPACE as u8],
        ),
        Step::Write(CONFIG + u64::from(original.control) + 1, vec![0x80]),
    ];
    for vector in 0..3 {
        setup.push(write32(entry(vector, 0), 0xfee0_0000));
        setup.push(write32(entry(vector, 2), 0x40 + vector as u32));
    }
    setup.extend([write32(entry(0, 3), 0), write32(entry(2, 3), 0)]);
    setup.push(Step::Write(RAISE, vec![1]));
    run(&mut original, &setup);
    assert_eq!(original.moves.len(), 1);
    assert!(original.msix.pending(1));
    sink.take();

    let fresh_sink = Arc::new(Recorder::default());
    let mut fresh = Function::new(fresh_sink.clone());
    let steps = [
        Step::Read(PBA, 8),
        Step::Read(entry(1, 3), 4),
        Step::Read(entry(2, 2), 4),
        Step::Read(CONFIG + u64::from(BAR0), 4),
        Step::Write(RAISE, vec![0]),
        write32(entry(1, 3), 0),
        Step::Read(PBA, 8),
        Step::Write(CONFIG + u64::from(fresh.control) + 1, vec![0xc0]),
        Step::Write(RAISE, vec![2]),
        Step::Read(PBA, 8),
    ];
    let saved = through_json(&original);
    crate::devices::persist::restore(&mut fresh, &saved).unwrap();
    let message = |data| {
        Some(MsiMessage {
            address: 0xfee0_0000,
            data,
        })
    };
    assert_eq!(
        fresh_sink.take(),
        [
            Event::Program(0, message(0x40)),
            Event::Program(2, message(0x42))
        ],
        "the restored routes, as the original's sink was told"
    );
    assert_eq!(
        fresh.moves.len(),
        1,
        "the moved BAR, for the machine to place"
    );
    assert_eq!((fresh.moves[0].old, fresh.moves[0].new), (0, 0xe000_0000));

    // Restoring the same state again tells the sink nothing new and moves nothing.
    restores_identically(&mut original, &mut fresh, &[]);
    assert_eq!(fresh_sink.take(), []);
    assert_eq!(fresh.moves.len(), 1);
    let expected = run(&mut original, &steps);
    assert_eq!(run(&mut fresh, &steps), expected);
    assert_eq!(
        fresh_sink.take(),
        sink.take(),
        "the same routes and interrupts"
    );
    assert_eq!(
        expected[0].0,
        [0b010, 0, 0, 0, 0, 0, 0, 0],
        "vector 1 pending"
    );
    assert_eq!(expected[1].0, [1, 0, 0, 0], "vector 1 masked");
    assert_eq!(expected[2].0, [0x42, 0, 0, 0]);
    assert_eq!(expected[3].0, 0xe000_0000u32.to_le_bytes());
    assert_eq!(expected[6].0, [0; 8], "delivered when unmasked");
    assert_eq!(
        expected[9].0,
        [0b100, 0, 0, 0, 0, 0, 0, 0],
        "held by the function mask"
    );
}

#[test]
fn impossible_tables_are_refused_and_change_nothing() {
    let mut function = Function::new(Arc::new(Recorder::default()));
    let good = open::<Function>(&through_json(&function)).unwrap().msix;
    let mut wrong_size = good.clone();
    wrong_size.entries.pop();
    let mut past_the_end = good.clone();
    past_the_end.pending[0] = 1 << 3;
    let mut control = good.clone();
    control.control = 0x07ff;
    let mut more_words = good.clone();
    more_words.pending.push(0);
    function.msix.write_control(MSIX_ENABLE);
    for bad in [wrong_size, past_the_end, control, more_words] {
        assert!(
            matches!(
                function.msix.restore_state(&bad),
                Err(StateError::Invalid { .. })
            ),
            "{bad:?}"
        );
        assert!(function.msix.enabled(), "unchanged");
    }
}
