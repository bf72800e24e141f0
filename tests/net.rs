//! Networking's host side, before the virtio-net device: the netns harness
//! (tests/common/netns.rs) and hushvm's tap backend (src/net/tap.rs), checked against a
//! responder written here that plays the guest on the tap, and the test guest
//! (guests/net.c) under QEMU's TCG, whose virtio-net is real.

mod common;

use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::netns::{netns_available, parse_ping_summary, NetNs, TapKind};
use hushvm::devices::virtio::driver::DriverQueue;
use hushvm::devices::virtio::net::Net;
use hushvm::devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use hushvm::net::tap::{Tap, TapError, VNET_HDR_LEN};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

#[test]
fn ping_summaries_are_parsed() {
    let output =
        "PING 10.77.0.2 (10.77.0.2) 56(84) bytes of data.\n\n--- 10.77.0.2 ping statistics ---\n\
                  3 packets transmitted, 2 received, 33.3333% packet loss, time 404ms\n";
    assert_eq!(parse_ping_summary(output), Some((3, 2)));
    assert_eq!(parse_ping_summary("ping: unknown host"), None);
}

#[test]
fn the_namespace_goes_away_on_drop_and_on_panic() {
    if !netns_available() {
        return;
    }
    let exists = |name: &str| std::path::Path::new(&format!("/var/run/netns/{name}")).exists();
    let ns = NetNs::new(TapKind::SingleQueue);
    let name = ns.name().to_string();
    assert!(exists(&name));
    // The tap is in the namespace, not outside it.
    assert!(!std::path::Path::new(&format!("/sys/class/net/{}", NetNs::TAP)).exists());
    drop(ns);
    assert!(!exists(&name));
    let panicked = std::panic::catch_unwind(|| {
        let ns = NetNs::new(TapKind::SingleQueue);
        std::fs::write(std::env::temp_dir().join("hushvm-netns-name"), ns.name()).unwrap();
        panic!("on purpose");
    });
    assert!(panicked.is_err());
    let name = std::fs::read_to_string(std::env::temp_dir().join("hushvm-netns-name")).unwrap();
    assert!(!exists(&name), "{name} left behind");
}

#[test]
fn taps_are_opened_with_clear_errors() {
    if !netns_available() {
        return;
    }
    let single = NetNs::new(TapKind::SingleQueue);
    single.in_namespace(|| {
        assert!(matches!(
            Tap::open("hvnone0", 1),
            Err(TapError::NoSuchInterface(_))
        ));
        let error = Tap::open(NetNs::TAP, 2).unwrap_err();
        assert!(error.to_string().contains("multi_queue"), "{error}");
        let taps = Tap::open(NetNs::TAP, 1).expect("open the tap");
        assert_eq!(taps[0].name(), NetNs::TAP);
        taps[0].set_offload(0).expect("no offloads");
    });
    let multi = NetNs::new(TapKind::MultiQueue);
    multi.in_namespace(|| {
        let taps = Tap::open(NetNs::TAP, 4).expect("four queues");
        let fds: std::collections::HashSet<_> = taps.iter().map(|t| t.as_raw_fd()).collect();
        assert_eq!(fds.len(), 4);
        taps[3]
            .set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4)
            .expect("offloads");
    });
}

#[test]
fn ping_and_udp_reach_a_responder_behind_the_tap() {
    if !netns_available() {
        return;
    }
    let ns = NetNs::new(TapKind::SingleQueue);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let responder = scope.spawn(|| ns.in_namespace(|| respond_until(&stop)));
        // The responder has the tap open once its link comes up.
        ns.wait_for_carrier(Duration::from_secs(5));
        let ping = ns.ping(NetNs::GUEST_IP, 3, 56, 2);
        let big = ns.ping(NetNs::GUEST_IP, 1, 1400, 2);
        let payloads: Vec<Vec<u8>> = (0..4)
            .map(|i| vec![b'a' + i; 1 + 300 * i as usize])
            .collect();
        let echoes = ns.udp_exchange(
            SocketAddr::from((NetNs::GUEST_IP, 7)),
            &payloads,
            Duration::from_secs(2),
        );
        stop.store(true, Ordering::Relaxed);
        let answered = responder.join().unwrap();
        assert_eq!((ping.transmitted, ping.received), (3, 3), "{}", ping.output);
        assert_eq!(big.received, 1, "{}", big.output);
        for (sent, echoed) in payloads.iter().zip(&echoes) {
            assert_eq!(echoed.as_ref(), Some(sent));
        }
        assert!(answered >= 1 + 4 + 4, "{answered} frames answered");
    });
    let (from_guest, to_guest) = ns.tap_packets();
    assert!(from_guest >= 9 && to_guest >= 9, "{from_guest} {to_guest}");
}

