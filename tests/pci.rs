//! PCI and virtio-pci driven by the pcitest guest: both configuration mechanisms see
//! the same bus, a BAR is sized and moved, block data round-trips, and every
//! completion arrives as exactly one MSI-X interrupt (held pending while its vector is
//! masked), with ioeventfd doorbells and without (`--no-ioeventfd`).

mod common;

use std::path::PathBuf;

use common::{guest_config, kvm_available, run, serial_text};
use hushvm::bench::guest_fields;
use hushvm::bus::StopRequest;
use hushvm::config::{DiskConfig, Doorbell, VirtioTransport};
use hushvm::machine::{MachineConfig, RunReport};
use hushvm::profile::ExitKind;
use hushvm::run_loop::VmStop;

/// The 32-bit window hushvm assigns BARs in.
const WINDOW: std::ops::Range<u64> = 0xc100_0000..0xe000_0000;
/// Where the pcitest guest moves the first virtio function's BAR 0.
const MOVED_BAR: u64 = 0xd000_0000;
/// The notification structure's page inside a virtio-pci BAR 0.
const NOTIFY_PAGE: u64 = 0x3000;
/// What the console part sends.
const CONSOLE_LINE: &[u8] = b"hello from virtio-pci\n";

fn scratch_disk(name: &str, bytes: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hushvm-pci-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    path
}

/// The pcitest guest on a PCI machine with the devices asked for.
fn pci_config(cmdline: &str, disk: Option<PathBuf>, rng: bool, console: bool) -> MachineConfig {
    let mut config = guest_config("pcitest", cmdline);
    config.devices.transport = VirtioTransport::Pci;
    config.devices.disks = disk.map(DiskConfig::new).into_iter().collect();
    config.devices.rng = rng;
    config.devices.virtio_console = console.then_some(hushvm::config::SerialMode::Capture);
    config
}

fn assert_exit_0(report: &RunReport) {
    let text = serial_text(report);
    assert_eq!(report.stop, VmStop::Guest(StopRequest::Exit(0)), "{text}");
}

/// Doorbell writes that reached userspace: MMIO writes to a notify page in the window.
fn notify_exits(report: &RunReport) -> u64 {
    report.profile.count(|k| {
        k.kind == ExitKind::MmioWrite && WINDOW.contains(&k.addr) && k.addr & 0x7000 == NOTIFY_PAGE
    })
}

/// The line of guest output that starts with `prefix` and holds `key=`.
fn line_with<'a>(text: &'a str, prefix: &str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix) && l.contains(&format!(" {key}=")))
        .unwrap_or_else(|| panic!("no {prefix} line with {key}= in:\n{text}"))
}

/// The value of `key=` on that line.
fn value<'a>(text: &'a str, prefix: &str, key: &str) -> &'a str {
    let line = line_with(text, prefix, key);
    let at = line.find(&format!(" {key}=")).unwrap() + key.len() + 2;
    line[at..].split_whitespace().next().unwrap_or("")
}

#[test]
fn both_configuration_mechanisms_enumerate_the_same_functions() {
    if !kvm_available() {
        return;
    }
    let disk = scratch_disk("enum.img", 1 << 20);
    let report = run(&pci_config("action=enum", Some(disk), true, true));
    let text = serial_text(&report);
    assert_exit_0(&report);
    // The host bridge, then block, entropy and console in that order.
    for line in [
        "pci: dev=0 fn=0 vendor=0x1b36 device=0x0008 class=0x060000",
        "pci: dev=1 fn=0 vendor=0x1af4 device=0x1042 class=0x018000",
        "pci: dev=2 fn=0 vendor=0x1af4 device=0x1044 class=0xff0000",
        "pci: dev=3 fn=0 vendor=0x1af4 device=0x1043 class=0x078000",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }
    assert_eq!(value(&text, "pci:", "functions"), "4", "{text}");
    assert_eq!(value(&text, "pci:", "ecam_functions"), "4", "{text}");
    assert_eq!(value(&text, "pci:", "width_errors"), "0", "{text}");
    assert!(text.contains(" enumerate=ok\n"), "{text}");
}

