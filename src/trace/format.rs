//! The exit trace's binary format.
//!
//! ```text
//! header   "HUSHTRC\0"  version:u16  header_len:u16  machine (see MachineDescription)
//! record   tag:u8 then its fields, little-endian:
//!   1 exit          vcpu:u8 kind:u8 addr:u64 size:u8 len:u32 data[len]
//!   2 posted write  space:u8 addr:u64 len:u8 data[len]
//!   3 clock         nanos:u64          (a reading of the RTC's clock)
//!   4 rtc tick                         (the event loop's RTC timer fired)
//!   5 doorbell      slot:u8 queue:u32  (an ioeventfd doorbell served; u32::MAX: any queue)
//!   6 input         sink:u8 len:u32 data[len]   (host input: 0 COM1, 1 virtio-console)
//! machine  memory:u64 cpus:u8 flags:u8 (1 rng, 2 console, 4 virtio on PCI,
//!          8 VIRTIO_RING_F_EVENT_IDX offered)
//!          disk_bytes:u64 clock_start:u64, then (optional) the device list
//! ```
//! An exit's data is what the guest wrote, or what hushvm answered to a read; `len` is
//! `size * count`.

use std::io::{self, Write};

use thiserror::Error;

use super::device_list::TracedVirtio;
use crate::bus::AddressSpace;

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"HUSHTRC\0";
/// This format.
pub const VERSION: u16 = 1;
/// The longest data an exit can carry (a page of string I/O).
pub const MAX_DATA: u32 = 64 * 1024;

/// What a replay must rebuild: the devices a trace's machine had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineDescription {
    pub memory: u64,
    pub cpus: u8,
    pub rng: bool,
    pub console: bool,
    /// The virtio devices sat on PCI (virtio-pci) rather than on virtio-mmio. Version-1
    /// traces made before PCI existed have the bit clear.
    pub pci: bool,
    /// The virtio devices offered VIRTIO_RING_F_EVENT_IDX (traces made before it existed
    /// have the bit clear, and their devices did not).
    pub event_idx: bool,
    /// Size of the virtio-blk disk, 0 for none.
    pub disk_bytes: u64,
    /// The RTC's clock when the machine was built (ns since the epoch).
    pub clock_start: u64,
    /// The virtio devices, when the flags above cannot say (several disks, several
    /// transports): the header's optional device list (`trace/device_list.rs`). Empty: the
    /// flags describe them.
    pub virtio: Vec<TracedVirtio>,
}

const DESCRIPTION_LEN: u16 = 8 + 1 + 1 + 8 + 8;

/// Exit kinds in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitDirection {
    PioIn,
    PioOut,
    MmioRead,
    MmioWrite,
}

impl ExitDirection {
    fn code(self) -> u8 {
        match self {
            ExitDirection::PioIn => 0,
            ExitDirection::PioOut => 1,
            ExitDirection::MmioRead => 2,
            ExitDirection::MmioWrite => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => ExitDirection::PioIn,
            1 => ExitDirection::PioOut,
            2 => ExitDirection::MmioRead,
            3 => ExitDirection::MmioWrite,
            _ => return None,
        })
    }

    /// The direction of an access in `space`.
    pub fn of(space: AddressSpace, is_write: bool) -> Self {
        match (space, is_write) {
            (AddressSpace::Pio, false) => ExitDirection::PioIn,
            (AddressSpace::Pio, true) => ExitDirection::PioOut,
            (AddressSpace::Mmio, false) => ExitDirection::MmioRead,
            (AddressSpace::Mmio, true) => ExitDirection::MmioWrite,
        }
    }

    /// True for a read.
    pub fn is_read(self) -> bool {
        matches!(self, ExitDirection::PioIn | ExitDirection::MmioRead)
    }

    /// Which bus.
    pub fn space(self) -> AddressSpace {
        match self {
            ExitDirection::PioIn | ExitDirection::PioOut => AddressSpace::Pio,
            _ => AddressSpace::Mmio,
        }
    }
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Exit {
        vcpu: u8,
        direction: ExitDirection,
        addr: u64,
        size: u8,
        data: Vec<u8>,
    },
    PostedWrite {
        space: AddressSpace,
        addr: u64,
        data: Vec<u8>,
    },
    Clock(u64),
    RtcTick,
    Doorbell {
        slot: u8,
        queue: Option<u32>,
    },
    Input {
        sink: u8,
        data: Vec<u8>,
    },
}

