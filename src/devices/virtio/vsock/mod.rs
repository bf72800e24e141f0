//! virtio-vsock (ID 19) with Firecracker's hybrid host side (`muxer.rs`): stream
//! sockets between the guest and host programs on Unix sockets. Queues: receive (the
//! device fills the driver's buffers with packets), transmit (the driver's packets) and
//! event (TRANSPORT_RESET after a restore).
//!
//! The transport serves one queue at a time, so packets a transmission makes the device
//! owe (a RESPONSE, a RST, a CREDIT_UPDATE) wait until the receive queue is served: the
//! device then makes its epoll fd ready (a kick), and the event loop serves it.

mod connection;
mod muxer;
pub mod packet;
mod state;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{serve_chains, Chain, QueueError, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::ratelimit::RateLimiter;
use crate::sync::LockExt;

pub use connection::{HostStream, BUF_ALLOC};
pub use muxer::{Connector, MuxerCounts, MAX_CONNECTIONS};
pub use packet::{Header, Op, PacketError, HEADER_SIZE, HOST_CID, MAX_PAYLOAD};
pub use state::SavedVsock;

/// virtio's device ID for a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
const QUEUE_SIZES: &[u16] = &[256, 256, 256];
/// `virtio_vsock_event.id` of a transport reset.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// What the device works with under its lock.
struct Inner {
    muxer: muxer::Muxer,
    /// Payload bytes in or out, allocated once.
    buffer: Vec<u8>,
    /// A TRANSPORT_RESET waits for an event buffer.
    reset_event: bool,
    warnings: RateLimiter,
}

/// The device: guest CID `guest_cid`, host side at `uds_path`.
pub struct Vsock {
    guest_cid: u64,
    inner: Mutex<Inner>,
    /// Written when packets wait for the receive queue; in the muxer's epoll.
    kick: EventFd,
    epoll_fd: RawFd,
    dropped: AtomicU64,
    packets_in: AtomicU64,
    packets_out: AtomicU64,
}

/// Why a device cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0}: CIDs 0 to 2 are reserved and CIDs past u32 unused")]
    BadCid(u64),
    #[error("cannot set up the host sockets")]
    Io(#[source] std::io::Error),
}

impl Vsock {
    /// A device for guest `guest_cid` whose host side listens on `listener`, bound at
    /// `uds_path`, and reaches host listeners through `connector`.
    pub fn new(
        guest_cid: u64,
        listener: UnixListener,
        uds_path: PathBuf,
        connector: Connector,
    ) -> Result<Self, VsockError> {
        if guest_cid <= HOST_CID || guest_cid > u64::from(u32::MAX) {
            return Err(VsockError::BadCid(guest_cid));
        }
        let muxer =
            muxer::Muxer::new(guest_cid, listener, uds_path, connector).map_err(VsockError::Io)?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(VsockError::Io)?;
        let epoll_fd = muxer.epoll_fd();
        let event = EpollEvent::new(EventSet::IN, kick.as_raw_fd() as u64);
        muxer
            .epoll()
            .ctl(ControlOperation::Add, kick.as_raw_fd(), event)
            .map_err(VsockError::Io)?;
        Ok(Self {
            guest_cid,
            inner: Mutex::new(Inner {
                muxer,
                buffer: vec![0; MAX_PAYLOAD as usize],
                reset_event: false,
                warnings: RateLimiter::default(),
            }),
            kick,
            epoll_fd,
            dropped: AtomicU64::new(0),
            packets_in: AtomicU64::new(0),
            packets_out: AtomicU64::new(0),
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The fd the event loop watches (readable: call [`Vsock::host_events`]).
    pub fn host_fd(&self) -> RawFd {
        self.epoll_fd
    }

    /// Handles ready host sockets; true if the receive (or event) queue should be
    /// served now.
    pub fn host_events(&self) -> bool {
        let _ = self.kick.read();
        let mut inner = self.inner.locked();
        inner.muxer.host_events() || inner.muxer.has_packet() || inner.reset_event
    }

    /// Malformed packets dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The muxer's counts and its open connections.
    pub fn counts(&self) -> (MuxerCounts, usize) {
        let inner = self.inner.locked();
        (inner.muxer.counts, inner.muxer.connection_count())
    }

    /// One transmitted chain: a header and its payload.
    fn transmit(&self, inner: &mut Inner, chain: Chain<'_>, memory: &GuestMemoryMmap) {
        let Inner {
            muxer,
            buffer,
            warnings,
            ..
        } = inner;
        let result = (|| -> Result<(Header, Op), PacketError> {
            let mut reader = chain.reader(memory).map_err(|_| PacketError::Unreadable)?;
            let held = reader.available_bytes();
            let mut bytes = [0u8; HEADER_SIZE];
            reader
                .read_exact(&mut bytes)
                .map_err(|_| PacketError::ShortHeader(held))?;
            let header = Header::from_bytes(&bytes);
            let op = header.check_from_guest(self.guest_cid, held - HEADER_SIZE)?;
            let payload = &mut buffer[..header.len as usize];
            reader
                .read_exact(payload)
                .map_err(|_| PacketError::Unreadable)?;
            Ok((header, op))
        })();
        match result {
            Ok((header, op)) => {
                self.packets_in.fetch_add(1, Ordering::Relaxed);
                muxer.on_guest_packet(&header, op, &buffer[..header.len as usize]);
            }
            Err(problem) => {
                let count = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                warnings.warn(|| format!("vsock: packet dropped ({count} so far): {problem}"));
            }
        }
    }

    /// Fills receive buffers with the packets that wait; leaves the rest posted.
    fn receive(
        &self,
        inner: &mut Inner,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while inner.muxer.has_packet() {
            let Some(chain) = queue.iter(memory)?.next() else {
                break;
            };
            let head = chain.head_index();
            let Ok(mut writer) = chain.writer(memory) else {
                queue.add_used(memory, head, 0)?;
                used = true;
                continue;
            };
            let room = writer.available_bytes().saturating_sub(HEADER_SIZE);
            if writer.available_bytes() < HEADER_SIZE {
                // A buffer too small for any packet: returned empty.
                self.dropped.fetch_add(1, Ordering::Relaxed);
                queue.add_used(memory, head, 0)?;
                used = true;
                continue;
            }
            let room = room.min(inner.buffer.len());
            let Inner { muxer, buffer, .. } = &mut *inner;
            let Some(header) = muxer.next_packet(&mut buffer[..room]) else {
                // Nothing after all (a read would have blocked): the buffer stays posted.
                queue.go_to_previous_position();
                break;
            };
            let len = header.len as usize;
            let written = writer
                .write_all(&header.to_bytes())
                .and_then(|()| writer.write_all(&buffer[..len]))
                .map_or(0, |()| (HEADER_SIZE + len) as u32);
            queue.add_used(memory, head, written)?;
            self.packets_out.fetch_add(1, Ordering::Relaxed);
            used = true;
        }
        Ok(used)
    }

    /// A TRANSPORT_RESET into the next event buffer, if one is owed.
    fn deliver_event(
        &self,
        inner: &mut Inner,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        if !inner.reset_event {
            return Ok(false);
        }
        let Some(chain) = queue.iter(memory)?.next() else {
            return Ok(false);
        };
        let head = chain.head_index();
        let written = chain
            .writer(memory)
            .ok()
            .and_then(|mut writer| writer.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).ok())
            .map_or(0, |()| 4);
        inner.reset_event = false;
        queue.add_used(memory, head, written)?;
        Ok(true)
    }

    /// A restore: every connection is dropped, and the guest is told (TRANSPORT_RESET).
    fn reset_connections(&self) {
        let mut inner = self.inner.locked();
        inner.muxer.reset_all();
        inner.reset_event = true;
        drop(inner);
        let _ = self.kick.write(1);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let (counts, open) = self.counts();
        vec![
            (
                "packets_from_guest",
                self.packets_in.load(Ordering::Relaxed),
            ),
            ("packets_to_guest", self.packets_out.load(Ordering::Relaxed)),
            ("packets_dropped", self.dropped()),
            ("connections_open", open as u64),
            ("connections_opened", counts.connections_opened),
            ("connections_refused", counts.connections_refused),
            ("resets_sent", counts.resets_sent),
            ("credit_violations", counts.credit_violations),
            ("handshakes_failed", counts.handshakes_failed),
        ]
    }

    fn process_queue(
        &self,
        index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut inner = self.inner.locked();
        match index {
            RX => self.receive(&mut inner, queue, memory),
            TX => {
                let used = serve_chains(queue, memory, |chain| {
                    self.transmit(&mut inner, chain, memory);
                    0
                })?;
                if inner.muxer.has_packet() {
                    let _ = self.kick.write(1);
                }
                Ok(used)
            }
            EVENT => self.deliver_event(&mut inner, queue, memory),
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests;
