//! The test guest (guests/net.c) on a tap in a namespace: on hushvm, and under QEMU's
//! TCG, whose virtio-net is the reference.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::common;
use super::common::netns::{netns_available, NetNs, TapKind};

/// QEMU's microvm with ioapic2=off: eight virtio-mmio transports from 0xfeb00000, 512
/// bytes apart; a single device lands in the last one, whose line is GSI 23 (found by
/// trying; QEMU 7.2). `force-legacy=false`: virtio-mmio version 2, as hushvm's.
const MICROVM_SLOT: u32 = 0xfeb0_0000 + 7 * 512;
const MICROVM_GSI: u32 = 23;

/// The test guest under QEMU's TCG, on a tap in a namespace: ping (small and merged
/// into several buffers), UDP echo, and the guest's own counts when told to quit; on
/// virtio-pci with MSI-X and polled, and on virtio-mmio (microvm) with its line.
/// How long a guest may take to say it is ready (QEMU's TCG and this host's nested KVM
/// are both slow).
const READY: Duration = Duration::from_secs(30);

/// The test guest on hushvm, as under QEMU below: virtio-pci with MSI-X (interrupts, and
/// polled), and virtio-mmio with its line (the only virtio device: window 0, GSI 5).
#[test]
fn the_test_guest_answers_on_hushvm() {
    if !netns_available() || !common::kvm_available() {
        return;
    }
    let guest = guest_file();
    for (transport, cmdline, options) in [
        ("pci", "irq=1 event_idx=1 mrg_rxbuf=1", &[][..]),
        ("pci", "irq=0 event_idx=0 mrg_rxbuf=0", &[]),
        ("mmio", "transport=mmio slot=0 irq=1", &[]),
        ("mmio", "transport=mmio slot=0 irq=1", &["--no-event-idx"]),
    ] {
        let features = run_guest_under_hushvm(&guest, transport, cmdline, options);
        // The guest accepts EVENT_IDX when offered, unless told not to.
        let event_idx = cmdline.contains("event_idx=1") || !cmdline.contains("event_idx");
        let offered = options.is_empty();
        assert_eq!(
            features & 1 << 29 != 0,
            event_idx && offered,
            "{transport} {cmdline} {options:?}: features {features:#x}"
        );
    }
}

fn guest_file() -> std::path::PathBuf {
    let image = hushvm::guests::image("net").expect("the net guest is built");
    let guest = common::scratch_dir().join(format!("net-{}.elf", std::process::id()));
    std::fs::write(&guest, image).unwrap();
    guest
}

#[test]
fn the_test_guest_answers_under_qemu_tcg() {
    if !netns_available() || !qemu_available() {
        return;
    }
    let guest = guest_file();
    let mmio = format!("transport=mmio mmio={MICROVM_SLOT} gsi={MICROVM_GSI} irq=1");
    for (pci, cmdline) in [
        (true, "irq=1 event_idx=1 mrg_rxbuf=1".to_string()),
        (true, "irq=0 event_idx=0 mrg_rxbuf=0".to_string()),
        (false, mmio),
    ] {
        run_guest_under_qemu(&guest, pci, &cmdline);
    }
}

fn run_guest_under_qemu(guest: &Path, pci: bool, cmdline: &str) {
    let ns = NetNs::new(TapKind::SingleQueue);
    let console = common::scratch_dir().join(format!("net-{}.out", ns.name()));
    let qemu = ns
        .command("timeout")
        .arg("60")
        .args(qemu_args(guest, pci, cmdline, NetNs::TAP))
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start QEMU");
    exchange_and_check(&ns, qemu, &console, cmdline);
}

/// The test guest on hushvm over the namespace's tap (opened there: hushvm is started by
/// a thread that entered the namespace), on `transport`; returns the features the guest
/// accepted (the low word, as it reports them).
fn run_guest_under_hushvm(guest: &Path, transport: &str, cmdline: &str, options: &[&str]) -> u64 {
    let ns = NetNs::new(TapKind::SingleQueue);
    let console = common::scratch_dir().join(format!("net-{}.out", ns.name()));
    let errors = common::scratch_dir().join(format!("net-{}.err", ns.name()));
    let hushvm = ns.in_namespace(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hushvm"))
            .args(["run", "--kernel", &guest.display().to_string()])
            .args(["--virtio-transport", transport, "--timeout", "60"])
            .args(["--net", &format!("tap={}", NetNs::TAP)])
            .args(options)
            .args(["--cmdline", &format!("ip={} {cmdline}", NetNs::GUEST_IP)])
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(std::fs::File::create(&errors).unwrap())
            .spawn()
            .expect("start hushvm")
    });
    let context = format!("hushvm --virtio-transport {transport} {options:?} {cmdline}");
    exchange_and_check(&ns, hushvm, &console, &context);
    let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
    assert!(!stderr.contains("seccomp"), "{context}: {stderr}");
    let output = std::fs::read_to_string(&console).unwrap();
    output
        .split_whitespace()
        .find_map(|item| item.strip_prefix("features=0x"))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("{context}: no features in\n{output}"))
}

/// Pings the guest (small, and large enough to be merged into several buffers), has it
/// echo UDP, tells it to quit, and checks every reply and the guest's own counts.
fn exchange_and_check(ns: &NetNs, mut vmm: std::process::Child, console: &Path, cmdline: &str) {
    if let Err(panic) = std::panic::catch_unwind(|| wait_for(console, "net: ready", READY)) {
        let _ = vmm.kill();
        let _ = vmm.wait();
        std::panic::resume_unwind(panic);
    }
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
    let status = vmm.wait().expect("the VMM ends");
    let output = std::fs::read_to_string(console).unwrap();
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

fn qemu_args(guest: &Path, pci: bool, cmdline: &str, tap: &str) -> Vec<String> {
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

fn wait_for(path: &Path, text: &str, timeout: Duration) {
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

/// `hushvm bench net` runs every variant on both transports in a namespace with a few
/// iterations, and its JSON says each guest sent them all and was satisfied.
#[test]
fn the_net_bench_runs_every_variant() {
    if !netns_available() || !common::kvm_available() {
        return;
    }
    const FRAMES: u64 = 32;
    for transport in ["mmio", "pci"] {
        let ns = NetNs::new(TapKind::SingleQueue);
        let output = ns
            .command(env!("CARGO_BIN_EXE_hushvm"))
            .args([
                "bench",
                "net",
                "--tap",
                NetNs::TAP,
                "--json",
                "--repeat",
                "1",
            ])
            .args([
                "--iterations",
                &FRAMES.to_string(),
                "--transport",
                transport,
            ])
            .output()
            .expect("run hushvm bench net");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{transport}: {stderr}");
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("one JSON object");
        let variants = report["variants"].as_array().expect("variants");
        let names: Vec<&str> = variants.iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(names, ["ioeventfd-event-idx", "ioeventfd", "mmio-exit"]);
        for variant in variants {
            assert_eq!(variant["exit_status"], 1, "{transport}: {variant}");
            let sent = variant["guest"]["tx"]
                .as_u64()
                .expect("the guest's tx count");
            assert!(sent >= FRAMES, "{transport}: {sent} frames sent: {variant}");
            assert_eq!(variant["guest"]["errors"], 0, "{transport}: {variant}");
        }
    }
}