/// A trace could not be read.
#[derive(Debug, Error)]
pub enum TraceError {
    #[error("cannot read the trace")]
    Io(#[from] io::Error),
    #[error("not a hushvm trace (bad magic)")]
    BadMagic,
    #[error("trace format version {0}; this hushvm reads version {VERSION}")]
    Version(u16),
    #[error("corrupt trace: {what} at byte {offset}")]
    Corrupt { what: &'static str, offset: u64 },
    #[error("truncated trace: the file ends inside a record at byte {0}")]
    Truncated(u64),
}

/// Writes records.
#[derive(Debug)]
pub struct TraceWriter<W: Write> {
    out: W,
}

impl<W: Write> TraceWriter<W> {
    /// Writes the header.
    pub fn new(mut out: W, machine: &MachineDescription) -> io::Result<Self> {
        let devices = super::device_list::encode(&machine.virtio);
        let header_len = u16::try_from(devices.len())
            .ok()
            .and_then(|extra| DESCRIPTION_LEN.checked_add(extra))
            .ok_or_else(|| io::Error::other("the device list does not fit a trace header"))?;
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&header_len.to_le_bytes())?;
        out.write_all(&machine.memory.to_le_bytes())?;
        out.write_all(&[
            machine.cpus,
            u8::from(machine.rng)
                | (u8::from(machine.console) << 1)
                | (u8::from(machine.pci) << 2)
                | (u8::from(machine.event_idx) << 3),
        ])?;
        out.write_all(&machine.disk_bytes.to_le_bytes())?;
        out.write_all(&machine.clock_start.to_le_bytes())?;
        out.write_all(&devices)?;
        Ok(Self { out })
    }

    /// Appends `record`.
    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        let out = &mut self.out;
        match record {
            Record::Exit {
                vcpu,
                direction,
                addr,
                size,
                data,
            } => {
                out.write_all(&[1, *vcpu, direction.code()])?;
                out.write_all(&addr.to_le_bytes())?;
                out.write_all(&[*size])?;
                out.write_all(&(data.len() as u32).to_le_bytes())?;
                out.write_all(data)
            }
            Record::PostedWrite { space, addr, data } => {
                out.write_all(&[2, u8::from(*space == AddressSpace::Pio)])?;
                out.write_all(&addr.to_le_bytes())?;
                out.write_all(&[data.len() as u8])?;
                out.write_all(data)
            }
            Record::Clock(nanos) => {
                out.write_all(&[3])?;
                out.write_all(&nanos.to_le_bytes())
            }
            Record::RtcTick => out.write_all(&[4]),
            Record::Doorbell { slot, queue } => {
                out.write_all(&[5, *slot])?;
                out.write_all(&queue.unwrap_or(u32::MAX).to_le_bytes())
            }
            Record::Input { sink, data } => {
                out.write_all(&[6, *sink])?;
                out.write_all(&(data.len() as u32).to_le_bytes())?;
                out.write_all(data)
            }
        }
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads records from a trace held in memory.
#[derive(Debug)]
pub struct TraceReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> TraceReader<'a> {
    /// Checks the header; returns the reader and the machine it describes.
    pub fn new(bytes: &'a [u8]) -> Result<(Self, MachineDescription), TraceError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(TraceError::BadMagic);
        }
        let mut reader = Self {
            bytes,
            at: MAGIC.len(),
        };
        let version = reader.u16()?;
        if version != VERSION {
            return Err(TraceError::Version(version));
        }
        let header_len = reader.u16()?;
        if header_len < DESCRIPTION_LEN {
            return Err(reader.corrupt("header length"));
        }
        let memory = reader.u64()?;
        let cpus = reader.u8()?;
        let flags = reader.u8()?;
        let disk_bytes = reader.u64()?;
        let clock_start = reader.u64()?;
        let extra = reader.take(usize::from(header_len - DESCRIPTION_LEN))?;
        let virtio = super::device_list::decode(extra).ok_or(TraceError::Corrupt {
            what: "device list",
            offset: (MAGIC.len() + 4) as u64 + u64::from(DESCRIPTION_LEN),
        })?;
        let machine = MachineDescription {
            memory,
            cpus,
            rng: flags & 1 != 0,
            console: flags & 2 != 0,
            pci: flags & 4 != 0,
            event_idx: flags & 8 != 0,
            disk_bytes,
            clock_start,
            virtio,
        };
        Ok((reader, machine))
    }

    fn corrupt(&self, what: &'static str) -> TraceError {
        TraceError::Corrupt {
            what,
            offset: self.at as u64,
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], TraceError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(TraceError::Truncated(self.at as u64))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, TraceError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, TraceError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, TraceError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, TraceError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn data(&mut self, len: u32) -> Result<Vec<u8>, TraceError> {
        if len > MAX_DATA {
            return Err(self.corrupt("data length"));
        }
        Ok(self.take(len as usize)?.to_vec())
    }

    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.at as u64
    }