#[test]
fn a_bar_is_sized_and_moved_and_the_device_follows_it() {
    if !kvm_available() {
        return;
    }
    let report = run(&pci_config("action=bar", None, true, false));
    let text = serial_text(&report);
    assert_exit_0(&report);
    assert_eq!(value(&text, "pcibar:", "bar_size"), "32768");
    let old = value(&text, "pcibar:", "old");
    let old = u64::from_str_radix(old.trim_start_matches("0x"), 16).unwrap();
    assert!(WINDOW.contains(&old), "assigned in the window: {old:#x}");
    assert_eq!(old % 0x8000, 0, "aligned to its size");
    assert_eq!(value(&text, "pcibar:", "new"), "0xd0000000");
    assert_eq!(value(&text, "pcibar:", "num_queues"), "1", "virtio-rng");
    assert_eq!(value(&text, "pcibar:", "new_answers"), "1", "{text}");
    assert_eq!(value(&text, "pcibar:", "old_answers"), "0", "{text}");
    assert_eq!(value(&text, "pcibar:", "off_answers"), "0", "{text}");
    assert_eq!(value(&text, "pcibar:", "moved"), "1", "{text}");
    // The one read at the old address is the only access nothing claims.
    assert_eq!(report.profile.unclaimed, 1, "{text}");
}

#[test]
fn each_failure_has_its_own_exit_code() {
    if !kvm_available() {
        return;
    }
    // No virtio function to size: 0x11. A device asked for but missing: 0x20 + index.
    let report = run(&pci_config("action=bar", None, false, false));
    assert_eq!(report.stop, VmStop::Guest(StopRequest::Exit(0x11)));
    let report = run(&pci_config("action=rng", None, false, false));
    assert_eq!(report.stop, VmStop::Guest(StopRequest::Exit(0x21)));
}

#[test]
fn block_data_round_trips_over_virtio_pci() {
    if !kvm_available() {
        return;
    }
    for doorbell in [Doorbell::Exit, Doorbell::Len0] {
        let path = scratch_disk(&format!("blk-{doorbell:?}.img"), 1 << 20);
        let mut config = pci_config("action=blk", Some(path.clone()), false, false);
        config.cures.doorbell = doorbell;
        let report = run(&config);
        let text = serial_text(&report);
        assert_exit_0(&report);
        let fields = guest_fields(&report.serial, "pcitest: blk_ok");
        assert_eq!(fields["blk_ok"], 1, "{text}");
        // Write, flush, read: three requests, three interrupts.
        assert_eq!(fields["blk_requests"], 3, "{text}");
        assert_eq!(fields["blk_interrupts"], 3, "{text}");
        assert_eq!(value(&text, "pcitest: blk", "capacity"), "2048");
        let disk = std::fs::read(&path).unwrap();
        for i in 0..512usize {
            let expected = (i as u32).wrapping_mul(13).wrapping_add(5) as u8;
            assert_eq!(disk[512 + i], expected, "{doorbell:?}: sector 1 byte {i}");
        }
    }
}

