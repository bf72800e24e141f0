//! virtio-console (ID 3), one port: what the driver transmits goes to a host writer, and
//! host input fills the buffers the driver posts on the receive queue.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::Mutex;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;

use super::{QueueError, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::sync::LockExt;

mod state;
pub use state::SavedConsole;

/// Input waiting for receive buffers is capped; beyond it, input is refused.
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// The most bytes one transmit request is taken from.
const MAX_TRANSMIT: usize = 64 * 1024;
const RECEIVE: usize = 0;
const QUEUE_SIZES: &[u16] = &[64, 64];

/// Where transmitted bytes go, and the buffer they pass through.
struct Transmit<W> {
    output: W,
    /// It keeps its capacity between requests.
    bytes: Vec<u8>,
    /// Bytes of `bytes` the output has taken (the rest wait for room).
    sent: usize,
    /// Transmitted bytes lost: refused with an error other than `WouldBlock`.
    lost: u64,
}

impl<W: Write> Transmit<W> {
    fn held(&self) -> usize {
        self.bytes.len() - self.sent
    }

    /// Offers the output what waits in `bytes`; true once it has taken all of it.
    fn send_held(&mut self) -> bool {
        while self.sent < self.bytes.len() {
            match self.output.write(&self.bytes[self.sent..]) {
                Ok(0) => return false,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                // A failing host writer must not stall the guest.
                Err(_) => {
                    self.lost += self.held() as u64;
                    self.sent = self.bytes.len();
                }
            }
        }
        let _ = self.output.flush();
        true
    }
}

/// The device, writing what the guest sends to `output`. Host input and transmission
/// each have their own lock, so input is taken while a transmission writes out.
///
/// Back-pressure: `output` may refuse bytes (`WouldBlock`: a full pipe). The bytes of the
/// chain being sent then stay in the transmit buffer (the chain itself is used: its bytes
/// are copied), and no further transmit chain is taken from the ring until the output
/// took them: the driver sees its buffers come back no faster than the host reads, as
/// with a slow line. The machine calls the queues again when the output has room.
pub struct Console<W: Write + Send> {
    transmit: Mutex<Transmit<W>>,
    input: Mutex<VecDeque<u8>>,
}

impl<W: Write + Send> Console<W> {
    /// A console whose output goes to `output`.
    pub fn new(output: W) -> Self {
        Self {
            transmit: Mutex::new(Transmit {
                output,
                bytes: Vec::with_capacity(MAX_TRANSMIT),
                sent: 0,
                lost: 0,
            }),
            input: Mutex::new(VecDeque::with_capacity(MAX_PENDING_INPUT)),
        }
    }

    /// Transmitted bytes waiting for the output to have room.
    pub fn held_bytes(&self) -> usize {
        self.transmit.locked().held()
    }

    /// Transmitted bytes the output refused with an error (not for want of room).
    pub fn lost_bytes(&self) -> u64 {
        self.transmit.locked().lost
    }

    /// Serves the transmit queue: the held bytes first, then a chain at a time while the
    /// output takes everything.
    fn transmit_chains(
        &self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut transmit = self.transmit.locked();
        let mut used = false;
        while transmit.send_held() {
            let Some(chain) = queue.iter(memory)?.next() else {
                break;
            };
            let head = chain.head_index();
            transmit.bytes.clear();
            transmit.sent = 0;
            if let Ok(reader) = chain.reader(memory) {
                if reader
                    .take(MAX_TRANSMIT as u64)
                    .read_to_end(&mut transmit.bytes)
                    .is_err()
                {
                    transmit.bytes.clear();
                }
            }
            queue.add_used(memory, head, 0)?;
            used = true;
        }
        Ok(used)
    }

    /// Queues host input; returns how many bytes were taken. The transport then runs the
    /// receive queue to deliver them.
    pub fn receive(&self, bytes: &[u8]) -> usize {
        let mut input = self.input.locked();
        let taken = bytes.len().min(MAX_PENDING_INPUT - input.len());
        input.extend(&bytes[..taken]);
        taken
    }

    /// Fills posted receive buffers from the pending input; leaves other buffers posted.
    fn deliver_input(
        &self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut input = self.input.locked();
        let mut used = false;
        while !input.is_empty() {
            let Some(chain) = queue.iter(memory)?.next() else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0;
            if let Ok(mut writer) = chain.writer(memory) {
                let count = writer.available_bytes().min(input.len());
                let (front, back) = input.as_slices();
                let back = &back[..count.saturating_sub(front.len())];
                let front = &front[..count.min(front.len())];
                if writer
                    .write_all(front)
                    .and_then(|()| writer.write_all(back))
                    .is_ok()
                {
                    written = count as u32;
                }
                input.drain(..count);
            }
            queue.add_used(memory, head, written)?;
            used = true;
        }
        Ok(used)
    }

    /// Runs `look` on where the output went.
    pub fn with_output<R>(&self, look: impl FnOnce(&W) -> R) -> R {
        look(&self.transmit.locked().output)
    }
}

impl<W: Write + Send> VirtioDevice for Console<W> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: no size, one port.
        super::read_config_bytes(&[0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], offset, data);
    }

    fn process_queue(
        &self,
        index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        if index == RECEIVE {
            return self.deliver_input(queue, memory);
        }
        self.transmit_chains(queue, memory)
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::driver::DriverQueue;

    const TRANSMIT: usize = 1;

    /// A destination with `room` bytes of space (a pipe nobody reads); `None`: the
    /// reader is gone.
    #[derive(Default)]
    struct Pipe {
        room: Option<usize>,
        taken: Vec<u8>,
    }

    impl Write for Pipe {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let Some(room) = self.room.as_mut() else {
                return Err(io::ErrorKind::BrokenPipe.into());
            };
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = data.len().min(*room);
            *room -= n;
            self.taken.extend_from_slice(&data[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    /// Three 10-byte transmit chains: "0000000000", "1111111111", "2222222222".
    fn three_chains(memory: &GuestMemoryMmap) -> (DriverQueue, Queue, Vec<u8>) {
        let mut driver = DriverQueue::new(0x10_0000, 8);
        let mut all = Vec::new();
        for chain in 0..3u64 {
            let bytes = [b'0' + chain as u8; 10];
            let at = 0x20_0000 + chain * 0x100;
            memory.write_slice(&bytes, GuestAddress(at)).unwrap();
            driver.add_chain(memory, &[(at, 10, false)]);
            all.extend_from_slice(&bytes);
        }
        let queue = driver.device_queue(64);
        (driver, queue, all)
    }

    #[test]
    fn a_full_output_holds_the_chain_being_sent_and_takes_no_more() {
        let memory = memory();
        let (driver, mut queue, all) = three_chains(&memory);
        let console = Console::new(Pipe {
            room: Some(15),
            taken: Vec::new(),
        });
        assert!(console
            .process_queue(TRANSMIT, &mut queue, &memory)
            .unwrap());
        assert_eq!(
            driver.used_idx(&memory),
            2,
            "the third chain stays in the ring"
        );
        assert_eq!(console.held_bytes(), 5);
        // Nothing moves while the output stays full.
        assert!(!console
            .process_queue(TRANSMIT, &mut queue, &memory)
            .unwrap());
        assert_eq!(driver.used_idx(&memory), 2);
        // Room again: the held bytes, then the rest, in order.
        console.transmit.locked().output.room = Some(100);
        assert!(console
            .process_queue(TRANSMIT, &mut queue, &memory)
            .unwrap());
        assert_eq!(driver.used_idx(&memory), 3);
        assert_eq!(console.held_bytes(), 0);
        assert_eq!(console.with_output(|pipe| pipe.taken.clone()), all);
        assert_eq!(console.lost_bytes(), 0);
    }

    #[test]
    fn an_output_whose_reader_is_gone_loses_bytes_but_not_the_queue() {
        let memory = memory();
        let (driver, mut queue, _) = three_chains(&memory);
        let console = Console::new(Pipe::default());
        assert!(console
            .process_queue(TRANSMIT, &mut queue, &memory)
            .unwrap());
        assert_eq!(driver.used_idx(&memory), 3);
        assert_eq!(console.lost_bytes(), 30);
    }
}
