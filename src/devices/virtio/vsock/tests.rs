//! The vsock device against hand-built queues and real Unix sockets: both handshakes,
//! data and credit each way, shutdowns, resets, and malformed packets.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::packet::{SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM};
use super::state::SavedVsock;
use super::*;
use crate::devices::virtio::driver::DriverQueue;
use crate::devices::virtio::state::DeviceState;

const GUEST_CID: u64 = 3;
const QUEUE_BASE: u64 = 0x10_0000;
const DATA: u64 = 0x40_0000;
const MEMORY: usize = 32 << 20;

/// A driver for the device: its three queues and its buffers.
struct Guest {
    memory: GuestMemoryMmap,
    device: Vsock,
    driver: Vec<DriverQueue>,
    queues: Vec<Queue>,
    /// Where each posted receive buffer is, by head.
    rx_buffers: HashMap<u16, u64>,
    rx_seen: u16,
    next_buffer: u64,
    uds: PathBuf,
}

/// A connector like the machine's, with std's (blocking) connect: enough for tests.
fn connector() -> Connector {
    Box::new(|path| {
        let stream = UnixStream::connect(path)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    })
}

fn uds_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hushvm-vsock-{}-{name}", std::process::id()))
}

impl Guest {
    fn new(name: &str) -> Self {
        let uds = uds_path(name);
        let _ = std::fs::remove_file(&uds);
        let listener = UnixListener::bind(&uds).unwrap();
        let device = Vsock::new(GUEST_CID, listener, uds.clone(), connector()).unwrap();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap();
        let driver: Vec<DriverQueue> = (0..3)
            .map(|q| DriverQueue::new(QUEUE_BASE + q * 0x1_0000, 256))
            .collect();
        let queues = driver.iter().map(|d| d.device_queue(256)).collect();
        Self {
            memory,
            device,
            driver,
            queues,
            rx_buffers: HashMap::new(),
            rx_seen: 0,
            next_buffer: DATA,
            uds,
        }
    }

    fn buffer(&mut self, len: u32) -> u64 {
        if self.next_buffer + u64::from(len) > MEMORY as u64 {
            self.next_buffer = DATA;
        }
        let at = self.next_buffer;
        self.next_buffer += u64::from(len).div_ceil(64) * 64;
        at
    }

    fn serve(&mut self, queue: usize) -> bool {
        self.device
            .process_queue(queue, &mut self.queues[queue], &self.memory)
            .unwrap()
    }

    fn header(op: Op, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            kind: TYPE_STREAM,
            op: op as u16,
            buf_alloc: 64 * 1024,
            ..Header::default()
        }
    }

    /// Transmits raw bytes as one chain.
    fn send_bytes(&mut self, bytes: &[u8]) {
        let at = self.buffer(bytes.len() as u32);
        self.memory.write_slice(bytes, GuestAddress(at)).unwrap();
        self.driver[TX].add_chain(&self.memory, &[(at, bytes.len() as u32, false)]);
        self.serve(TX);
    }

    fn send(&mut self, mut header: Header, payload: &[u8]) {
        header.len = payload.len() as u32;
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_bytes(&bytes);
    }

    fn post_rx(&mut self, count: usize, size: u32) {
        for _ in 0..count {
            let at = self.buffer(size);
            let head = self.driver[RX].add_chain(&self.memory, &[(at, size, true)]);
            self.rx_buffers.insert(head, at);
        }
    }

    /// Serves the receive queue (after the host's news) and returns what arrived.
    fn receive(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.device.host_events();
        self.serve(RX);
        let mut packets = Vec::new();
        while self.rx_seen != self.driver[RX].used_idx(&self.memory) {
            let (head, len) = self.driver[RX].used(&self.memory, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let at = self.rx_buffers.remove(&(head as u16)).unwrap();
            let mut bytes = vec![0u8; len as usize];
            self.memory
                .read_slice(&mut bytes, GuestAddress(at))
                .unwrap();
            let mut raw = [0u8; HEADER_SIZE];
            raw.copy_from_slice(&bytes[..HEADER_SIZE]);
            let header = Header::from_bytes(&raw);
            assert_eq!(header.len as usize, bytes.len() - HEADER_SIZE);
            packets.push((header, bytes[HEADER_SIZE..].to_vec()));
        }
        packets
    }

    /// Receives until a packet comes (host sockets are asynchronous), at most a second.
    fn receive_some(&mut self) -> Vec<(Header, Vec<u8>)> {
        let start = Instant::now();
        loop {
            let packets = self.receive();
            if !packets.is_empty() || start.elapsed() > Duration::from_secs(1) {
                return packets;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn host_listener(&self, port: u32) -> UnixListener {
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{port}"));
        let _ = std::fs::remove_file(&path);
        UnixListener::bind(path).unwrap()
    }

    /// The guest connects from `guest_port` to host `port`, where `listener` listens.
    fn connect_out(&mut self, listener: &UnixListener, guest_port: u32, port: u32) -> UnixStream {
        self.send(Self::header(Op::Request, guest_port, port), &[]);
        let (host, _) = listener.accept().unwrap();
        let packets = self.receive_some();
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].0.op, Op::Response as u16);
        assert_eq!(packets[0].0.dst_port, guest_port);
        assert_eq!(packets[0].0.buf_alloc, BUF_ALLOC);
        host
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds);
    }
}

