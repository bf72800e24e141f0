//! One vsock connection between a guest port and a host stream: its state, both
//! directions' credit (virtio 1.2, 5.10.6.3) and the bytes the host has not taken yet.
//! Everything here is non-blocking: a host stream that would block leaves bytes buffered
//! (bounded by the credit the device gave) and readiness resumes the work.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::{Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Bytes from the guest the device buffers per connection while the host stream is
/// slow: the `buf_alloc` it advertises (Firecracker's `CONN_TX_BUF_SIZE`).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Forwarded bytes not yet announced to the guest after which the device sends a
/// CREDIT_UPDATE unasked: the guest stalls if it waits for more than it was told.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 2;

/// A host stream: what a connection reads and writes, non-blocking.
pub trait HostStream: Read + Write + Send {
    /// The host gets no more bytes from this side (the guest shut down sending).
    fn shutdown_write(&self);
}

impl HostStream for UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The host connected; the guest has been sent a REQUEST and not answered yet.
    HostInit,
    /// Both sides may send.
    Established,
}

/// What the device must do with a connection after a guest packet or host event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Send the guest a RST and forget the connection.
    Reset,
    /// Forget it: the guest already knows (it sent a RST, or took the final one).
    Forget,
}

/// One connection: `local_port` is the host side's port, `peer_port` the guest's.
pub struct Connection<S> {
    pub local_port: u32,
    pub peer_port: u32,
    pub state: State,
    stream: S,
    /// From the guest, not yet taken by the host stream (at most [`BUF_ALLOC`]).
    to_host: VecDeque<u8>,
    /// Bytes at the front of `to_host` that are the device's (the handshake's `OK`
    /// line), not the guest's: they do not count in `fwd_cnt`.
    uncounted: usize,
    /// Bytes the host stream took (announced to the guest as `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    announced_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest, and the guest's last word on its buffer.
    sent: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The host stream may have bytes (edge-triggered readiness says so until a read
    /// would block).
    pub readable: bool,
    /// Control packets owed to the guest.
    owe_response: bool,
    owe_request: bool,
    owe_credit_update: bool,
    /// A CREDIT_REQUEST went out and no credit came back yet.
    credit_requested: bool,
    /// SHUTDOWN flags not yet sent to the guest.
    owe_shutdown: u32,
    /// What the guest said it will no longer do (SHUTDOWN flags).
    guest_shutdown: u32,
    /// The host stream ended (read 0): nothing more goes to the guest.
    host_eof: bool,
    host_write_closed: bool,
}

impl<S: HostStream> Connection<S> {
    /// The guest asked for `local_port`, and the host listener there took `stream`.
    pub fn from_guest(stream: S, local_port: u32, request: &Header) -> Self {
        let mut connection = Self::new(stream, local_port, request.src_port, State::Established);
        connection.owe_response = true;
        connection.peer_credit(request);
        connection
    }

    /// A host program connected (`CONNECT <peer_port>`); the guest is to be asked.
    pub fn from_host(stream: S, local_port: u32, peer_port: u32) -> Self {
        let mut connection = Self::new(stream, local_port, peer_port, State::HostInit);
        connection.owe_request = true;
        connection
    }

