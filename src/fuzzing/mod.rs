//! Entry points for the fuzz targets in `fuzz/`: everything a guest controls, driven from
//! arbitrary bytes with no KVM. Unit tests run them over generated inputs too, so they
//! are exercised on every `cargo test`, not only under a fuzzer.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::{Access, BusDevice};
use crate::devices::acpi_pm::ResetControl;
use crate::devices::pci::host::{BarObserver, PciConfigIo, PciEcam, PciRoot};
use crate::devices::pci::msix::{MsiMessage, MsiSink, MsixLayout, MsixState};
use crate::devices::pci::{BarChange, PciFunction};
use crate::devices::uart::Uart;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::driver::DriverQueue;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::pci::VirtioPciTransport;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::{QueueNotify, VirtioDevice};
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

fn run_device(device: &impl VirtioDevice, data: &[u8]) {
    let (memory, driver) = guest_memory(data);
    for index in 0..device.queue_max_sizes().len() {
        let mut queue = driver.device_queue(device.queue_max_sizes()[index]);
        // A malformed ring is an error for the transport to report, never a panic.
        let _ = device.process_queue(index, &mut queue, &memory);
    }
}

/// Block requests from arbitrary descriptor chains and headers.
pub fn virtio_block(data: &[u8]) {
    let device = Block::new(vec![0u8; 16 * 512], false, "fuzz");
    run_device(&device, data);
}

/// The entropy and console devices on arbitrary chains.
pub fn virtio_small_devices(data: &[u8]) {
    run_device(&Rng::new(std::io::repeat(7)), data);
    run_device(&Console::new(std::io::sink()), data);
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

/// An MSI sink that checks the MSI-X rules: a vector is only signalled while the sink
/// holds a message for it.
#[derive(Default)]
struct CheckingSink {
    programmed: std::sync::Mutex<Vec<bool>>,
}

impl MsiSink for CheckingSink {
    fn program(&self, vector: u16, message: Option<MsiMessage>) {
        let mut programmed = self.programmed.lock().unwrap_or_else(|e| e.into_inner());
        if programmed.len() <= usize::from(vector) {
            programmed.resize(usize::from(vector) + 1, false);
        }
        programmed[usize::from(vector)] = message.is_some();
    }

    fn signal(&self, vector: u16) {
        let programmed = self.programmed.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            programmed
                .get(usize::from(vector))
                .copied()
                .unwrap_or(false),
            "vector {vector} signalled while masked"
        );
    }
}

/// BAR moves go nowhere: the machine's side is not fuzzed here.
struct NoObserver;

impl BarObserver for NoObserver {
    fn bar_changed(&self, _function: u8, change: BarChange) {
        assert_ne!(change.old, change.new, "a BarChange that moves nothing");
    }
}

/// One access from 8 fuzzer bytes: (selector, offset, width, is_read, value).
fn decode_access(bytes: &[u8]) -> Option<(u8, u32, usize, bool, [u8; 8])> {
    let [selector, o0, o1, o2, width, v0, v1, v2] = *bytes else {
        return None;
    };
    let offset = u32::from_le_bytes([o0, o1, o2, 0]);
    let len = [1usize, 2, 4, 8][usize::from(width & 3)];
    let value = [v0, v1, v2, width, v0, v1, v2, selector];
    Some((selector, offset, len, width & 0x80 != 0, value))
}

fn small_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).expect("64 KiB")
}

