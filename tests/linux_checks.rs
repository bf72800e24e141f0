//! tests/common/linux_checks.rs against real consoles: Debian's kernel booting the test
//! initramfs (scripts/make-initramfs.sh, guests/linux-init) under QEMU's TCG on the
//! development host, both boots of scripts/qemu-linux-checks.sh. `qemu-all`: microvm with
//! a PCI (MSI-X) and an MMIO disk, rng, console, net, two CPUs, every check passing;
//! `qemu-failures`: pc with a wrong disk marker, a PCI disk without MSI-X and most
//! devices missing. The blocks the
//! disks held afterwards and the virtio-console's output are kept beside them. No KVM.

mod common;

use common::linux_checks::{
    parse, verify_console_line, verify_disk_write, written_block, Check, InitReport,
};

const ALL: &str = include_str!("linux_checks/qemu-all.log");
const ALL_CONSOLE: &str = include_str!("linux_checks/qemu-all.vc");
const ALL_VDA_BLOCK: &[u8] = include_bytes!("linux_checks/qemu-all-vda-last-4k.bin");
const ALL_VDB_BLOCK: &[u8] = include_bytes!("linux_checks/qemu-all-vdb-last-4k.bin");
const FAILURES: &str = include_str!("linux_checks/qemu-failures.log");

const ALL_CHECKS: &[&str] = &[
    "mounts", "modules", "blk.vda", "blk.vdb", "blk", "rng", "console", "serial", "cpus", "net",
];

fn check<'a>(report: &'a InitReport, name: &str) -> &'a Check {
    report
        .check(name)
        .unwrap_or_else(|| panic!("no {name} check in {report:#?}"))
}

#[test]
fn every_check_of_the_qemu_boot_passes() {
    let report = parse(ALL);
    report.assert_passed(ALL_CHECKS, "poweroff", "qemu-all.log");
    assert_eq!(report.checks.len(), ALL_CHECKS.len());
    assert!(report.init_boottime_ms.is_some_and(|ms| ms > 0));
    let done = report.done.as_ref().unwrap();
    assert_eq!((done.checks, done.failed), (10, 0));
    assert!(done.boottime_ms >= report.init_boottime_ms);
}

#[test]
fn the_qemu_boot_loaded_the_modules_in_dependency_order() {
    let report = parse(ALL);
    let files: Vec<&str> = report.modules.iter().map(|m| m.file.as_str()).collect();
    assert_eq!(
        files,
        [
            "virtio_ring.ko",
            "virtio.ko",
            "virtio_mmio.ko",
            "virtio_pci_modern_dev.ko",
            "virtio_pci_legacy_dev.ko",
            "virtio_pci.ko",
            "virtio_blk.ko",
            "virtio-rng.ko",
            "virtio_console.ko",
            "failover.ko",
            "net_failover.ko",
            "virtio_net.ko",
        ],
        "vsock's modules are left out: no check asked for them"
    );
    assert!(report
        .modules
        .iter()
        .all(|m| m.result == "loaded" && m.ms.is_some()));
    assert_eq!(check(&report, "modules").number("skipped"), Some(3));
    let with_args: Vec<(&str, &str)> = report
        .modules
        .iter()
        .filter_map(|m| Some((m.file.as_str(), m.args.as_deref()?)))
        .collect();
    assert_eq!(
        with_args,
        [("virtio_blk.ko", "num_request_queues=1")],
        "the command line's virtio_blk.num_request_queues=1, passed as modprobe would"
    );
    assert!(ALL.contains("virtio_blk virtio3: 1/0/0 default/read/poll queues"));
}