fn read_exactly(stream: &mut UnixStream, len: usize) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).unwrap();
    bytes
}

#[test]
fn the_config_space_holds_the_guest_cid() {
    let guest = Guest::new("config");
    let mut config = [0u8; 8];
    guest.device.read_config(0, &mut config);
    assert_eq!(u64::from_le_bytes(config), GUEST_CID);
    assert_eq!(guest.device.device_type(), 19);
    assert_eq!(guest.device.queue_max_sizes().len(), 3);
}

#[test]
fn reserved_cids_are_refused() {
    let uds = uds_path("cid");
    let _ = std::fs::remove_file(&uds);
    let listener = UnixListener::bind(&uds).unwrap();
    let error = Vsock::new(2, listener, uds.clone(), connector())
        .err()
        .unwrap();
    assert!(matches!(error, VsockError::BadCid(2)));
    let _ = std::fs::remove_file(uds);
}

#[test]
fn a_guest_connection_carries_bytes_both_ways_and_closes() {
    let mut guest = Guest::new("out");
    let listener = guest.host_listener(5000);
    guest.post_rx(8, 4096);
    let mut host = guest.connect_out(&listener, 1234, 5000);
    guest.send(Guest::header(Op::Rw, 1234, 5000), b"hello host");
    assert_eq!(read_exactly(&mut host, 10), b"hello host");
    host.write_all(b"hello guest").unwrap();
    let packets = guest.receive_some();
    assert_eq!(packets[0].0.op, Op::Rw as u16);
    assert_eq!(packets[0].1, b"hello guest");
    assert_eq!(packets[0].0.fwd_cnt, 10, "the host took 10 bytes");
    // The guest closes: the host sees the end, the guest gets its RST.
    let mut shutdown = Guest::header(Op::Shutdown, 1234, 5000);
    shutdown.flags = SHUTDOWN_BOTH;
    guest.send(shutdown, &[]);
    let packets = guest.receive_some();
    assert_eq!(packets[0].0.op, Op::Rst as u16);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(guest.device.counts().1, 0);
}

#[test]
fn a_host_connection_is_announced_and_answered_ok() {
    let mut guest = Guest::new("in");
    guest.post_rx(8, 4096);
    let mut host = UnixStream::connect(&guest.uds).unwrap();
    host.write_all(b"CONNECT 52\nearly").unwrap();
    let packets = guest.receive_some();
    assert_eq!(packets.len(), 1);
    let request = packets[0].0;
    assert_eq!(request.op, Op::Request as u16);
    assert_eq!((request.dst_cid, request.dst_port), (GUEST_CID, 52));
    let local = request.src_port;
    guest.send(Guest::header(Op::Response, 52, local), &[]);
    let ok = format!("OK {local}\n");
    assert_eq!(read_exactly(&mut host, ok.len()), ok.as_bytes());
    // Bytes the host sent right after its CONNECT line are the guest's.
    let packets = guest.receive_some();
    assert_eq!(packets[0].1, b"early");
    // The host closes first: the guest is told it sends no more.
    drop(host);
    let packets = guest.receive_some();
    assert_eq!(packets[0].0.op, Op::Shutdown as u16);
    assert_eq!(packets[0].0.flags, SHUTDOWN_SEND);
    guest.send(Guest::header(Op::Rst, 52, local), &[]);
    assert_eq!(guest.device.counts().1, 0);
}