/// Configuration space through 0xcf8-0xcff and ECAM: the host bridge and a virtio-pci
/// function on bus 0, arbitrary accesses of any width.
pub fn pci_config(data: &[u8]) {
    let line = Arc::new(CountingLine::default());
    let sink = Arc::new(CheckingSink::default());
    let device = Rng::new(std::io::repeat(7));
    let Ok(transport) = VirtioPciTransport::new(device, small_memory(), sink, line) else {
        return;
    };
    let mut root = PciRoot::new(Arc::new(NoObserver));
    let function: Arc<std::sync::Mutex<dyn PciFunction>> =
        Arc::new(std::sync::Mutex::new(transport));
    let _ = root.add(1, function);
    let root = Arc::new(root);
    let mut io = PciConfigIo::new(root.clone(), ResetControl::default());
    let mut ecam = PciEcam::new(root);
    for bytes in data.chunks(8) {
        let Some((selector, offset, len, is_read, value)) = decode_access(bytes) else {
            break;
        };
        let (device, offset, len): (&mut dyn BusDevice, u64, usize) = match selector & 1 {
            // Bus 0 (two devices) and three empty buses; the CF8 ports, dwords at most.
            0 => (&mut ecam, u64::from(offset & 0x3f_ffff), len),
            _ => (&mut io, u64::from(offset % 8), len.min(4)),
        };
        let mut read = [0u8; 8];
        match is_read {
            true => device.access(offset, Access::Read(&mut read[..len])),
            false => device.access(offset, Access::Write(&value[..len])),
        };
    }
}

/// The MSI-X table, PBA and message control, with notifications between; the sink
/// checks that no masked vector is ever signalled.
pub fn msix_table(data: &[u8]) {
    let layout = MsixLayout {
        vectors: 70,
        table_bar: 0,
        table_offset: 0,
        pba_bar: 0,
        pba_offset: 0x800,
    };
    let Ok(mut msix) = MsixState::new(layout, Arc::new(CheckingSink::default())) else {
        return;
    };
    for bytes in data.chunks(8) {
        let Some((selector, offset, len, is_read, value)) = decode_access(bytes) else {
            break;
        };
        let offset = u64::from(offset & 0x7ff);
        let mut read = [0u8; 8];
        match selector % 5 {
            0 => msix.write_control(u16::from_le_bytes([value[0], value[1]])),
            1 => msix.notify(u16::from_le_bytes([value[0], value[1]]) % 80),
            2 => msix.read_pba(offset % 24, &mut read[..len]),
            _ if is_read => msix.read_table(offset, &mut read[..len]),
            _ => msix.write_table(offset, &value[..len]),
        }
    }
}

/// The virtio-pci transport's BAR (common configuration, ISR, notifications, device
/// configuration, MSI-X) and configuration space, over a block device whose queues may
/// point anywhere in a small guest memory.
pub fn virtio_pci_common(data: &[u8]) {
    let line = Arc::new(CountingLine::default());
    let sink = Arc::new(CheckingSink::default());
    let device = Block::new(vec![0u8; 4096], false, "fuzz");
    let Ok(mut transport) = VirtioPciTransport::new(device, small_memory(), sink, line) else {
        return;
    };
    // Memory decoding and bus mastering on, so the BAR answers and queues are served.
    transport.write_config(0x04, &[0x06, 0x00]);
    for bytes in data.chunks(8) {
        let Some((selector, offset, len, is_read, value)) = decode_access(bytes) else {
            break;
        };
        let mut read = [0u8; 8];
        let register = (offset & 0xff) as u16;
        let bar_offset = u64::from(offset & 0x7fff);
        match (selector % 8, is_read) {
            (0, _) => transport.notify(None),
            (1, true) => transport.read_config(register, &mut read[..len.min(4)]),
            (1, false) => {
                let _ = transport.write_config(register, &value[..len.min(4)]);
            }
            (_, true) => {
                transport.access(bar_offset, Access::Read(&mut read[..len]));
            }
            (_, false) => {
                transport.access(bar_offset, Access::Write(&value[..len]));
            }
        }
    }
}

mod kernel;

pub use kernel::{kernel_image, kernel_image_input};

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
            pci_config(&data);
            msix_table(&data);
            virtio_pci_common(&data);
            kernel_image(&data);
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
        let device = Block::new(vec![9u8; 16 * 512], false, "fuzz");
        let mut queue = driver.device_queue(128);
        assert!(device.process_queue(0, &mut queue, &memory).unwrap());
        assert_eq!(driver.used(&memory, 0), (0, 513));
    }
}