    /// The next record, `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<Record>, TraceError> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let record = match self.u8()? {
            1 => {
                let vcpu = self.u8()?;
                let direction = ExitDirection::from_code(self.u8()?)
                    .ok_or_else(|| self.corrupt("exit kind"))?;
                let addr = self.u64()?;
                let size = self.u8()?;
                let len = self.u32()?;
                if size == 0 || len % u32::from(size) != 0 {
                    return Err(self.corrupt("exit size"));
                }
                Record::Exit {
                    vcpu,
                    direction,
                    addr,
                    size,
                    data: self.data(len)?,
                }
            }
            2 => {
                let space = if self.u8()? != 0 {
                    AddressSpace::Pio
                } else {
                    AddressSpace::Mmio
                };
                let addr = self.u64()?;
                let len = self.u8()?;
                if len > 8 {
                    return Err(self.corrupt("posted write length"));
                }
                Record::PostedWrite {
                    space,
                    addr,
                    data: self.data(u32::from(len))?,
                }
            }
            3 => Record::Clock(self.u64()?),
            4 => Record::RtcTick,
            5 => {
                let slot = self.u8()?;
                let queue = Some(self.u32()?).filter(|q| *q != u32::MAX);
                Record::Doorbell { slot, queue }
            }
            6 => {
                let sink = self.u8()?;
                let len = self.u32()?;
                Record::Input {
                    sink,
                    data: self.data(len)?,
                }
            }
            _ => return Err(self.corrupt("record tag")),
        };
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MachineDescription {
        MachineDescription {
            memory: 64 << 20,
            cpus: 1,
            rng: true,
            console: false,
            pci: false,
            event_idx: false,
            disk_bytes: 0,
            clock_start: 7,
            virtio: Vec::new(),
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::PostedWrite {
                space: AddressSpace::Pio,
                addr: 0x70,
                data: vec![0x40],
            },
            Record::Exit {
                vcpu: 0,
                direction: ExitDirection::PioIn,
                addr: 0x71,
                size: 1,
                data: vec![0xaa],
            },
            Record::Exit {
                vcpu: 1,
                direction: ExitDirection::MmioWrite,
                addr: 0xc000_1050,
                size: 4,
                data: vec![0; 4],
            },
            Record::Exit {
                vcpu: 0,
                direction: ExitDirection::PioOut,
                addr: 0x1f0,
                size: 2,
                data: vec![1, 2, 3, 4],
            },
            Record::Clock(123),
            Record::RtcTick,
            Record::Doorbell {
                slot: 1,
                queue: None,
            },
            Record::Doorbell {
                slot: 0,
                queue: Some(2),
            },
            Record::Input {
                sink: 0,
                data: b"hi".to_vec(),
            },
        ]
    }

    fn encode(records: &[Record]) -> Vec<u8> {
        let mut writer = TraceWriter::new(Vec::new(), &machine()).unwrap();
        for record in records {
            writer.write(record).unwrap();
        }
        writer.finish().unwrap()
    }

    #[test]
    fn records_round_trip() {
        let bytes = encode(&sample());
        let (mut reader, description) = TraceReader::new(&bytes).unwrap();
        assert_eq!(description, machine());
        let mut read = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            read.push(record);
        }
        assert_eq!(read, sample());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let bytes = encode(&sample());
        assert!(matches!(
            TraceReader::new(b"nope"),
            Err(TraceError::BadMagic)
        ));
        let mut wrong_version = bytes.clone();
        wrong_version[8] = 9;
        assert!(matches!(
            TraceReader::new(&wrong_version),
            Err(TraceError::Version(9))
        ));
        for cut in 0..bytes.len() {
            let Ok((mut reader, _)) = TraceReader::new(&bytes[..cut]) else {
                continue;
            };
            let mut result = reader.next_record();
            while let Ok(Some(_)) = result {
                result = reader.next_record();
            }
            if cut < bytes.len() {
                assert!(
                    result.is_err() || reader.offset() == cut as u64,
                    "cut at {cut}"
                );
            }
        }
        let mut bad_tag = encode(&[]);
        bad_tag.push(99);
        let (mut reader, _) = TraceReader::new(&bad_tag).unwrap();
        assert!(matches!(
            reader.next_record(),
            Err(TraceError::Corrupt {
                what: "record tag",
                ..
            })
        ));
        let mut huge = encode(&[]);
        huge.extend_from_slice(&[6, 0, 0xff, 0xff, 0xff, 0xff]);
        let (mut reader, _) = TraceReader::new(&huge).unwrap();
        assert!(matches!(
            reader.next_record(),
            Err(TraceError::Corrupt {
                what: "data length",
                ..
            })
        ));
    }
}
