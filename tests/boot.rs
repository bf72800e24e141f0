//! Booting the probe guest: Multiboot information, devices, unclaimed accesses, and every
//! way a VM can stop.

mod common;

use hushvm::bus::StopRequest;
use std::time::{Duration, Instant};

use common::{field, guest_config, kvm_available, run, serial_text};
use hushvm::loader::Module;
use hushvm::profile::{ExitKey, ExitKind};
use hushvm::run_loop::{GuestFault, VmStop};

#[test]
fn the_guest_sees_multiboot_information_and_fw_cfg() {
    if !kvm_available() {
        return;
    }
    let mut config = guest_config("probe", "action=info extra=1");
    config.memory = hushvm::layout::MemoryLayout::new(32 << 20).unwrap();
    config.boot.modules = vec![Module {
        name: "initrd.img quiet".into(),
        data: vec![0x5a; 10_000],
    }];
    let report = run(&config);
    let text = serial_text(&report);
    assert_eq!(
        report.stop,
        VmStop::Guest(StopRequest::Exit(0x10)),
        "{text}"
    );
    assert_eq!(report.stop.exit_status(), 0x21);
    assert_eq!(field(&text, "magic"), "0x2badb002");
    assert_eq!(
        field(&text, "mem_lower"),
        "639",
        "conventional RAM ends at the EBDA"
    );
    assert_eq!(field(&text, "mem_upper"), (31 * 1024).to_string());
    assert_eq!(field(&text, "cmdline"), "[probe.elf action=info extra=1]");
    assert_eq!(field(&text, "loader"), "[hushvm]");
    assert!(text.contains("mmap 0x00100000 0x01f00000 1"), "{text}");
    assert_eq!(field(&text, "mods"), "1");
    assert!(
        text.contains("mod=[initrd.img quiet] size=10000 aligned=1 first=90"),
        "{text}"
    );
    assert_eq!(field(&text, "fw_cfg signature"), "QEMU");
    assert_eq!(field(&text, "fw_cfg id"), "1");
    assert_eq!(field(&text, "fw_cfg ram_mib"), "32");
    assert_eq!(field(&text, "fw_cfg cpus"), "1");
    assert_eq!(field(&text, "fw_cfg max_ram"), "0");
    assert_eq!(field(&text, "unclaimed_pio"), "0xffffffff");
    assert_eq!(field(&text, "unclaimed_mmio"), "0xffffffff");
}

#[test]
fn exits_are_exactly_the_accesses_the_guest_made() {
    if !kvm_available() {
        return;
    }
    // Without posting, every access exits (with it, COM1's bytes wait in the ring).
    let mut config = guest_config("probe", "action=info");
    config.cures.coalesce = false;
    let report = run(&config);
    let profile = &report.profile;
    let count = |kind, addr| profile.count(|k: &ExitKey| *k == ExitKey { kind, addr });
    assert_eq!(
        count(ExitKind::PioOut, 0x3f8),
        report.serial.len() as u64,
        "one exit per byte printed"
    );
    assert_eq!(count(ExitKind::PioOut, 0x510), 5, "five fw_cfg selections");
    assert_eq!(count(ExitKind::PioIn, 0x511), 4 + 4 + 8 + 2 + 8);
    assert_eq!(count(ExitKind::PioOut, 0x80), 1);
    assert_eq!(count(ExitKind::PioIn, 0x1234), 1);
    assert_eq!(count(ExitKind::MmioRead, 0xd000_0000), 1);
    assert_eq!(count(ExitKind::MmioWrite, 0xd000_0000), 1);
    assert_eq!(count(ExitKind::PioOut, 0xf4), 1);
    assert_eq!(
        profile.unclaimed, 3,
        "0x1234 and 0xd0000000 twice; 0x80 is claimed"
    );
    assert_eq!(
        profile.total_exits(),
        count(ExitKind::PioOut, 0x3f8) + 5 + 26 + 1 + 1 + 2 + 1
    );
    let kvm_exits = report.kvm_stats.get("exits").copied().unwrap_or(0);
    assert!(
        kvm_exits >= profile.total_exits(),
        "KVM counted {kvm_exits}"
    );
}

