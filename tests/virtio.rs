//! virtio-mmio devices driven by guests: doorbells through every path, block data that
//! survives, and the errors a user can make.

mod common;

use hushvm::bus::StopRequest;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{guest_config, kvm_available, run, serial_text};
use hushvm::bench::guest_fields;
use hushvm::config::{DiskConfig, Doorbell};
use hushvm::profile::{ExitKey, ExitKind};
use hushvm::run_loop::VmStop;

const RNG_NOTIFY: u64 = 0xc000_1050;
const RNG_PIO_DOORBELL: u64 = 0x604;

fn scratch_disk(name: &str, bytes: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hushvm-virtio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    path
}

/// What the blk guest writes: a base pattern with the block number stamped (little
/// endian) at the start of every 256 bytes.
fn pattern(block: u64, i: u64) -> u8 {
    match i % 256 {
        offset @ 0..=3 => (block as u32).to_le_bytes()[offset as usize],
        _ => (i as u32).wrapping_mul(7).wrapping_add(1) as u8,
    }
}

fn assert_blocks_on_disk(path: &Path, blocks: u64) {
    let disk = std::fs::read(path).unwrap();
    for block in 0..blocks {
        let at = (block * 4096) as usize;
        for i in 0..4096u64 {
            assert_eq!(
                disk[at + i as usize],
                pattern(block, i),
                "block {block} byte {i}"
            );
        }
    }
}

#[test]
fn every_doorbell_path_completes_every_request() {
    if !kvm_available() {
        return;
    }
    for (doorbell, guest) in [
        (Doorbell::Exit, ""),
        (Doorbell::Len0, ""),
        (Doorbell::Len4, ""),
        (Doorbell::Pio, "doorbell=pio"),
    ] {
        let mut config = guest_config("doorbell", &format!("requests=50 {guest}"));
        config.devices.rng = true;
        config.cures.doorbell = doorbell;
        let report = run(&config);
        let text = serial_text(&report);
        assert_eq!(
            report.stop,
            VmStop::Guest(StopRequest::Exit(0)),
            "{doorbell:?}: {text}"
        );
        let fields = guest_fields(&report.serial, "doorbell:");
        assert_eq!(fields["completed"], 50, "{doorbell:?}");
        let mmio_exits = report.profile.count(|k| {
            *k == ExitKey {
                kind: ExitKind::MmioWrite,
                addr: RNG_NOTIFY,
            }
        });
        let pio_exits = report.profile.count(|k| {
            *k == ExitKey {
                kind: ExitKind::PioOut,
                addr: RNG_PIO_DOORBELL,
            }
        });
        match doorbell {
            Doorbell::Exit => assert_eq!(mmio_exits, 50, "each doorbell is an exit"),
            _ => assert_eq!(
                mmio_exits + pio_exits,
                0,
                "{doorbell:?}: no doorbell reaches userspace"
            ),
        }
        assert_eq!(report.virtio_notifications, 50, "{doorbell:?}");
        assert_eq!(
            report.virtio_interrupts(),
            50,
            "{doorbell:?}: one completion interrupt each"
        );
        assert!(text.contains("virtio_mmio") || !text.contains("cmdline"));
    }
}

#[test]
fn block_data_read_back_equals_data_written() {
    if !kvm_available() {
        return;
    }
    for (pattern_name, doorbell) in [
        ("seq", Doorbell::Exit),
        ("seq", Doorbell::Len0),
        ("rand", Doorbell::Len0),
    ] {
        let path = scratch_disk(&format!("{pattern_name}-{doorbell:?}.img"), 4 << 20);
        let mut config = guest_config("blk", &format!("requests=64 pattern={pattern_name}"));
        config.devices.disks = vec![DiskConfig::new(&path)];
        config.cures.doorbell = doorbell;
        let report = run(&config);
        let text = serial_text(&report);
        assert_eq!(report.stop, VmStop::Guest(StopRequest::Exit(0)), "{text}");
        let fields = guest_fields(&report.serial, "blk:");
        assert_eq!(fields["errors"], 0, "{text}");
        assert_eq!(fields["requests"], 2 * 64 + 2);
        assert_eq!(fields["capacity"], 8192);
        if pattern_name == "seq" {
            assert_blocks_on_disk(&path, 64);
        }
    }
}

