//! MSI-X: masking, pending bits, the function mask, table and PBA accesses.

use std::sync::{Arc, Mutex};

use super::*;

/// What the sink was told, in order (the saved-state tests record with it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    Program(u16, Option<MsiMessage>),
    Signal(u16),
}

#[derive(Default)]
pub(super) struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    pub(super) fn take(&self) -> Vec<Event> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl MsiSink for Recorder {
    fn program(&self, vector: u16, message: Option<MsiMessage>) {
        self.0.lock().unwrap().push(Event::Program(vector, message));
    }
    fn signal(&self, vector: u16) {
        self.0.lock().unwrap().push(Event::Signal(vector));
    }
}

const LAYOUT: MsixLayout = MsixLayout {
    vectors: 3,
    table_bar: 0,
    table_offset: 0x4000,
    pba_bar: 0,
    pba_offset: 0x5000,
};

const MESSAGE: MsiMessage = MsiMessage {
    address: 0xfee0_0000,
    data: 0x41,
};

fn state() -> (MsixState, Arc<Recorder>) {
    let sink = Arc::new(Recorder::default());
    (MsixState::new(LAYOUT, sink.clone()).unwrap(), sink)
}

fn write32(msix: &mut MsixState, offset: u64, value: u32) {
    msix.write_table(offset, &value.to_le_bytes());
}

/// Programs vector `v` with MESSAGE (data + v), leaving its mask as it was.
fn program(msix: &mut MsixState, v: u16) {
    let base = u64::from(v) * TABLE_ENTRY_SIZE;
    msix.write_table(base, &MESSAGE.address.to_le_bytes());
    write32(msix, base + 8, MESSAGE.data + u32::from(v));
}

fn unmask(msix: &mut MsixState, v: u16, masked: bool) {
    write32(
        msix,
        u64::from(v) * TABLE_ENTRY_SIZE + 12,
        u32::from(masked),
    );
}

fn message(v: u16) -> Option<MsiMessage> {
    Some(MsiMessage {
        data: MESSAGE.data + u32::from(v),
        ..MESSAGE
    })
}

