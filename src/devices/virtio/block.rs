//! virtio-blk (ID 2) over a host file: read, write, flush (fdatasync before the request
//! completes, so an acknowledged flush survives a host crash) and get-id.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use virtio_queue::{Queue, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use super::{serve_chains, Chain, QueueError, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::sync::LockExt;

/// Sector size of the virtio-blk protocol.
pub const SECTOR: u64 = 512;
const F_RO: u64 = 1 << VIRTIO_BLK_F_RO;
const F_FLUSH: u64 = 1 << VIRTIO_BLK_F_FLUSH;
const T_IN: u32 = VIRTIO_BLK_T_IN;
const T_OUT: u32 = VIRTIO_BLK_T_OUT;
const T_FLUSH: u32 = VIRTIO_BLK_T_FLUSH;
const T_GET_ID: u32 = VIRTIO_BLK_T_GET_ID;
// Status codes are one byte on the wire.
const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Data moves between the file and guest memory in pieces of this size.
const CHUNK: usize = 64 * 1024;
const QUEUE_SIZES: &[u16] = &[128];

/// Where the blocks live.
pub trait DiskBackend: Send {
    /// Size in bytes (a multiple of [`SECTOR`]).
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// A disk image file.
#[derive(Debug)]
pub struct FileDisk {
    file: File,
    size: u64,
}

impl FileDisk {
    /// `file`, whose size the caller has checked to be a multiple of [`SECTOR`].
    pub fn new(file: File, size: u64) -> Self {
        Self { file, size }
    }

    /// The image file, for a final `fdatasync` when the VM stops.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl DiskBackend for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Whatever backend the machine chose.
impl DiskBackend for Box<dyn DiskBackend> {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
}

/// A disk in memory, for tests, fuzzing and replay.
impl DiskBackend for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        self[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `step` over `len` bytes in pieces of at most [`CHUNK`] through `buffer` (the
/// device's own, reused for every request), with each piece's offset; any I/O error is
/// an I/O error status.
fn in_chunks(
    buffer: &mut [u8],
    len: u64,
    mut step: impl FnMut(&mut [u8], u64) -> io::Result<()>,
) -> Result<(), u8> {
    let mut done = 0u64;
    while done < len {
        let piece = &mut buffer[..CHUNK.min((len - done) as usize)];
        step(piece, done).map_err(|_| S_IOERR)?;
        done += piece.len() as u64;
    }
    Ok(())
}

/// The disk and the buffer its requests pass through: what serving a request needs.
struct BlockIo<B> {
    disk: B,
    /// Data passes through here between guest memory and the disk: allocated once, so a
    /// request allocates nothing of the device's own.
    buffer: Vec<u8>,
}

/// The device. Its requests run under its own `io` lock (taken by the transport's queue
/// lock holder only); its configuration (the capacity) is read without it.
pub struct Block<B: DiskBackend> {
    io: Mutex<BlockIo<B>>,
    /// The disk's size, fixed when the device is built.
    size: u64,
    readonly: bool,
    id: [u8; ID_BYTES],
}

impl<B: DiskBackend> Block<B> {
    /// A device over `disk`; `id` is what get-id returns (truncated to 20 bytes).
    pub fn new(disk: B, readonly: bool, id: &str) -> Self {
        let mut bytes = [0u8; ID_BYTES];
        let id = id.as_bytes();
        let len = id.len().min(ID_BYTES);
        bytes[..len].copy_from_slice(&id[..len]);
        Self {
            size: disk.size(),
            io: Mutex::new(BlockIo {
                disk,
                buffer: vec![0; CHUNK],
            }),
            readonly,
            id: bytes,
        }
    }

    /// Runs `look` on the backing disk (waits for a request being served).
    pub fn with_disk<R>(&self, look: impl FnOnce(&B) -> R) -> R {
        look(&self.io.locked().disk)
    }

    /// The byte offset of `len` bytes at `sector`, if the request lies on the disk.
    fn locate(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR)?;
        (len % SECTOR == 0 && offset.checked_add(len)? <= self.size).then_some(offset)
    }

    fn read(&self, io: &mut BlockIo<B>, sector: u64, data: &mut Writer<'_, ()>) -> Result<u32, u8> {
        let len = data.available_bytes() as u64;
        let offset = self.locate(sector, len).ok_or(S_IOERR)?;
        let BlockIo { disk, buffer } = io;
        in_chunks(buffer, len, |piece, done| {
            disk.read_at(piece, offset + done)?;
            data.write_all(piece)
        })?;
        u32::try_from(len).map_err(|_| S_IOERR)
    }

    fn write(
        &self,
        io: &mut BlockIo<B>,
        sector: u64,
        data: &mut Reader<'_, ()>,
    ) -> Result<u32, u8> {
        if self.readonly {
            return Err(S_IOERR);
        }
        let len = data.available_bytes() as u64;
        let offset = self.locate(sector, len).ok_or(S_IOERR)?;
        let BlockIo { disk, buffer } = io;
        in_chunks(buffer, len, |piece, done| {
            data.read_exact(piece)?;
            disk.write_at(piece, offset + done)
        })?;
        Ok(0)
    }

    /// Runs one request; returns its status and the data bytes written to the guest.
    fn run(
        &self,
        io: &mut BlockIo<B>,
        request: &mut Reader<'_, ()>,
        data: &mut Writer<'_, ()>,
    ) -> (u8, u32) {
        let Ok(header) = request.read_obj::<[u8; 16]>() else {
            return (S_IOERR, 0);
        };
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let result = match kind {
            T_IN => self.read(io, sector, data),
            T_OUT => self.write(io, sector, request),
            T_FLUSH => io.disk.flush().map(|()| 0).map_err(|_| S_IOERR),
            T_GET_ID => {
                let len = data.available_bytes().min(ID_BYTES);
                data.write_all(&self.id[..len])
                    .map(|()| len as u32)
                    .map_err(|_| S_IOERR)
            }
            _ => Err(S_UNSUPP),
        };
        match result {
            Ok(written) => (S_OK, written),
            Err(status) => (status, 0),
        }
    }

    /// Serves one chain: header, data, and a status byte in the last writable byte.
    /// Returns the bytes written into the chain (0 when it has no room for a status).
    fn execute(&self, io: &mut BlockIo<B>, chain: Chain<'_>, memory: &GuestMemoryMmap) -> u32 {
        let (Ok(mut request), Ok(mut data)) = (chain.clone().reader(memory), chain.writer(memory))
        else {
            return 0;
        };
        let Some(status_at) = data.available_bytes().checked_sub(1) else {
            return 0;
        };
        let Ok(mut status) = data.split_at(status_at) else {
            return 0;
        };
        let (code, written) = self.run(io, &mut request, &mut data);
        match status.write_obj(code) {
            Ok(()) => written + 1,
            Err(_) => 0,
        }
    }
}

impl<B: DiskBackend> VirtioDevice for Block<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let readonly = if self.readonly { F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | F_FLUSH | readonly
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config begins with the capacity in sectors.
        let capacity = (self.size / SECTOR).to_le_bytes();
        super::read_config_bytes(&capacity, offset, data);
    }

    fn process_queue(
        &self,
        _index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut io = self.io.locked();
        serve_chains(queue, memory, |chain| self.execute(&mut io, chain, memory))
    }
}