#[test]
fn every_completion_is_one_msix_interrupt_with_and_without_ioeventfd() {
    if !kvm_available() {
        return;
    }
    const RNG_REQUESTS: u64 = 20;
    // blk: write, flush, read; the console: one line.
    const TOTAL: u64 = 3 + RNG_REQUESTS + 1;
    for doorbell in [Doorbell::Exit, Doorbell::Len0] {
        let path = scratch_disk(&format!("all-{doorbell:?}.img"), 1 << 20);
        let cmdline = format!("action=all requests={RNG_REQUESTS}");
        let mut config = pci_config(&cmdline, Some(path), true, true);
        config.cures.doorbell = doorbell;
        let report = run(&config);
        let text = serial_text(&report);
        assert_exit_0(&report);
        assert!(text.contains(" enumerate=ok\n"), "{text}");
        assert_eq!(value(&text, "pcibar:", "moved"), "1", "{text}");
        let fields = guest_fields(&report.serial, "pcitest: blk_ok");
        assert_eq!(fields["blk_ok"], 1, "{text}");
        assert_eq!(fields["blk_interrupts"], 3, "{doorbell:?}: {text}");
        assert_eq!(fields["rng_requests"], RNG_REQUESTS, "{text}");
        assert_eq!(
            fields["rng_interrupts"], RNG_REQUESTS,
            "{doorbell:?}: {text}"
        );
        assert_eq!(fields["console_interrupts"], 1, "{doorbell:?}: {text}");
        assert_eq!(fields["config_interrupts"], 0, "{text}");
        // Block 2 entries, entropy 2, console 3 (configuration + one per queue).
        assert_eq!(fields["msix_vectors"], 7, "{text}");
        assert_eq!(report.virtio_console, CONSOLE_LINE);
        // hushvm's own count agrees with the guest's.
        assert_eq!(report.virtio_notifications, TOTAL, "{doorbell:?}");
        assert_eq!(report.virtio_interrupts(), TOTAL, "{doorbell:?}");
        // Only the BAR test's read at the old address goes astray.
        assert_eq!(report.profile.unclaimed, 1, "{doorbell:?}");
        match doorbell {
            Doorbell::Exit => assert_eq!(notify_exits(&report), TOTAL, "each doorbell exits"),
            _ => assert_eq!(notify_exits(&report), 0, "no doorbell reaches userspace"),
        }
    }
}

#[test]
fn a_masked_vector_is_held_pending_and_delivered_on_unmask() {
    if !kvm_available() {
        return;
    }
    for doorbell in [Doorbell::Exit, Doorbell::Len0] {
        let mut config = pci_config("action=mask", None, true, false);
        config.cures.doorbell = doorbell;
        let report = run(&config);
        let text = serial_text(&report);
        assert_exit_0(&report);
        let fields = guest_fields(&report.serial, "pcimask:");
        assert_eq!(fields["masked_interrupts"], 0, "{doorbell:?}: {text}");
        assert_eq!(fields["pending"], 1, "{doorbell:?}: {text}");
        assert_eq!(fields["unmasked_interrupts"], 1, "{doorbell:?}: {text}");
        assert_eq!(fields["pending_after"], 0, "{doorbell:?}: {text}");
        assert_eq!(report.virtio_interrupts(), 1, "{doorbell:?}");
    }
}

#[test]
fn the_moved_bar_keeps_its_doorbells() {
    if !kvm_available() {
        return;
    }
    // action=all moves the block device's BAR before its driver starts: its doorbells
    // must follow it (an exit at the new address, or the ioeventfd moved with it).
    for doorbell in [Doorbell::Exit, Doorbell::Len0] {
        let path = scratch_disk(&format!("moved-{doorbell:?}.img"), 1 << 20);
        let mut config = pci_config("action=all requests=1", Some(path), false, false);
        config.cures.doorbell = doorbell;
        let report = run(&config);
        let text = serial_text(&report);
        assert_exit_0(&report);
        assert_eq!(value(&text, "pcibar:", "new"), "0xd0000000");
        let at_moved = report
            .profile
            .count(|k| k.kind == ExitKind::MmioWrite && k.addr == MOVED_BAR + NOTIFY_PAGE);
        let expected = if doorbell == Doorbell::Exit { 3 } else { 0 };
        assert_eq!(at_moved, expected, "{doorbell:?}");
        assert_eq!(report.virtio_interrupts(), 3, "{doorbell:?}");
    }
}