    fn new(stream: S, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            local_port,
            peer_port,
            state,
            stream,
            to_host: VecDeque::new(),
            uncounted: 0,
            fwd_cnt: Wrapping(0),
            announced_fwd_cnt: Wrapping(0),
            sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            readable: true,
            owe_response: false,
            owe_request: false,
            owe_credit_update: false,
            credit_requested: false,
            owe_shutdown: 0,
            guest_shutdown: 0,
            host_eof: false,
            host_write_closed: false,
        }
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The guest's word on its buffer. A CREDIT_REQUEST is asked again only once the
    /// credit moved: a guest answering each one with the same credit would otherwise
    /// ping-pong with the device forever.
    fn peer_credit(&mut self, header: &Header) {
        let fwd_cnt = Wrapping(header.fwd_cnt);
        if header.buf_alloc != self.peer_buf_alloc || fwd_cnt != self.peer_fwd_cnt {
            self.credit_requested = false;
        }
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Bytes the guest can take now.
    pub fn credit(&self) -> u32 {
        let in_flight = (self.sent - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Takes a packet the guest sent on this connection (already checked by the
    /// packet layer) with its payload.
    pub fn on_guest_packet(&mut self, header: &Header, op: Op, payload: &[u8]) -> Verdict {
        self.peer_credit(header);
        match (self.state, op) {
            (_, Op::Rst) => Verdict::Forget,
            (State::HostInit, Op::Response) => {
                self.state = State::Established;
                // Firecracker's handshake: the host learns its port once the guest took it.
                let ok = format!("OK {}\n", self.local_port);
                self.to_host.extend(ok.as_bytes());
                self.uncounted = ok.len();
                self.flush_to_host()
            }
            (State::HostInit, _) | (State::Established, Op::Request | Op::Response) => {
                Verdict::Reset
            }
            (State::Established, Op::Rw) => self.take_from_guest(payload),
            (State::Established, Op::CreditRequest) => {
                self.owe_credit_update = true;
                Verdict::Keep
            }
            (State::Established, Op::CreditUpdate) => Verdict::Keep,
            (State::Established, Op::Shutdown) => {
                self.guest_shutdown |= header.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.flush_to_host()
            }
        }
    }

    /// Guest data for the host: beyond the credit the device gave, the guest broke the
    /// protocol and the connection is reset.
    fn take_from_guest(&mut self, payload: &[u8]) -> Verdict {
        if self.guest_shutdown & SHUTDOWN_SEND != 0
            || self.to_host.len() - self.uncounted + payload.len() > BUF_ALLOC as usize
        {
            return Verdict::Reset;
        }
        self.to_host.extend(payload);
        self.flush_to_host()
    }

    /// Writes what the host stream takes; when the guest shut down sending and all is
    /// written, shuts the stream's write side; when the guest shut down both ways, the
    /// connection ends (the device owes the guest a RST).
    pub fn flush_to_host(&mut self) -> Verdict {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Verdict::Reset,
                Ok(written) => {
                    self.to_host.drain(..written);
                    let handshake = written.min(self.uncounted);
                    self.uncounted -= handshake;
                    self.fwd_cnt += (written - handshake) as u32;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Reset,
            }
        }
        if (self.fwd_cnt - self.announced_fwd_cnt).0 >= CREDIT_UPDATE_THRESHOLD {
            self.owe_credit_update = true;
        }
        if !self.to_host.is_empty() {
            return Verdict::Keep;
        }
        if self.guest_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_closed {
            self.stream.shutdown_write();
            self.host_write_closed = true;
        }
        match self.guest_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            true => Verdict::Reset,
            false => Verdict::Keep,
        }
    }

    /// Whether the connection has a packet for the guest now.
    pub fn has_packet(&self) -> bool {
        self.owe_request
            || self.owe_response
            || self.owe_credit_update
            || self.owe_shutdown != 0
            || (self.wants_to_read() && (self.credit() > 0 || !self.credit_requested))
    }

    fn wants_to_read(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && self.guest_shutdown & SHUTDOWN_RCV == 0
    }

    /// The next packet for the guest, its payload (if any) read into `payload` (at most
    /// its length). `None` if there is none (a read that would block clears
    /// `readable`).
    pub fn next_packet(&mut self, guest_cid: u64, payload: &mut [u8]) -> Option<Header> {
        let op = if std::mem::take(&mut self.owe_request) {
            Op::Request
        } else if std::mem::take(&mut self.owe_response) {
            Op::Response
        } else if self.owe_shutdown != 0 {
            Op::Shutdown
        } else if std::mem::take(&mut self.owe_credit_update) {
            Op::CreditUpdate
        } else if self.wants_to_read() {
            return self.read_from_host(guest_cid, payload);
        } else {
            return None;
        };
        let mut header = self.header(guest_cid, op);
        if op == Op::Shutdown {
            header.flags = std::mem::take(&mut self.owe_shutdown);
        }
        Some(header)
    }

    fn read_from_host(&mut self, guest_cid: u64, payload: &mut [u8]) -> Option<Header> {
        let credit = self.credit() as usize;
        if credit == 0 {
            if !self.credit_requested {
                self.credit_requested = true;
                return Some(self.header(guest_cid, Op::CreditRequest));
            }
            return None;
        }
        let room = payload.len().min(credit);
        loop {
            match self.stream.read(&mut payload[..room]) {
                Ok(0) => {
                    // The host sends no more: the guest reads to the end, and may still
                    // send (a half-closed stream).
                    self.host_eof = true;
                    let mut header = self.header(guest_cid, Op::Shutdown);
                    header.flags = SHUTDOWN_SEND;
                    return Some(header);
                }
                Ok(read) => {
                    self.sent += read as u32;
                    let mut header = self.header(guest_cid, Op::Rw);
                    header.len = read as u32;
                    return Some(header);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return None;
                }
                Err(_) => {
                    self.host_eof = true;
                    return Some(self.header(guest_cid, Op::Rst));
                }
            }
        }
    }

    /// A header from this connection to the guest, with the device's credit.
    pub fn header(&mut self, guest_cid: u64, op: Op) -> Header {
        let mut header = Header::to_guest(guest_cid, self.local_port, self.peer_port, op);
        header.buf_alloc = BUF_ALLOC;
        header.fwd_cnt = self.fwd_cnt.0;
        self.announced_fwd_cnt = self.fwd_cnt;
        header
    }
}

/// Reads a host program's `CONNECT <port>\n` from `stream` into `line`; `Ok(Some(port))`
/// once it is whole, `Ok(None)` while more is to come, an error for anything else.
pub fn read_connect(stream: &mut impl Read, line: &mut Vec<u8>) -> io::Result<Option<u32>> {
    const LONGEST: usize = "CONNECT 4294967295\n".len();
    let bad = || io::Error::new(ErrorKind::InvalidData, "expected CONNECT <port>");
    let mut byte = [0u8; 1];
    // One byte at a time: bytes after the newline are the connection's, not ours.
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if byte[0] != b'\n' {
            line.push(byte[0]);
            if line.len() >= LONGEST {
                return Err(bad());
            }
            continue;
        }
        let text = std::str::from_utf8(line).map_err(|_| bad())?;
        let port = text
            .trim_end_matches('\r')
            .strip_prefix("CONNECT ")
            .and_then(|port| port.trim().parse().ok())
            .ok_or_else(bad)?;
        return Ok(Some(port));
    }
}