#[test]
fn two_disks_on_two_transports_are_two_devices_by_id() {
    if !kvm_available() {
        return;
    }
    // The blk guest drives the disk in virtio-mmio's first window; a second disk sits on
    // PCI beside it, named by its own id, and sees nothing.
    let first = scratch_disk("two-first.img", 4 << 20);
    let second = scratch_disk("two-second.img", 4 << 20);
    let mut config = guest_config("blk", "requests=16 pattern=seq");
    config.devices.disks = vec![
        DiskConfig {
            id: Some("root".into()),
            transport: Some(hushvm::config::VirtioTransport::Mmio),
            ..DiskConfig::new(&first)
        },
        DiskConfig {
            transport: Some(hushvm::config::VirtioTransport::Pci),
            ..DiskConfig::new(&second)
        },
    ];
    let trace = scratch_disk("two.trace", 0);
    config.run.record = Some(trace.clone());
    let report = run(&config);
    let text = serial_text(&report);
    assert_eq!(report.stop, VmStop::Guest(StopRequest::Exit(0)), "{text}");
    assert_eq!(guest_fields(&report.serial, "blk:")["errors"], 0, "{text}");
    assert_blocks_on_disk(&first, 16);
    // The trace's header lists both disks with their ids and transports: the replay
    // rebuilds the same machine, and every read gives what was recorded.
    let bytes = std::fs::read(&trace).unwrap();
    let (description, _) = hushvm::replay::decode(&bytes).unwrap();
    let listed: Vec<(&str, bool)> = description
        .virtio
        .iter()
        .map(|device| (device.id.as_str(), device.pci))
        .collect();
    assert_eq!(listed, [("root", false), ("blk1", true)]);
    let replayed = hushvm::replay::replay(&bytes).unwrap();
    assert!(replayed.exits > 20, "{replayed:?}");
    assert_eq!(replayed.divergences, 0, "{replayed:?}");
    let root = report.device("root").expect("the first disk, by its id");
    assert_eq!(root.counter("notifications"), 2 * 16 + 2);
    let blk1 = report
        .device("blk1")
        .expect("the second disk, by its default id");
    assert_eq!(blk1.counter("doorbells"), 0);
    assert_eq!(blk1.counter("interrupts"), 0);
    assert!(
        std::fs::read(&second).unwrap().iter().all(|b| *b == 0),
        "nothing reached the second disk"
    );
    assert_eq!(report.virtio_notifications, 2 * 16 + 2);
}

