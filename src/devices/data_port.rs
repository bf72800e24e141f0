//! A data port in the style of an ATA PIO disk's data register: what the guest writes to
//! port 0 (any width, `rep outs` included) queues up, and reads of port 0 return it in
//! order. Port 7 is a command/status register: write 1 to clear; bit 3 (DRQ) reads set
//! while data waits. It exists to measure string I/O.

use std::collections::VecDeque;

use crate::bus::{Access, BusDevice, StopRequest};

/// Bytes it holds at most; writes beyond are dropped.
pub const DATA_PORT_CAPACITY: usize = 64 * 1024;
const DATA: u64 = 0;
const COMMAND: u64 = 7;
const STATUS_DRQ: u8 = 0x08;
const COMMAND_CLEAR: u8 = 1;

/// The device.
#[derive(Debug, Default)]
pub struct DataPort {
    queued: VecDeque<u8>,
}

impl BusDevice for DataPort {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match (offset, access) {
            (DATA, Access::Write(data)) => {
                let room = DATA_PORT_CAPACITY - self.queued.len();
                self.queued.extend(&data[..data.len().min(room)]);
            }
            (DATA, Access::Read(data)) => data
                .iter_mut()
                .for_each(|b| *b = self.queued.pop_front().unwrap_or(0)),
            (COMMAND, Access::Write(data)) => {
                if data.first() == Some(&COMMAND_CLEAR) {
                    self.queued.clear();
                }
            }
            (COMMAND, Access::Read(data)) => data.fill(if self.queued.is_empty() {
                0
            } else {
                STATUS_DRQ
            }),
            (_, Access::Read(data)) => data.fill(0xff),
            (_, Access::Write(_)) => {}
        }
        None
    }
}

mod state;
pub use state::SavedDataPort;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_back_in_order_at_any_width() {
        let mut port = DataPort::default();
        port.access(DATA, Access::Write(&[1, 2, 3]));
        port.access(DATA, Access::Write(&[4]));
        let mut status = [0u8];
        port.access(COMMAND, Access::Read(&mut status));
        assert_eq!(status[0], STATUS_DRQ);
        let mut word = [0u8; 2];
        port.access(DATA, Access::Read(&mut word));
        assert_eq!(word, [1, 2]);
        let mut rest = [0u8; 4];
        port.access(DATA, Access::Read(&mut rest));
        assert_eq!(rest, [3, 4, 0, 0], "empty reads 0");
        port.access(DATA, Access::Write(&[9]));
        port.access(COMMAND, Access::Write(&[COMMAND_CLEAR]));
        port.access(COMMAND, Access::Read(&mut status));
        assert_eq!(status[0], 0);
    }

    #[test]
    fn writes_beyond_capacity_are_dropped() {
        let mut port = DataPort::default();
        port.access(DATA, Access::Write(&vec![7u8; DATA_PORT_CAPACITY + 10]));
        let mut data = vec![0u8; DATA_PORT_CAPACITY + 10];
        port.access(DATA, Access::Read(&mut data));
        assert!(data[..DATA_PORT_CAPACITY].iter().all(|b| *b == 7));
        assert!(data[DATA_PORT_CAPACITY..].iter().all(|b| *b == 0));
    }
}
