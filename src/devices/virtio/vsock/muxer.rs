//! The host side of the vsock device, Firecracker's hybrid design: a listening Unix
//! socket at `uds_path` where host programs connect and say `CONNECT <port>\n`, and for
//! a guest connection to port P, a connect to the host listener at `<uds_path>_<P>`.
//! Every host socket is non-blocking and watched, edge-triggered, by one epoll of the
//! muxer's own, whose fd the machine's event loop watches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::ops::Bound;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{read_connect, Connection, Verdict};
use super::packet::{Header, Op};

/// Connections at once (host- and guest-initiated together); more are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host programs that connected and have not finished their `CONNECT` line.
const MAX_HANDSHAKES: usize = 64;
/// Ports the device picks for host-initiated connections start here (as Firecracker's).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Connects to a host listener without waiting: a stream already non-blocking, or an
/// error (a listener whose backlog is full refuses at once). The machine provides it
/// (devices make no sockets of their own).
pub type Connector = Box<dyn Fn(&Path) -> io::Result<UnixStream> + Send>;

/// A connection's key: (host port, guest port).
type Key = (u32, u32);

/// What the muxer counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MuxerCounts {
    pub connections_opened: u64,
    pub connections_refused: u64,
    pub resets_sent: u64,
    pub credit_violations: u64,
    pub handshakes_failed: u64,
}

/// A host program between its connect and its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Connections by key, the host sockets, and what is owed to the guest outside any
/// connection (RSTs for packets no connection takes).
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    connector: Connector,
    listener: UnixListener,
    epoll: Epoll,
    handshakes: HashMap<RawFd, Handshake>,
    connections: BTreeMap<Key, Connection<UnixStream>>,
    by_fd: HashMap<RawFd, Key>,
    /// RSTs owed for packets that named no connection (or a refused one).
    resets: VecDeque<Header>,
    /// The connection served last, so the next RX packet comes from the next one.
    cursor: Key,
    next_local_port: u32,
    pub counts: MuxerCounts,
}

fn interest() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

impl Muxer {
    /// A muxer for `guest_cid` over `listener` (bound at `uds_path`).
    pub fn new(
        guest_cid: u64,
        listener: UnixListener,
        uds_path: PathBuf,
        connector: Connector,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let event = EpollEvent::new(EventSet::IN, listener.as_raw_fd() as u64);
        epoll.ctl(ControlOperation::Add, listener.as_raw_fd(), event)?;
        Ok(Self {
            guest_cid,
            uds_path,
            connector,
            listener,
            epoll,
            handshakes: HashMap::new(),
            connections: BTreeMap::new(),
            by_fd: HashMap::new(),
            resets: VecDeque::new(),
            cursor: (0, 0),
            next_local_port: FIRST_LOCAL_PORT,
            counts: MuxerCounts::default(),
        })
    }

