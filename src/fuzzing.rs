//! Entry points for the fuzz targets in `fuzz/`: everything a guest controls, driven from
//! arbitrary bytes with no KVM. Unit tests run them over generated inputs too, so they
//! are exercised on every `cargo test`, not only under a fuzzer.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::{Access, BusDevice};
use crate::devices::uart::Uart;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::driver::DriverQueue;
use crate::devices::virtio::mmio::{MmioTransport, QueueNotify};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::VirtioDevice;
use crate::irq::CountingLine;

const MEMORY: usize = 64 * 1024;
const QUEUE_SIZE: u16 = 8;
const DESCRIPTORS: usize = 16 * QUEUE_SIZE as usize;
const AVAIL: usize = 4 + 2 * QUEUE_SIZE as usize;
const DATA: u64 = 0x2000;

/// Lays `data` out as a queue the guest built: a descriptor table, an available ring,
/// then buffer contents; every field is the fuzzer's.
fn guest_memory(data: &[u8]) -> (GuestMemoryMmap, DriverQueue) {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).expect("64 KiB");
    let queue = DriverQueue::new(0, QUEUE_SIZE);
    let (desc, avail, _) = queue.addresses();
    let take =
        |from: usize, len: usize| data.get(from..(from + len).min(data.len())).unwrap_or(&[]);
    let _ = memory.write_slice(take(0, DESCRIPTORS), GuestAddress(desc));
    let _ = memory.write_slice(take(DESCRIPTORS, AVAIL), GuestAddress(avail));
    let rest = take(DESCRIPTORS + AVAIL, MEMORY - DATA as usize);
    let _ = memory.write_slice(rest, GuestAddress(DATA));
    (memory, queue)
}

fn run_device(device: &mut impl VirtioDevice, data: &[u8]) {
    let (memory, driver) = guest_memory(data);
    for index in 0..device.queue_max_sizes().len() {
        let mut queue = driver.device_queue(device.queue_max_sizes()[index]);
        // A malformed ring is an error for the transport to report, never a panic.
        let _ = device.process_queue(index, &mut queue, &memory);
    }
}

/// Block requests from arbitrary descriptor chains and headers.
pub fn virtio_block(data: &[u8]) {
    let mut device = Block::new(vec![0u8; 16 * 512], false, "fuzz");
    run_device(&mut device, data);
}

/// The entropy and console devices on arbitrary chains.
pub fn virtio_small_devices(data: &[u8]) {
    run_device(&mut Rng::new(std::io::repeat(7)), data);
    run_device(&mut Console::new(std::io::sink()), data);
}

/// The transport's registers: arbitrary accesses (offset, width, value), then doorbells.
pub fn virtio_mmio_registers(data: &[u8]) {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).expect("64 KiB");
    let line = Arc::new(CountingLine::default());
    let mut transport =
        MmioTransport::new(Block::new(vec![0u8; 4096], false, "fuzz"), memory, line);
    for access in data.chunks(7) {
        let [offset_low, offset_high, width, v0, v1, v2, v3] = access else {
            break;
        };
        let offset = u64::from(u16::from_le_bytes([*offset_low, *offset_high]) & 0x1ff);
        let value = [*v0, *v1, *v2, *v3];
        let is_read = *width & 0x80 != 0;
        let width = [1usize, 2, 4, 4][usize::from(*width & 3)];
        if is_read {
            let mut read = [0u8; 4];
            transport.access(offset, Access::Read(&mut read[..width]));
        } else {
            transport.access(offset, Access::Write(&value[..width]));
        }
        transport.notify(None);
    }
}

/// An output that refuses (`WouldBlock`) while its switch is on, as a full pipe does.
struct FlakyOutput(Arc<AtomicBool>);

impl Write for FlakyOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.0.load(Ordering::Relaxed) {
            true => Err(io::ErrorKind::WouldBlock.into()),
            false => Ok(data.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// COM1's registers: arbitrary accesses (offset, width, value), host input, the
/// machine's flush, and an output that sometimes refuses.
pub fn uart_registers(data: &[u8]) {
    let refusing = Arc::new(AtomicBool::new(false));
    let line = Arc::new(CountingLine::default());
    let mut uart = Uart::with_interrupt(FlakyOutput(refusing.clone()), line);
    for access in data.chunks(3) {
        let [op, offset, value] = access else {
            break;
        };
        let offset = u64::from(*offset & 0x0f);
        let width = if op & 0x30 == 0 { 2 } else { 1 };
        match op & 0x0f {
            0 => {
                uart.receive(&[*value; 7]);
            }
            1 => uart.flush_transmit(),
            2 => refusing.store(value & 1 != 0, Ordering::Relaxed),
            3..=8 => {
                let mut read = [0u8; 2];
                uart.access(offset, Access::Read(&mut read[..width]));
            }
            _ => {
                uart.access(offset, Access::Write(&[*value; 2][..width]));
            }
        }
    }
}

/// The trace reader on arbitrary bytes, then a replay of what it accepts when the
/// machine is small (so a fuzzer does not spend its time allocating guest memory). The
/// replay is the advisor's: the same replay, with its observer watching every record.
pub fn trace(data: &[u8]) {
    let Ok((machine, _)) = crate::replay::decode(data) else {
        return;
    };
    if machine.memory <= 4 << 20 && machine.disk_bytes <= 1 << 20 {
        let _ = crate::advise::advise(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream of bytes (xorshift), for runs without a fuzzer.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn generated_inputs_never_panic() {
        for seed in 0..500u64 {
            let data = bytes(seed, (seed as usize * 37) % 600);
            virtio_block(&data);
            virtio_small_devices(&data);
            virtio_mmio_registers(&data);
            uart_registers(&data);
            trace(&data);
            // A valid header (2 MiB, one vCPU, rng and console) before the bytes.
            let mut traced = crate::trace::format::MAGIC.to_vec();
            traced.extend_from_slice(&[1, 0, 26, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 1, 3]);
            traced.extend_from_slice(&[0; 16]);
            traced.extend_from_slice(&data);
            trace(&traced);
        }
    }

    #[test]
    fn a_well_formed_input_reaches_the_block_device() {
        // One read request: header, 512-byte buffer, status, all valid.
        let mut data = vec![0u8; DESCRIPTORS + AVAIL + 16];
        let descriptors = [
            (DATA, 16u32, 1u16, 1u16),
            (DATA + 512, 512, 3, 2),
            (DATA + 1024, 1, 2, 0),
        ];
        for (i, (addr, len, flags, next)) in descriptors.iter().enumerate() {
            let at = 16 * i;
            data[at..at + 8].copy_from_slice(&addr.to_le_bytes());
            data[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
            data[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
            data[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
        }
        data[DESCRIPTORS + 2] = 1; // avail idx = 1, ring[0] = 0
        let (memory, driver) = guest_memory(&data);
        let mut device = Block::new(vec![9u8; 16 * 512], false, "fuzz");
        let mut queue = driver.device_queue(128);
        assert!(device.process_queue(0, &mut queue, &memory).unwrap());
        assert_eq!(driver.used(&memory, 0), (0, 513));
    }
}