#[test]
fn the_qemu_boot_found_a_disk_on_each_transport() {
    let report = parse(ALL);
    let mmio = check(&report, "blk.vda");
    assert_eq!(mmio.field("transport"), Some("mmio"));
    assert_eq!(mmio.field("msix"), None, "MSI-X is only looked for on PCI");
    let pci = check(&report, "blk.vdb");
    assert_eq!(pci.field("transport"), Some("pci"));
    assert!(pci.number("msix").is_some_and(|n| n > 0), "{pci}");
    assert!(pci.number("msix_irqs").is_some_and(|n| n > 0), "{pci}");
    assert_eq!(mmio.field("msix_irqs"), None);
    for disk in [mmio, pci] {
        assert_eq!(disk.field("magic"), Some("ok"));
        assert_eq!(disk.field("readback"), Some("ok"));
        assert!(disk.number("irqs").is_some_and(|n| n > 0), "{disk}");
    }
    let blk = check(&report, "blk");
    assert_eq!(blk.field("expected"), Some("pci,mmio"));
    assert_eq!(blk.field("found"), Some("vda:mmio,vdb:pci"));
    assert!(ALL.contains("HUSHVM-DISK-OK"));
}

/// A 1 MiB image holding `block` where the check says it wrote.
fn image_with(check: &Check, block: &[u8]) -> Vec<u8> {
    let offset = check.number("wrote").unwrap() as usize;
    let mut image = vec![0u8; 1 << 20];
    image[offset..offset + block.len()].copy_from_slice(block);
    image
}

#[test]
fn the_blocks_linux_wrote_reached_the_disk_images() {
    let report = parse(ALL);
    for (name, block) in [("blk.vda", ALL_VDA_BLOCK), ("blk.vdb", ALL_VDB_BLOCK)] {
        let disk = check(&report, name);
        assert_eq!(disk.number("wrote"), Some((1 << 20) - 4096));
        verify_disk_write(&image_with(disk, block), disk).unwrap();
    }
    let vda = check(&report, "blk.vda");
    let mut changed = ALL_VDA_BLOCK.to_vec();
    changed[4000] ^= 1;
    let err = verify_disk_write(&image_with(vda, &changed), vda).unwrap_err();
    assert!(err.contains("not the one written"), "{err}");
    let other_disk = verify_disk_write(&image_with(vda, ALL_VDB_BLOCK), vda);
    assert!(other_disk.is_err(), "vdb's block is not vda's");
    let err = verify_disk_write(&[0u8; 4096], vda).unwrap_err();
    assert!(err.contains("ends before"), "{err}");
}

#[test]
fn the_written_block_is_the_guests_pattern() {
    let block = written_block("vda", 0x0123_4567_89ab_cdef);
    assert_eq!(block.len(), 4096);
    assert!(block.starts_with(b"HUSHVM-WRITE vda 0123456789abcdef\n"));
    // Byte i: the stamp's byte (i mod 8) xor i * 37, truncated.
    assert_eq!(block[100], 0x67 ^ (100u32 * 37) as u8);
    assert_eq!(block[4095], 0x01 ^ (4095u32 * 37) as u8);
}

#[test]
fn the_virtio_console_carried_the_line() {
    let report = parse(ALL);
    let console = check(&report, "console");
    assert_eq!(console.field("dev"), Some("/dev/hvc0"));
    verify_console_line(ALL_CONSOLE, console).unwrap();
    assert!(verify_console_line("HUSHVM-VIRTIO-CONSOLE 0\n", console).is_err());
    assert!(verify_console_line("", console).is_err());
}

#[test]
fn the_other_devices_of_the_qemu_boot() {
    let report = parse(ALL);
    let rng = check(&report, "rng");
    assert_eq!(rng.field("current"), Some("virtio_rng.0"));
    assert_eq!(rng.number("bytes"), Some(32));
    let serial = check(&report, "serial");
    assert!(serial.has_word("uart:16550A") && serial.has_word("port:000003F8"));
    assert_eq!(serial.field("tiocgserial_type"), Some("4"));
    let cpus = check(&report, "cpus");
    assert_eq!(cpus.field("online"), Some("0-1"));
    assert_eq!(check(&report, "net").field("transport"), Some("pci"));
}