    /// The fd the event loop watches: readable when a host socket has news.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Its epoll, for the device's own kick.
    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    fn watch(&self, fd: RawFd, events: EventSet) {
        // A socket epoll cannot watch is useless, but dropping it is its owner's call.
        let _ = self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, fd as u64),
        );
    }

    fn unwatch(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Handles every ready host socket; returns true if the guest may have packets.
    pub fn host_events(&mut self) -> bool {
        let mut events = [EpollEvent::default(); 64];
        let mut any = false;
        loop {
            let ready = match self.epoll.wait(0, &mut events) {
                Ok(ready) => ready,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return any,
            };
            for event in &events[..ready] {
                let fd = event.fd();
                if fd == self.listener.as_raw_fd() {
                    self.accept_all();
                } else if self.handshakes.contains_key(&fd) {
                    any |= self.advance_handshake(fd);
                } else if let Some(key) = self.by_fd.get(&fd).copied() {
                    any |= self.connection_ready(key, event.event_set());
                }
            }
            if ready < events.len() {
                return any;
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.handshakes.len() >= MAX_HANDSHAKES || stream.set_nonblocking(true).is_err() {
                self.counts.handshakes_failed += 1;
                continue;
            }
            let fd = stream.as_raw_fd();
            self.watch(fd, EventSet::IN | EventSet::READ_HANG_UP);
            let line = Vec::new();
            self.handshakes.insert(fd, Handshake { stream, line });
            // Bytes may already wait: epoll reports them level-triggered at once.
        }
    }

    /// More of a `CONNECT` line; true if a connection was made (the guest owes a
    /// REQUEST).
    fn advance_handshake(&mut self, fd: RawFd) -> bool {
        let Some(handshake) = self.handshakes.get_mut(&fd) else {
            return false;
        };
        let port = match read_connect(&mut handshake.stream, &mut handshake.line) {
            Ok(None) => return false,
            Ok(Some(port)) => Some(port),
            Err(_) => None,
        };
        self.unwatch(fd);
        let Some(handshake) = self.handshakes.remove(&fd) else {
            return false;
        };
        let Some(peer_port) = port else {
            self.counts.handshakes_failed += 1;
            return false;
        };
        let Some(local_port) = self.free_local_port(peer_port) else {
            self.counts.connections_refused += 1;
            return false;
        };
        let connection = Connection::from_host(handshake.stream, local_port, peer_port);
        self.insert(connection);
        true
    }

    fn free_local_port(&mut self, peer_port: u32) -> Option<u32> {
        if self.connections.len() >= MAX_CONNECTIONS {
            return None;
        }
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.connections.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
    }

    fn insert(&mut self, connection: Connection<UnixStream>) {
        let key = (connection.local_port, connection.peer_port);
        let fd = connection.stream().as_raw_fd();
        self.watch(fd, interest());
        self.by_fd.insert(fd, key);
        self.connections.insert(key, connection);
        self.counts.connections_opened += 1;
    }

    fn remove(&mut self, key: Key) {
        if let Some(connection) = self.connections.remove(&key) {
            let fd = connection.stream().as_raw_fd();
            self.unwatch(fd);
            self.by_fd.remove(&fd);
        }
    }

    /// A host stream's readiness; true if the guest may have packets.
    fn connection_ready(&mut self, key: Key, events: EventSet) -> bool {
        let Some(connection) = self.connections.get_mut(&key) else {
            return false;
        };
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            connection.readable = true;
        }
        if events.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
            let verdict = connection.flush_to_host();
            self.drain_ring(key, verdict);
        }
        true
    }

    /// Acts on a verdict about connection `key`.
    fn drain_ring(&mut self, key: Key, verdict: Verdict) {
        match verdict {
            Verdict::Keep => {}
            Verdict::Forget => self.remove(key),
            Verdict::Reset => {
                if let Some(connection) = self.connections.get_mut(&key) {
                    let reset = connection.header(self.guest_cid, Op::Rst);
                    self.resets.push_back(reset);
                }
                self.remove(key);
            }
        }
    }

    /// Owes the guest a RST answering `header` (a packet no connection takes).
    fn refuse(&mut self, header: &Header) {
        if header.op != Op::Rst as u16 {
            let reset = Header::to_guest(self.guest_cid, header.dst_port, header.src_port, Op::Rst);
            self.resets.push_back(reset);
        }
    }

    /// A checked packet from the guest, with its payload.
    pub fn on_guest_packet(&mut self, header: &Header, op: Op, payload: &[u8]) {
        let key = (header.dst_port, header.src_port);
        if let Some(connection) = self.connections.get_mut(&key) {
            let verdict = connection.on_guest_packet(header, op, payload);
            if verdict == Verdict::Reset && op == Op::Rw {
                self.counts.credit_violations += 1;
            }
            self.drain_ring(key, verdict);
            return;
        }
        if op != Op::Request {
            self.refuse(header);
            return;
        }
        match self.connect_host(header.dst_port) {
            Some(stream) => {
                let connection = Connection::from_guest(stream, header.dst_port, header);
                self.insert(connection);
            }
            None => {
                self.counts.connections_refused += 1;
                self.refuse(header);
            }
        }
    }

    /// The host listener for guest connections to `port`, if there is one (the
    /// connector does not wait: this runs under the device's lock).
    fn connect_host(&self, port: u32) -> Option<UnixStream> {
        if self.connections.len() >= MAX_CONNECTIONS {
            return None;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{port}"));
        (self.connector)(Path::new(&path)).ok()
    }

    /// Whether a packet waits for the guest.
    pub fn has_packet(&self) -> bool {
        !self.resets.is_empty() || self.connections.values().any(Connection::has_packet)
    }

    /// The next packet for the guest, payload into `payload`; connections take turns.
    pub fn next_packet(&mut self, payload: &mut [u8]) -> Option<Header> {
        if let Some(reset) = self.resets.pop_front() {
            self.counts.resets_sent += 1;
            return Some(reset);
        }
        let after = (Bound::Excluded(self.cursor), Bound::Unbounded);
        let keys: Vec<Key> = self
            .connections
            .range(after)
            .chain(self.connections.range(..=self.cursor))
            .filter(|(_, connection)| connection.has_packet())
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            let Some(connection) = self.connections.get_mut(&key) else {
                continue;
            };
            if let Some(header) = connection.next_packet(self.guest_cid, payload) {
                self.cursor = key;
                if header.op == Op::Rst as u16 {
                    self.counts.resets_sent += 1;
                    self.remove(key);
                }
                return Some(header);
            }
        }
        None
    }

    /// Drops every connection (their host streams close): a restored guest starts
    /// afresh, as after Firecracker's TRANSPORT_RESET.
    pub fn reset_all(&mut self) {
        let keys: Vec<Key> = self.connections.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.resets.clear();
    }
}