#[test]
fn a_bad_connect_line_closes_the_host_socket() {
    let mut guest = Guest::new("badline");
    guest.post_rx(2, 4096);
    let mut host = UnixStream::connect(&guest.uds).unwrap();
    host.write_all(b"HELLO 52\n").unwrap();
    assert!(guest.receive_some().is_empty());
    let mut rest = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(host.read_to_end(&mut rest).unwrap(), 0);
    assert_eq!(guest.device.counts().0.handshakes_failed, 1);
}

#[test]
fn a_port_with_no_host_listener_is_reset() {
    let mut guest = Guest::new("nolistener");
    guest.post_rx(2, 4096);
    guest.send(Guest::header(Op::Request, 1234, 6000), &[]);
    let packets = guest.receive_some();
    assert_eq!(packets[0].0.op, Op::Rst as u16);
    assert_eq!(packets[0].0.dst_port, 1234);
    assert_eq!(guest.device.counts().0.connections_refused, 1);
}

#[test]
fn the_host_sends_no_more_than_the_guest_allows() {
    let mut guest = Guest::new("credit");
    let listener = guest.host_listener(5001);
    guest.post_rx(8, 4096);
    let mut request = Guest::header(Op::Request, 1234, 5001);
    request.buf_alloc = 8;
    guest.send(request, &[]);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(guest.receive_some()[0].0.op, Op::Response as u16);
    host.write_all(b"0123456789abcdef").unwrap();
    let packets = guest.receive_some();
    assert_eq!(packets[0].1, b"01234567");
    assert_eq!(packets[1].0.op, Op::CreditRequest as u16);
    assert_eq!(packets.len(), 2);
    // An answer with the same credit asks nothing again (no ping-pong).
    let mut same = Guest::header(Op::CreditUpdate, 1234, 5001);
    same.buf_alloc = 8;
    guest.send(same, &[]);
    assert!(guest.receive().is_empty());
    // The guest read them: 8 more bytes of credit.
    let mut update = Guest::header(Op::CreditUpdate, 1234, 5001);
    update.buf_alloc = 8;
    update.fwd_cnt = 8;
    guest.send(update, &[]);
    let packets = guest.receive_some();
    assert_eq!(packets[0].1, b"89abcdef");
}

#[test]
fn a_guest_that_ignores_credit_is_reset() {
    let mut guest = Guest::new("greedy");
    let listener = guest.host_listener(5002);
    guest.post_rx(8, 4096);
    // The host accepts and never reads.
    let _host = guest.connect_out(&listener, 1234, 5002);
    let chunk = vec![7u8; MAX_PAYLOAD as usize];
    for _ in 0..24 {
        guest.send(Guest::header(Op::Rw, 1234, 5002), &chunk);
    }
    let packets = guest.receive_some();
    assert!(packets.iter().any(|(h, _)| h.op == Op::Rst as u16));
    assert_eq!(guest.device.counts().0.credit_violations, 1);
    assert_eq!(guest.device.counts().1, 0);
}