#[test]
fn capability_describes_the_table_and_pba() {
    let (msix, _) = state();
    let (body, mask) = msix.capability();
    assert_eq!(u16::from_le_bytes([body[0], body[1]]), 2, "table size - 1");
    assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 0x4000);
    assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x5000);
    assert_eq!(mask, [0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!((msix.table_size(), msix.pba_size()), (48, 8));
    assert!(MsixState::new(
        MsixLayout {
            vectors: 0,
            ..LAYOUT
        },
        Arc::new(Recorder::default())
    )
    .is_err());
}

#[test]
fn vectors_start_masked_and_disabled_and_the_table_reads_back() {
    let (mut msix, sink) = state();
    assert!(!msix.enabled());
    assert!((0..3).all(|v| msix.masked(v)));
    program(&mut msix, 1);
    assert!(sink.take().is_empty(), "masked: nothing to program");
    let mut data = [0u8; 8];
    msix.read_table(16, &mut data);
    assert_eq!(u64::from_le_bytes(data), MESSAGE.address);
    msix.read_table(24, &mut data);
    assert_eq!(
        u64::from_le_bytes(data),
        0x1_0000_0042,
        "data, then masked control"
    );
    let mut dword = [0u8; 4];
    msix.read_table(28, &mut dword);
    assert_eq!(u32::from_le_bytes(dword), 1);
}

#[test]
fn unmasking_programs_and_masking_unprograms() {
    let (mut msix, sink) = state();
    msix.write_control(MSIX_ENABLE);
    program(&mut msix, 0);
    unmask(&mut msix, 0, false);
    assert_eq!(sink.take(), vec![Event::Program(0, message(0))]);
    msix.notify(0);
    assert_eq!(sink.take(), vec![Event::Signal(0)]);
    unmask(&mut msix, 0, true);
    assert_eq!(sink.take(), vec![Event::Program(0, None)]);
    unmask(&mut msix, 0, true);
    assert!(sink.take().is_empty(), "no change, no call");
}

#[test]
fn reprogramming_an_unmasked_vector_reprograms_it() {
    let (mut msix, sink) = state();
    msix.write_control(MSIX_ENABLE);
    unmask(&mut msix, 2, false);
    sink.take();
    write32(&mut msix, 2 * 16 + 8, 0x99);
    let expected = Some(MsiMessage {
        address: 0,
        data: 0x99,
    });
    assert_eq!(sink.take(), vec![Event::Program(2, expected)]);
}

#[test]
fn a_masked_vector_is_held_pending_and_delivered_on_unmask() {
    let (mut msix, sink) = state();
    msix.write_control(MSIX_ENABLE);
    program(&mut msix, 1);
    msix.notify(1);
    assert!(msix.pending(1));
    let mut pba = [0u8; 8];
    msix.read_pba(0, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0b10);
    assert!(sink.take().is_empty());
    unmask(&mut msix, 1, false);
    assert_eq!(
        sink.take(),
        vec![Event::Program(1, message(1)), Event::Signal(1)]
    );
    assert!(!msix.pending(1), "delivered once");
    unmask(&mut msix, 1, true);
    unmask(&mut msix, 1, false);
    assert_eq!(
        sink.take(),
        vec![Event::Program(1, None), Event::Program(1, message(1))]
    );
}

#[test]
fn the_function_mask_masks_every_vector_and_releases_pending_ones() {
    let (mut msix, sink) = state();
    msix.write_control(MSIX_ENABLE);
    for v in 0..3 {
        program(&mut msix, v);
        unmask(&mut msix, v, false);
    }
    sink.take();
    msix.write_control(MSIX_ENABLE | MSIX_FUNCTION_MASK);
    let unprogrammed: Vec<_> = (0..3).map(|v| Event::Program(v, None)).collect();
    assert_eq!(sink.take(), unprogrammed);
    msix.notify(2);
    assert!(msix.pending(2) && sink.take().is_empty());
    msix.write_control(MSIX_ENABLE);
    let mut expected: Vec<_> = (0..3).map(|v| Event::Program(v, message(v))).collect();
    expected.push(Event::Signal(2));
    assert_eq!(sink.take(), expected);
}

#[test]
fn disabled_msix_masks_everything_and_records_nothing() {
    let (mut msix, sink) = state();
    msix.write_control(MSIX_ENABLE);
    unmask(&mut msix, 0, false);
    sink.take();
    msix.write_control(0);
    assert_eq!(sink.take(), vec![Event::Program(0, None)]);
    msix.notify(0);
    assert!(!msix.pending(0) && sink.take().is_empty());
    msix.notify(3);
    msix.notify(u16::MAX);
}

#[test]
fn odd_table_accesses_are_ignored() {
    let (mut msix, sink) = state();
    msix.write_control(MSIX_ENABLE);
    msix.write_table(12, &[0]);
    msix.write_table(12, &[0, 0]);
    msix.write_table(10, &[0; 4]);
    msix.write_table(4, &[0; 8]);
    msix.write_table(48, &[0; 4]);
    assert!(sink.take().is_empty() && msix.masked(0));
    let mut data = [0xaa; 2];
    msix.read_table(12, &mut data);
    assert_eq!(data, [0; 2]);
    let mut data = [0xaa; 4];
    msix.read_table(48, &mut data);
    msix.read_pba(8, &mut data);
    msix.read_pba(2, &mut data);
    assert_eq!(data, [0; 4]);
}

#[test]
fn only_the_mask_bit_of_vector_control_is_writable() {
    let (mut msix, _) = state();
    write32(&mut msix, 12, 0xffff_fffe);
    let mut data = [0u8; 4];
    msix.read_table(12, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0);
}

/// xorshift64: a fixed sequence, so a failure reproduces.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn random_table_accesses_keep_the_sink_consistent() {
    let sink = Arc::new(Recorder::default());
    let layout = MsixLayout {
        vectors: 70,
        ..LAYOUT
    };
    let mut msix = MsixState::new(layout, sink.clone()).unwrap();
    let mut told: Vec<Option<MsiMessage>> = vec![None; 70];
    let mut state = 0x5eed_0003u64;
    for _ in 0..10_000 {
        let r = xorshift(&mut state);
        let value = xorshift(&mut state).to_le_bytes();
        let len = [4usize, 8, 2, 1][(r & 3) as usize];
        let offset = (r >> 8) % (msix.table_size() + 16);
        match (r >> 4) % 5 {
            0 => msix.write_control((r >> 32) as u16),
            1 => msix.notify((r >> 32) as u16 % 80),
            2 => msix.read_table(offset, &mut [0u8; 8][..len]),
            3 => msix.read_pba(offset % 24, &mut [0u8; 8][..len]),
            _ => msix.write_table(offset, &value[..len]),
        }
        for event in sink.take() {
            match event {
                Event::Program(v, message) => told[usize::from(v)] = message,
                Event::Signal(v) => assert!(told[usize::from(v)].is_some(), "signal {v}"),
            }
        }
        for v in 0..70 {
            assert_eq!(told[usize::from(v)].is_none(), msix.masked(v), "vector {v}");
            assert!(!msix.pending(v) || msix.masked(v), "pending while unmasked");
        }
    }
}