#[test]
fn a_flushed_write_survives_sigkill() {
    if !kvm_available() {
        return;
    }
    let path = scratch_disk("sigkill.img", 4 << 20);
    let guest = common::guest_file("blk");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args([
            "run",
            "--multiboot",
            guest.to_str().unwrap(),
            "--cmdline",
            "requests=32 hold=1",
        ])
        .args(["--disk", path.to_str().unwrap(), "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let flushed = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line == "blk: flushed");
    // SIGKILL right after the flush was acknowledged.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(flushed, "the guest reported its flush");
    assert_blocks_on_disk(&path, 32);
}

#[test]
fn the_console_carries_output_and_its_completion_interrupt_reaches_the_guest() {
    if !kvm_available() {
        return;
    }
    let mut config = guest_config("probe", "action=vconsole");
    config.devices.virtio_console = Some(hushvm::config::SerialMode::Capture);
    let report = run(&config);
    let text = serial_text(&report);
    assert_eq!(
        report.stop,
        VmStop::Guest(StopRequest::Exit(0x18)),
        "{text}"
    );
    assert_eq!(report.virtio_console, b"hello from virtio-console\n");
    assert_eq!(common::field(&text, "vconsole_interrupts"), "1");
    assert_eq!(
        common::field(&text, "vconsole_interrupt_status"),
        "1",
        "used-buffer interrupt"
    );
    assert_eq!(common::field(&text, "vconsole_status_after_ack"), "0");
    assert_eq!(report.virtio_interrupts(), 1);
}

#[test]
fn each_device_may_sit_on_its_own_transport() {
    if !kvm_available() {
        return;
    }
    // The probe drives the console in its virtio-mmio window; the entropy device is a
    // PCI function beside it.
    let mut config = guest_config("probe", "action=vconsole");
    config.devices.transport = hushvm::config::VirtioTransport::Pci;
    config.devices.virtio_console = Some(hushvm::config::SerialMode::Capture);
    config.devices.console_transport = Some(hushvm::config::VirtioTransport::Mmio);
    config.devices.rng = true;
    let report = run(&config);
    let text = serial_text(&report);
    assert_eq!(
        report.stop,
        VmStop::Guest(StopRequest::Exit(0x18)),
        "{text}"
    );
    assert_eq!(report.virtio_console, b"hello from virtio-console\n");
    assert_eq!(report.interrupts_on("console0"), 1);
    assert_eq!(report.device("rng0").unwrap().counter("doorbells"), 0);
}

#[test]
fn host_input_reaches_the_guest_through_virtio_console() {
    if !kvm_available() {
        return;
    }
    let guest = common::guest_file("probe");
    let args = [
        "run",
        "--multiboot",
        guest.to_str().unwrap(),
        "--cmdline",
        "action=vecho",
        "--virtio-console",
        "stdio",
        "--serial",
        "none",
        "--timeout",
        "30",
    ];
    let output = common::hushvm_with_input(&args, b"ping");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0x35),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout, "vecho:ping");
}

#[test]
fn the_command_line_announces_each_device_present() {
    if !kvm_available() {
        return;
    }
    let mut config = guest_config("probe", "action=info");
    config.devices.rng = true;
    config.devices.virtio_console = Some(hushvm::config::SerialMode::Capture);
    let report = run(&config);
    assert_eq!(
        common::field(&serial_text(&report), "cmdline"),
        "[probe.elf action=info virtio_mmio.device=4K@0xc0001000:6 virtio_mmio.device=4K@0xc0002000:7]"
    );
}

#[test]
fn a_readonly_disk_refuses_writes_and_keeps_its_data() {
    if !kvm_available() {
        return;
    }
    let path = scratch_disk("readonly.img", 1 << 20);
    let mut config = guest_config("blk", "requests=4");
    config.devices.disks = vec![DiskConfig {
        readonly: true,
        ..DiskConfig::new(&path)
    }];
    let report = run(&config);
    let fields = guest_fields(&report.serial, "blk:");
    assert!(fields["errors"] > 0, "writes and their read-back fail");
    assert!(
        std::fs::read(&path).unwrap().iter().all(|b| *b == 0),
        "the image is untouched"
    );
}

#[test]
fn bad_disks_are_clear_errors() {
    // The disk is opened after the VM (hushvm opens /dev/kvm first).
    if !kvm_available() {
        return;
    }
    let hushvm = env!("CARGO_BIN_EXE_hushvm");
    let dir = std::env::temp_dir().join(format!("hushvm-virtio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let guest = dir.join("probe.elf");
    std::fs::write(&guest, hushvm::guests::image("probe").unwrap()).unwrap();
    let odd = scratch_disk("odd.img", 1000);
    let cases = [
        (
            dir.join("missing.img").display().to_string(),
            "no such file",
        ),
        (odd.display().to_string(), "not a positive multiple of 512"),
        // A running executable cannot be opened for writing, even by root.
        (hushvm.to_string(), "not writable"),
        (dir.display().to_string(), "not a regular file"),
        (
            format!("{},sometimes", odd.display()),
            "invalid --disk option",
        ),
    ];
    for (disk, expected) in cases {
        let output = Command::new(hushvm)
            .args([
                "run",
                "--multiboot",
                guest.to_str().unwrap(),
                "--disk",
                &disk,
                "--timeout",
                "10",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{disk}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(expected),
            "{disk}: expected {expected:?} in {stderr}"
        );
    }
}