/// The virtio-net device on a real tap, driven through queues in guest memory (no KVM):
/// a frame the driver transmits reaches a socket in the namespace, and a datagram sent
/// to the guest's address lands in the buffers the driver posted, merged over two.
#[test]
fn the_device_moves_frames_between_guest_memory_and_a_tap() {
    if !netns_available() {
        return;
    }
    let ns = NetNs::new(TapKind::SingleQueue);
    let neighbour = format!("{}", NetNs::GUEST_IP);
    let mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
    let added = ns
        .command("ip")
        .args([
            "neigh",
            "add",
            &neighbour,
            "lladdr",
            &mac,
            "dev",
            NetNs::TAP,
        ])
        .status()
        .unwrap();
    assert!(added.success());
    ns.in_namespace(|| {
        let tap = Tap::open(NetNs::TAP, 1).unwrap().remove(0);
        ns.wait_for_carrier(Duration::from_secs(5));
        let net = Net::new(tap, GUEST_MAC, None, None, || 0);
        let mrg_rxbuf = 1u64 << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
        net.activate(VIRTIO_F_VERSION_1 | mrg_rxbuf);
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let socket = std::net::UdpSocket::bind((NetNs::HOST_IP, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();

        // TX: header and frame in two buffers of one chain.
        let mut tx = DriverQueue::new(0x10_0000, 16);
        let mut tx_queue = tx.device_queue(256);
        let payload = b"from the guest's transmit queue";
        let frame = udp_frame(port, payload);
        memory
            .write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(0x20_0000))
            .unwrap();
        memory.write_slice(&frame, GuestAddress(0x20_1000)).unwrap();
        tx.add_chain(
            &memory,
            &[
                (0x20_0000, VNET_HDR_LEN as u32, false),
                (0x20_1000, frame.len() as u32, false),
            ],
        );
        assert!(net.process_queue(1, &mut tx_queue, &memory).unwrap());
        assert_eq!(tx.used_idx(&memory), 1);
        let mut received = [0u8; 256];
        let (len, from) = socket.recv_from(&mut received).expect("the frame arrives");
        assert_eq!(&received[..len], payload);
        assert_eq!(from, SocketAddr::from((NetNs::GUEST_IP, 7)));

        // RX: 1200 bytes into 1 KiB buffers.
        let mut rx = DriverQueue::new(0x30_0000, 16);
        let mut rx_queue = rx.device_queue(256);
        for n in 0..8u64 {
            rx.add_chain(&memory, &[(0x40_0000 + n * 0x1000, 1024, true)]);
        }
        let big = vec![0x5a; 1200];
        socket
            .send_to(&big, SocketAddr::from((NetNs::GUEST_IP, 7)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        // Should the kernel send frames of its own, they may come first.
        let mut used = 0;
        let found = loop {
            assert!(
                Instant::now() < deadline,
                "the datagram never reached the queue: used {} (seen {used}), {:?}",
                rx.used_idx(&memory),
                net.counters
            );
            net.process_queue(0, &mut rx_queue, &memory).unwrap();
            let mut hit = None;
            while used < rx.used_idx(&memory) {
                let (head, len) = rx.used(&memory, used);
                let at = 0x40_0000 + u64::from(head) * 0x1000;
                let mut header = [0u8; VNET_HDR_LEN + 14];
                memory.read_slice(&mut header, GuestAddress(at)).unwrap();
                let buffers = u16::from_le_bytes([header[10], header[11]]);
                if header[VNET_HDR_LEN + 12..] == [0x08, 0x00] && hit.is_none() {
                    hit = Some((head, len, buffers));
                }
                used += buffers.max(1);
            }
            if let Some(hit) = hit {
                break hit;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (head, first_len, buffers) = found;
        assert_eq!(buffers, 2, "1200 bytes and headers take two 1 KiB buffers");
        let frame_len = VNET_HDR_LEN + 14 + 20 + 8 + 1200;
        assert_eq!(first_len, 1024);
        let mut whole = vec![0u8; frame_len];
        memory
            .read_slice(
                &mut whole[..1024],
                GuestAddress(0x40_0000 + u64::from(head) * 0x1000),
            )
            .unwrap();
        memory
            .read_slice(
                &mut whole[1024..],
                GuestAddress(0x40_0000 + u64::from(head + 1) * 0x1000),
            )
            .unwrap();
        let eth = &whole[VNET_HDR_LEN..];
        assert_eq!(&eth[..6], &GUEST_MAC, "to the guest's address");
        assert_eq!(&eth[30..34], &NetNs::GUEST_IP.octets());
        assert_eq!(&eth[42..], &big[..]);
    });
}

/// An Ethernet + IPv4 + UDP frame from GUEST_IP:7 to HOST_IP:`port`.
fn udp_frame(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&NetNs::GUEST_IP.octets());
    ip.extend_from_slice(&NetNs::HOST_IP.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&7u16.to_be_bytes());
    frame.extend_from_slice(&port.to_be_bytes());
    frame.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// Plays the guest on the tap with hushvm's backend: answers ARP, ICMP echo and UDP
/// echo for GUEST_IP until `stop`; returns how many frames it answered.
fn respond_until(stop: &AtomicBool) -> u32 {
    let taps = Tap::open(NetNs::TAP, 1).expect("open the tap");
    let tap = &taps[0];
    let mut answered = 0;
    let mut header = [0u8; VNET_HDR_LEN];
    let mut frame = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if !readable(tap, Duration::from_millis(50)) {
            continue;
        }
        // Two buffers, as a guest's chain has: the header, then the frame.
        let len = {
            let buffers = [
                VolatileSlice::from(&mut header[..]),
                VolatileSlice::from(&mut frame[..]),
            ];
            match tap.readv(&buffers) {
                Ok(len) => len,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("readv: {e}"),
            }
        };
        assert!(len >= VNET_HDR_LEN, "a frame without its vnet header");
        if let Some(mut reply) = answer(&frame[..len - VNET_HDR_LEN]) {
            let mut reply_header = [0u8; VNET_HDR_LEN];
            let buffers = [
                VolatileSlice::from(&mut reply_header[..]),
                VolatileSlice::from(&mut reply[..]),
            ];
            let written = tap.writev(&buffers).expect("writev");
            assert_eq!(written, VNET_HDR_LEN + reply.len());
            answered += 1;
        }
    }
    answered
}

fn readable(tap: &Tap, timeout: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: tap.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd passed, which outlives the call.
    unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) == 1 }
}

fn answer(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.len() < 14 {
        return None;
    }
    let mut reply = frame.to_vec();
    reply.copy_within(6..12, 0);
    reply[6..12].copy_from_slice(&GUEST_MAC);
    let guest_ip = NetNs::GUEST_IP.octets();
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0806 if frame.len() >= 42 && frame[20..22] == [0, 1] && frame[38..42] == guest_ip => {
            reply[21] = 2;
            reply[32..42].copy_from_slice(&frame[22..32]);
            reply[22..28].copy_from_slice(&GUEST_MAC);
            reply[28..32].copy_from_slice(&guest_ip);
            reply.truncate(42);
            Some(reply)
        }
        0x0800 if frame.len() >= 42 && frame[30..34] == guest_ip => {
            let header_len = usize::from(frame[14] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            reply.truncate(14 + total);
            reply[26..30].copy_from_slice(&guest_ip);
            reply[30..34].copy_from_slice(&frame[26..30]);
            let payload = 14 + header_len;
            match frame[23] {
                1 if frame[payload] == 8 => {
                    reply[payload] = 0;
                    reply[payload + 2..payload + 4].fill(0);
                    let sum = checksum(&reply[payload..]);
                    reply[payload + 2..payload + 4].copy_from_slice(&sum.to_be_bytes());
                }
                17 if frame[payload + 2..payload + 4] == [0, 7] => {
                    reply[payload..payload + 2].copy_from_slice(&frame[payload + 2..payload + 4]);
                    reply[payload + 2..payload + 4].copy_from_slice(&frame[payload..payload + 2]);
                    reply[payload + 6..payload + 8].fill(0);
                }
                _ => return None,
            }
            reply[24..26].fill(0);
            let sum = checksum(&reply[14..14 + header_len]);
            reply[24..26].copy_from_slice(&sum.to_be_bytes());
            Some(reply)
        }
        _ => None,
    }
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0)))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[path = "net/guest.rs"]
mod guest;
