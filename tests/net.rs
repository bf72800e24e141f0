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

/// QEMU's microvm with ioapic2=off: eight virtio-mmio transports from 0xfeb00000, 512
/// bytes apart; a single device lands in the last one, whose line is GSI 23 (found by
/// trying; QEMU 7.2). `force-legacy=false`: virtio-mmio version 2, as hushvm's.
const MICROVM_SLOT: u32 = 0xfeb0_0000 + 7 * 512;
const MICROVM_GSI: u32 = 23;

/// The test guest under QEMU's TCG, on a tap in a namespace: ping (small and merged
/// into several buffers), UDP echo, and the guest's own counts when told to quit; on
/// virtio-pci with MSI-X and polled, and on virtio-mmio (microvm) with its line.
#[test]
fn the_test_guest_answers_under_qemu_tcg() {
    if !netns_available() || !qemu_available() {
        return;
    }
    let image = hushvm::guests::image("net").expect("the net guest is built");
    let guest = common::scratch_dir().join(format!("net-{}.elf", std::process::id()));
    std::fs::write(&guest, image).unwrap();
    let mmio = format!("transport=mmio mmio={MICROVM_SLOT} gsi={MICROVM_GSI} irq=1");
    for (pci, cmdline) in [
        (true, "irq=1 event_idx=1 mrg_rxbuf=1".to_string()),
        (true, "irq=0 event_idx=0 mrg_rxbuf=0".to_string()),
        (false, mmio),
    ] {
        run_guest_under_qemu(&guest, pci, &cmdline);
    }
}

fn run_guest_under_qemu(guest: &std::path::Path, pci: bool, cmdline: &str) {
    let ns = NetNs::new(TapKind::SingleQueue);
    let console = common::scratch_dir().join(format!("net-{}.out", ns.name()));
    let mut qemu = ns
        .command("timeout")
        .arg("60")
        .args(qemu_args(guest, pci, cmdline, NetNs::TAP))
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start QEMU");
    wait_for(&console, "net: ready", Duration::from_secs(30));
    ns.wait_for_carrier(Duration::from_secs(5));
    let ping = ns.ping(NetNs::GUEST_IP, 3, 56, 2);
    let big = ns.ping(NetNs::GUEST_IP, 2, 1400, 2);
    let payloads: Vec<Vec<u8>> = (0..3)
        .map(|i| vec![b'x' + i; 10 + 600 * i as usize])
        .collect();
    let echoes = ns.udp_exchange(
        SocketAddr::from((NetNs::GUEST_IP, 7)),
        &payloads,
        Duration::from_secs(2),
    );
    ns.udp_send(SocketAddr::from((NetNs::GUEST_IP, 9)), b"quit");
    let status = qemu.wait().expect("QEMU ends");
    let output = std::fs::read_to_string(&console).unwrap();
    assert_eq!(ping.received, 3, "{cmdline}: {}\n{output}", ping.output);
    assert_eq!(big.received, 2, "{cmdline}: {}\n{output}", big.output);
    for (sent, echoed) in payloads.iter().zip(&echoes) {
        assert_eq!(echoed.as_ref(), Some(sent), "{cmdline}\n{output}");
    }
    // isa-debug-exit: (0 << 1) | 1, the guest returned 0.
    assert_eq!(status.code(), Some(1), "{cmdline}\n{output}");
    let report = output
        .lines()
        .find(|line| line.starts_with("net: rx="))
        .unwrap_or_else(|| panic!("no report:\n{output}"));
    let field = |key: &str| -> u64 {
        report
            .split_whitespace()
            .find_map(|item| item.strip_prefix(&format!("{key}=")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {report}"))
    };
    assert_eq!(field("icmp"), 5, "{report}");
    assert_eq!(field("udp"), 3, "{report}");
    assert_eq!(field("errors"), 0, "{report}");
    if !cmdline.contains("mrg_rxbuf=0") {
        assert!(field("merged") >= 2, "{report}");
    }
    if cmdline.contains("irq=1") {
        assert!(field("rx_irqs") >= 1, "{report}");
    }
}

fn qemu_args(guest: &std::path::Path, pci: bool, cmdline: &str, tap: &str) -> Vec<String> {
    let machine: &[&str] = if pci {
        &[
            "-M",
            "pc",
            "-device",
            "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=",
        ]
    } else {
        &[
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,ioapic2=off",
            "-global",
            "virtio-mmio.force-legacy=false",
            "-device",
            "virtio-net-device,netdev=n0",
        ]
    };
    let mut args: Vec<String> = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "64M",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
    ]
    .iter()
    .chain(machine)
    .map(|arg| arg.to_string())
    .collect();
    args.push("-netdev".into());
    args.push(format!(
        "tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"
    ));
    args.push("-kernel".into());
    args.push(guest.display().to_string());
    args.push("-append".into());
    args.push(format!("ip={} {cmdline}", NetNs::GUEST_IP));
    args
}

fn qemu_available() -> bool {
    let found = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if found {
        return true;
    }
    let skip = std::env::var("HUSHVM_SKIP_KVM_TESTS").as_deref() == Ok("1");
    let required = std::env::var("HUSHVM_REQUIRE_KVM").as_deref() == Ok("1");
    if skip && !required {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed and HUSHVM_SKIP_KVM_TESTS=1");
        return false;
    }
    panic!("this test needs qemu-system-x86_64 (scripts/install-net-tools.sh installs it)");
}

fn wait_for(path: &std::path::Path, text: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let output = std::fs::read_to_string(path).unwrap_or_default();
        if output.contains(text) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "no {text:?} within {timeout:?}:\n{output}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
