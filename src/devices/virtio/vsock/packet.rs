//! virtio-vsock packet headers (virtio 1.2, 5.10.6): the 44-byte little-endian
//! `virtio_vsock_hdr` each packet starts with, and the checks a header from the driver
//! must pass before the device acts on it.

use thiserror::Error;

/// Bytes of a header.
pub const HEADER_SIZE: usize = 44;
/// The host's CID: the address the guest connects to.
pub const HOST_CID: u64 = 2;
/// The only socket type: a stream.
pub const TYPE_STREAM: u16 = 1;
/// The largest payload the device takes or gives in one packet (Firecracker's and
/// Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// SHUTDOWN flags: the sender will receive no more, send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// A packet's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    fn from_wire(value: u16) -> Option<Self> {
        Some(match value {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A header, fields as on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// Why a packet from the driver was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    #[error("header of {0} bytes, {HEADER_SIZE} needed")]
    ShortHeader(usize),
    #[error("socket type {0} (only streams, 1)")]
    BadType(u16),
    #[error("unknown operation {0}")]
    BadOp(u16),
    #[error("payload of {0} bytes, more than {MAX_PAYLOAD}")]
    TooLong(u32),
    #[error("header says {len} payload bytes, the buffers hold {held}")]
    ShortPayload { len: u32, held: usize },
    #[error("payload on a {0:?} packet")]
    UnexpectedPayload(Op),
    #[error("source CID {0}, not the guest's")]
    WrongSource(u64),
    #[error("destination CID {0}, not the host's")]
    WrongDestination(u64),
    #[error("descriptor chain unreadable")]
    Unreadable,
}

fn u16_at(bytes: &[u8; HEADER_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8; HEADER_SIZE], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8; HEADER_SIZE], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

impl Header {
    /// A header as the device sends it: from the host to `guest_cid`.
    pub fn to_guest(guest_cid: u64, src_port: u32, dst_port: u32, op: Op) -> Self {
        Self {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port,
            dst_port,
            kind: TYPE_STREAM,
            op: op as u16,
            ..Self::default()
        }
    }

    pub fn from_bytes(bytes: &[u8; HEADER_SIZE]) -> Self {
        Self {
            src_cid: u64_at(bytes, 0),
            dst_cid: u64_at(bytes, 8),
            src_port: u32_at(bytes, 16),
            dst_port: u32_at(bytes, 20),
            len: u32_at(bytes, 24),
            kind: u16_at(bytes, 28),
            op: u16_at(bytes, 30),
            flags: u32_at(bytes, 32),
            buf_alloc: u32_at(bytes, 36),
            fwd_cnt: u32_at(bytes, 40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut bytes = [0u8; HEADER_SIZE];
        bytes[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.len.to_le_bytes());
        bytes[28..30].copy_from_slice(&self.kind.to_le_bytes());
        bytes[30..32].copy_from_slice(&self.op.to_le_bytes());
        bytes[32..36].copy_from_slice(&self.flags.to_le_bytes());
        bytes[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        bytes
    }

    /// Checks a header the driver sent, whose chain holds `held` bytes after it; returns
    /// its operation.
    pub fn check_from_guest(&self, guest_cid: u64, held: usize) -> Result<Op, PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::WrongSource(self.src_cid));
        }
        if self.dst_cid != HOST_CID {
            return Err(PacketError::WrongDestination(self.dst_cid));
        }
        if self.kind != TYPE_STREAM {
            return Err(PacketError::BadType(self.kind));
        }
        let op = Op::from_wire(self.op).ok_or(PacketError::BadOp(self.op))?;
        if self.len > MAX_PAYLOAD {
            return Err(PacketError::TooLong(self.len));
        }
        if op != Op::Rw && self.len != 0 {
            return Err(PacketError::UnexpectedPayload(op));
        }
        if (self.len as usize) > held {
            return Err(PacketError::ShortPayload {
                len: self.len,
                held,
            });
        }
        Ok(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: u64 = 3;

    fn from_guest(op: u16, len: u32) -> Header {
        Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn a_header_round_trips_through_its_wire_layout() {
        let header = from_guest(Op::Rw as u16, 12);
        let bytes = header.to_bytes();
        assert_eq!(&bytes[0..8], &GUEST.to_le_bytes());
        assert_eq!(&bytes[24..28], &12u32.to_le_bytes());
        assert_eq!(&bytes[30..32], &5u16.to_le_bytes());
        assert_eq!(&bytes[40..44], &7u32.to_le_bytes());
        assert_eq!(Header::from_bytes(&bytes), header);
    }

    #[test]
    fn good_packets_pass() {
        assert_eq!(from_guest(5, 12).check_from_guest(GUEST, 12), Ok(Op::Rw));
        assert_eq!(from_guest(1, 0).check_from_guest(GUEST, 0), Ok(Op::Request));
    }

    #[test]
    fn malformed_packets_are_refused_with_their_reason() {
        let check = |header: Header, held| header.check_from_guest(GUEST, held);
        let mut wrong_cid = from_guest(5, 0);
        wrong_cid.src_cid = 9;
        assert_eq!(check(wrong_cid, 0), Err(PacketError::WrongSource(9)));
        let mut wrong_dst = from_guest(5, 0);
        wrong_dst.dst_cid = GUEST;
        assert_eq!(
            check(wrong_dst, 0),
            Err(PacketError::WrongDestination(GUEST))
        );
        let mut dgram = from_guest(5, 0);
        dgram.kind = 2;
        assert_eq!(check(dgram, 0), Err(PacketError::BadType(2)));
        assert_eq!(check(from_guest(0, 0), 0), Err(PacketError::BadOp(0)));
        assert_eq!(check(from_guest(8, 0), 0), Err(PacketError::BadOp(8)));
        assert_eq!(
            check(from_guest(5, MAX_PAYLOAD + 1), usize::MAX),
            Err(PacketError::TooLong(MAX_PAYLOAD + 1))
        );
        assert_eq!(
            check(from_guest(5, 100), 99),
            Err(PacketError::ShortPayload { len: 100, held: 99 })
        );
        assert_eq!(
            check(from_guest(1, 4), 4),
            Err(PacketError::UnexpectedPayload(Op::Request))
        );
    }
}