#[test]
fn a_credit_request_is_answered() {
    let mut guest = Guest::new("creditreq");
    let listener = guest.host_listener(5003);
    guest.post_rx(8, 4096);
    let _host = guest.connect_out(&listener, 1234, 5003);
    guest.send(Guest::header(Op::CreditRequest, 1234, 5003), &[]);
    let packets = guest.receive_some();
    assert_eq!(packets[0].0.op, Op::CreditUpdate as u16);
    assert_eq!(packets[0].0.buf_alloc, BUF_ALLOC);
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let mut guest = Guest::new("malformed");
    guest.post_rx(4, 4096);
    guest.send_bytes(&[1, 2, 3]);
    let mut wrong_cid = Guest::header(Op::Request, 1, 2);
    wrong_cid.src_cid = 77;
    guest.send(wrong_cid, &[]);
    let mut bad_op = Guest::header(Op::Request, 1, 2);
    bad_op.op = 99;
    guest.send(bad_op, &[]);
    let mut long = Guest::header(Op::Rw, 1, 2);
    long.len = 1000;
    guest.send_bytes(&long.to_bytes());
    assert_eq!(guest.device.dropped(), 4);
    assert!(
        guest.receive().is_empty(),
        "nothing answers a dropped packet"
    );
    // A packet for no connection is answered with a RST.
    guest.send(Guest::header(Op::Rw, 1, 2), b"x");
    assert_eq!(guest.receive()[0].0.op, Op::Rst as u16);
}

#[test]
fn many_connections_each_get_their_bytes() {
    let mut guest = Guest::new("many");
    let listener = guest.host_listener(5004);
    guest.post_rx(64, 4096);
    let mut hosts: Vec<UnixStream> = (0..16)
        .map(|n| guest.connect_out(&listener, 2000 + n, 5004))
        .collect();
    for (n, host) in hosts.iter_mut().enumerate() {
        host.write_all(format!("to {n}").as_bytes()).unwrap();
    }
    let mut got = HashMap::new();
    let start = Instant::now();
    while got.len() < 16 && start.elapsed() < Duration::from_secs(2) {
        for (header, payload) in guest.receive() {
            got.insert(header.dst_port, payload);
        }
    }
    for n in 0..16u32 {
        assert_eq!(got[&(2000 + n)], format!("to {n}").as_bytes());
    }
}

#[test]
fn a_restore_drops_connections_and_tells_the_guest() {
    let mut guest = Guest::new("restore");
    let listener = guest.host_listener(5005);
    guest.post_rx(4, 4096);
    let mut host = guest.connect_out(&listener, 1234, 5005);
    let event_at = guest.buffer(4);
    guest
        .memory
        .write_obj(0xffff_ffffu32, GuestAddress(event_at))
        .unwrap();
    guest.driver[EVENT].add_chain(&guest.memory, &[(event_at, 4, true)]);
    assert!(!guest.serve(EVENT), "no event before a restore");
    let saved = guest.device.save_device();
    assert_eq!(
        saved,
        SavedVsock {
            guest_cid: GUEST_CID
        }
    );
    let wrong = SavedVsock { guest_cid: 9 };
    assert!(guest.device.check_device("vsock", &wrong).is_err());
    guest.device.check_device("vsock", &saved).unwrap();
    guest.device.restore_device(&saved);
    assert!(guest.device.host_events());
    assert!(guest.serve(EVENT));
    let id: u32 = guest.memory.read_obj(GuestAddress(event_at)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    let mut rest = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(host.read_to_end(&mut rest).unwrap(), 0);
    assert_eq!(guest.device.counts().1, 0);
}

#[test]
fn connect_lines_parse_strictly() {
    use super::connection::read_connect;
    let parse = |text: &[u8]| read_connect(&mut &text[..], &mut Vec::new());
    assert_eq!(parse(b"CONNECT 52\n").unwrap(), Some(52));
    assert_eq!(parse(b"CONNECT 52\r\n").unwrap(), Some(52));
    assert!(parse(b"CONNECT x\n").is_err());
    assert!(parse(b"CONNECT 99999999999\n").is_err());
    assert_eq!(parse(b"").unwrap_err().kind(), ErrorKind::UnexpectedEof);
    // Half a line leaves the bytes read so far in `line`.
    let (mut one, mut two) = UnixStream::pair().unwrap();
    two.set_nonblocking(true).unwrap();
    let mut line = Vec::new();
    one.write_all(b"CONN").unwrap();
    assert_eq!(read_connect(&mut two, &mut line).unwrap(), None);
    one.write_all(b"ECT 7\n").unwrap();
    assert_eq!(read_connect(&mut two, &mut line).unwrap(), Some(7));
}