#[test]
fn the_failures_boot_reports_each_failure() {
    let report = parse(FAILURES);
    let failed: Vec<&str> = report.failures().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        failed,
        ["blk.vda", "blk.vdb", "blk", "rng", "console", "cpus", "net", "vsock", "bogus"]
    );
    let vda = check(&report, "blk.vda");
    assert_eq!(vda.field("magic"), Some("bad:XUSHVM-DISK-MAGIC"));
    assert_eq!(
        vda.field("readback"),
        Some("ok"),
        "only the marker is wrong"
    );
    let intx = check(&report, "blk.vdb");
    assert_eq!(
        (intx.number("msix"), intx.number("msix_irqs")),
        (Some(0), Some(0)),
        "vectors=0: INTx, and the disk works otherwise: {intx}"
    );
    assert!(intx.number("irqs").is_some_and(|n| n > 0), "{intx}");
    assert_eq!(intx.field("magic"), Some("ok"));
    assert_eq!(
        check(&report, "blk").field("found"),
        Some("vda:pci,vdb:pci")
    );
    assert_eq!(check(&report, "rng").field("first"), Some(""));
    assert_eq!(check(&report, "cpus").field("expected"), Some("0"));
    assert!(check(&report, "bogus").has_word("unknown-check"));
    assert!(check(&report, "serial").ok);
    let done = report.done.as_ref().unwrap();
    assert_eq!(
        (done.checks, done.failed, done.end.as_str()),
        (12, 9, "reboot")
    );
    assert!(FAILURES.contains("HUSHVM-DISK-BAD"));
    assert!(FAILURES.contains("reboot: Restarting system"));
    let err = report.verify(&["blk"], "reboot").unwrap_err();
    assert!(err.contains("blk.vda fail transport=pci"), "{err}");
}

#[test]
#[should_panic(expected = "the test /init: failed:")]
fn assert_passed_panics_on_a_failure() {
    parse(FAILURES).assert_passed(&[], "reboot", "qemu-failures.log");
}

#[test]
fn lines_are_found_behind_kernel_text_and_before_carriage_returns() {
    let console = "[    3.1] random: crng init done HUSHVM-INIT-OK boottime_ms=12\r\n\
                   junk HUSHVM-CHECK rng ok current=virtio_rng.0 bytes=32\r\n\
                   HUSHVM-CHECK serial maybe uart:16550A\n\
                   HUSHVM-CHECK lonely\n\
                   HUSHVM-MODULE virtio.ko errno=22 ms=1 args=a=1 b=x y\r\n\
                   HUSHVM-DONE checks=1 failed=0 end=poweroff\n";
    let report = parse(console);
    assert!(report.init_ran);
    assert_eq!(report.init_boottime_ms, Some(12));
    assert_eq!(
        report.checks.len(),
        1,
        "a line without ok or fail is no check"
    );
    assert_eq!(check(&report, "rng").number("bytes"), Some(32));
    let err = report.verify(&["rng"], "poweroff").unwrap_err();
    assert!(
        err.contains("module virtio.ko did not load: errno=22"),
        "{err}"
    );
    assert_eq!(report.done.as_ref().unwrap().boottime_ms, None);
    assert_eq!(report.modules[0].args.as_deref(), Some("a=1 b=x y"));
}

#[test]
fn verify_names_what_is_missing() {
    assert!(parse("")
        .verify(&[], "poweroff")
        .unwrap_err()
        .contains("never ran"));
    let started = "HUSHVM-INIT-OK\nHUSHVM-CHECK blk ok found=vda:pci\n";
    let err = parse(started)
        .verify(&["blk", "rng"], "poweroff")
        .unwrap_err();
    assert!(err.contains("[\"rng\"]"), "{err}");
    let err = parse(started).verify(&["blk"], "poweroff").unwrap_err();
    assert!(err.contains("did not finish"), "{err}");
    let done = format!("{started}HUSHVM-DONE checks=2 failed=0 end=poweroff\n");
    let err = parse(&done).verify(&["blk"], "poweroff").unwrap_err();
    assert!(err.contains("2 checks, 0 failed; 1 check lines"), "{err}");
    let rebooted = format!("{started}HUSHVM-DONE checks=1 failed=0 end=reboot\n");
    let err = parse(&rebooted).verify(&["blk"], "poweroff").unwrap_err();
    assert!(err.contains("not \"poweroff\""), "{err}");
    parse(&rebooted).verify(&["blk"], "reboot").unwrap();
}