#[test]
fn the_doorbell_workload_rings_virtio_pci() {
    if !kvm_available() {
        return;
    }
    for doorbell in [Doorbell::Exit, Doorbell::Len0] {
        let mut config = guest_config("doorbell", "requests=50 transport=pci");
        config.devices.transport = VirtioTransport::Pci;
        config.devices.rng = true;
        config.cures.doorbell = doorbell;
        let report = run(&config);
        assert_exit_0(&report);
        let fields = guest_fields(&report.serial, "doorbell:");
        assert_eq!(fields["completed"], 50, "{doorbell:?}");
        assert_eq!(fields["errors"], 0, "{doorbell:?}");
        assert_eq!(report.virtio_notifications, 50, "{doorbell:?}");
        let expected = if doorbell == Doorbell::Exit { 50 } else { 0 };
        assert_eq!(notify_exits(&report), expected, "{doorbell:?}");
    }
}

#[test]
fn a_level_triggered_intx_interrupt_reports_each_completion_once() {
    if !kvm_available() {
        return;
    }
    for doorbell in [Doorbell::Exit, Doorbell::Len0] {
        let mut config = pci_config("action=intx requests=20", None, true, false);
        config.cures.doorbell = doorbell;
        let report = run(&config);
        let text = serial_text(&report);
        assert_exit_0(&report);
        let fields = guest_fields(&report.serial, "pciintx:");
        assert_eq!(fields["pin"], 1, "INTA#");
        assert_eq!(fields["line"], 17, "GSI 16 + device 1");
        // Every completion seen exactly once through the ISR. An extra interrupt that
        // finds the ISR clear is tolerated (and counted): a resample handled after the
        // guest already read the next completion's ISR re-asserts the line once more,
        // as under QEMU; one or two per run have been seen here.
        assert_eq!(fields["isr_queue"], 20, "{doorbell:?}: {text}");
        assert!(fields["spurious"] <= 4, "{doorbell:?}: {text}");
        // hushvm counts assertions of the line, resample re-assertions included (a
        // resample that comes after the next completion set the ISR asserts again):
        // 35-39 for these 20 completions here. Each interrupt needs one.
        assert!(
            report.virtio_interrupts() >= fields["interrupts"],
            "{doorbell:?}: hushvm's count of INTx assertions"
        );
    }
}

#[test]
fn the_pcicfg_workload_reads_the_host_bridge() {
    if !kvm_available() {
        return;
    }
    for coalesce in [false, true] {
        let mut config = guest_config("pcicfg", "reads=200");
        config.cures.coalesce = coalesce;
        let report = run(&config);
        assert_exit_0(&report);
        let fields = guest_fields(&report.serial, "pcicfg:");
        assert_eq!(fields["reads"], 200);
        assert_eq!(fields["errors"], 0, "coalesce={coalesce}");
        let data_reads = report
            .profile
            .count(|k| k.kind == ExitKind::PioIn && k.addr == 0xcfc);
        assert_eq!(data_reads, 200, "every data read exits");
        let address_writes = report
            .profile
            .count(|k| k.kind == ExitKind::PioOut && k.addr == 0xcf8);
        // Posted, all but the first if nothing activated the bounded zones before it.
        if coalesce {
            assert!(
                address_writes <= 1,
                "{address_writes} address writes exited"
            );
        } else {
            assert_eq!(address_writes, 200);
        }
    }
}

/// The pcicfg guest alternates two registers, so a data read served with the previous
/// address is an error. With the bounded drain (the default), the event loop may pop a
/// posted 0xcf8 write from the ring while the vCPU's 0xcfc exit arrives; before the fix
/// (PostedWrites' `draining` flag) the exit found the ring empty and read with the old
/// address: 2-7 errors in 20,000 reads in about half the runs.
#[test]
fn a_posted_address_is_applied_before_its_data_read_under_the_bounded_drain() {
    if !kvm_available() {
        return;
    }
    for _ in 0..4 {
        let report = run(&guest_config("pcicfg", "reads=20000"));
        let fields = guest_fields(&report.serial, "pcicfg:");
        assert_eq!(fields["errors"], 0, "reads served with a stale address");
        assert_exit_0(&report);
    }
}