#[test]
fn the_rtc_reads_host_time_in_every_format() {
    if !kvm_available() {
        return;
    }
    let report = run(&guest_config("probe", "action=rtc"));
    let text = serial_text(&report);
    assert_eq!(
        report.stop,
        VmStop::Guest(StopRequest::Exit(0x11)),
        "{text}"
    );
    let values = |label: &str| -> Vec<u32> {
        let line = text.lines().find(|l| l.starts_with(label)).expect(label);
        line.split_whitespace()
            .skip(1)
            .map(|v| u32::from_str_radix(&v[2..], 16).unwrap())
            .collect()
    };
    let bcd = |v: u32| (v >> 4) * 10 + (v & 0xf);
    let (bcd24, bin24, bcd12) = (values("bcd24"), values("bin24"), values("bcd12"));
    let now = hushvm::devices::calendar::DateTime::from_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    );
    // [sec, min, hour, weekday, day, month, year, century]
    assert_eq!(bcd(bcd24[7]) * 100 + bcd(bcd24[6]), now.year as u32);
    assert_eq!(bin24[7] * 100 + bin24[6], now.year as u32);
    assert_eq!(bcd(bcd24[5]), now.month);
    assert_eq!(bin24[5], now.month);
    assert_eq!(bcd(bcd24[2]), bin24[2]);
    let hour12 = bcd(bcd12[2] & 0x7f) % 12 + if bcd12[2] & 0x80 != 0 { 12 } else { 0 };
    assert_eq!(hour12, bin24[2], "12-hour form names the same hour");
    assert!(bin24[0] < 60 && bin24[1] < 60 && (1..=7).contains(&bin24[3]));
    assert_eq!(field(&text, "reg_a"), "38", "0x26: divider on, 1024 Hz");
    assert_eq!(field(&text, "reg_d"), "128");
}

#[test]
fn a_triple_fault_stops_the_vm_with_registers() {
    if !kvm_available() {
        return;
    }
    let report = run(&guest_config("probe", "action=triple"));
    assert_eq!(report.stop, VmStop::Fault(GuestFault::TripleFault));
    assert_eq!(report.stop.exit_status(), 2);
    let registers = report.registers.expect("registers are reported");
    assert!(
        registers.contains("rip=") && registers.contains("idt=0x0+0x0"),
        "{registers}"
    );
}

#[test]
fn a_fault_kvm_cannot_handle_stops_the_vm_with_registers() {
    if !kvm_available() {
        return;
    }
    let report = run(&guest_config("probe", "action=int3"));
    assert!(
        matches!(
            report.stop,
            VmStop::Fault(GuestFault::TripleFault | GuestFault::InternalError { .. })
        ),
        "{:?}",
        report.stop
    );
    assert_eq!(report.stop.exit_status(), 2);
    assert!(report.registers.expect("registers").contains("rip="));
}

#[test]
fn a_halted_or_spinning_guest_is_stopped_by_the_timeout() {
    if !kvm_available() {
        return;
    }
    for action in ["hang", "spin"] {
        let mut config = guest_config("probe", &format!("action={action}"));
        config.run.timeout = Some(Duration::from_millis(300));
        let started = Instant::now();
        let report = run(&config);
        assert_eq!(report.stop, VmStop::Timeout, "{action}");
        assert_eq!(report.stop.exit_status(), 124);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{action} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn i8042_reset_and_debug_exit_codes_stop_the_vm() {
    if !kvm_available() {
        return;
    }
    let report = run(&guest_config("probe", "action=reset"));
    assert_eq!(report.stop, VmStop::Guest(StopRequest::Reset));
    assert_eq!(report.stop.exit_status(), 0);
    let report = run(&guest_config("probe", "action=exit code=5"));
    assert_eq!(report.stop, VmStop::Guest(StopRequest::Exit(5)));
    assert_eq!(report.stop.exit_status(), 11);
}

#[test]
fn string_io_moves_whole_chunks_per_exit() {
    if !kvm_available() {
        return;
    }
    let report = run(&guest_config("strio", "rounds=4 bytes=4096 mode=rep"));
    let text = serial_text(&report);
    assert_eq!(report.stop, VmStop::Guest(StopRequest::Exit(0)), "{text}");
    let words_in = 4 * 4096 / 2;
    let in_exits = report.profile.count(|k| {
        *k == ExitKey {
            kind: ExitKind::PioIn,
            addr: 0x1f0,
        }
    });
    let out_exits = report.profile.count(|k| {
        *k == ExitKey {
            kind: ExitKind::PioOut,
            addr: 0x1f0,
        }
    });
    assert!(
        in_exits >= 4 && in_exits < words_in,
        "rep insw: {in_exits} exits for {words_in} words"
    );
    assert!(
        out_exits <= 4 * 4096,
        "rep outsb: never more than one exit per byte"
    );
    assert_eq!(report.profile.unclaimed, 0);
}

#[test]
fn a_kernel_may_call_before_it_sets_up_its_own_stack() {
    if !kvm_available() {
        return;
    }
    // Under QEMU's Multiboot loader this guest works: ESP points at usable low memory.
    let report = run(&guest_config("stackless", ""));
    let text = serial_text(&report);
    assert_eq!(
        report.stop,
        VmStop::Guest(StopRequest::Exit(0x42)),
        "{text}"
    );
    assert_eq!(text, "stack ok\n");
}
