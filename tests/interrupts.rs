//! Interrupts end to end: irqfd lines from the UART and the RTC, the LAPIC timer, the
//! CPUID leaves that advertise PV EOI, and several vCPUs.

mod common;

use common::{field, guest_config, kvm_available, run, serial_text};
use hushvm::bench::guest_fields;
use hushvm::bus::StopRequest;
use hushvm::run_loop::VmStop;

#[test]
fn the_uart_interrupt_reaches_the_guest_through_the_ioapic() {
    if !kvm_available() {
        return;
    }
    let report = run(&guest_config("probe", "action=uart"));
    let text = serial_text(&report);
    assert_eq!(
        report.stop,
        VmStop::Guest(StopRequest::Exit(0x15)),
        "{text}"
    );
    let seen: u64 = field(&text, "uart_thre_interrupts").parse().unwrap();
    assert!(seen >= 1);
    assert!(
        report.interrupts_on("com1") >= seen,
        "host sent {} edges",
        report.interrupts_on("com1")
    );
}

#[test]
fn every_rtc_tick_the_host_injects_reaches_the_guest_exactly_once() {
    if !kvm_available() {
        return;
    }
    for coalesce in [false, true] {
        let mut config = guest_config("tick", "ticks=64");
        config.cures.coalesce = coalesce;
        let report = run(&config);
        assert_eq!(
            report.stop,
            VmStop::Guest(StopRequest::Exit(0)),
            "{}",
            serial_text(&report)
        );
        let guest = guest_fields(&report.serial, "tick:");
        assert_eq!(
            guest["interrupts"],
            report.interrupts_on("rtc"),
            "guest count against host count"
        );
        assert!(guest["interrupts"] >= 64);
        assert_eq!(guest["skipped"] + guest["written"], guest["interrupts"]);
        // Each tick reads register C through 0x70/0x71: with coalescing only the read exits.
        let exits_71 = report.profile.count(|k| k.addr == 0x71);
        let exits_70 = report.profile.count(|k| k.addr == 0x70);
        assert!(exits_71 >= 64);
        assert_eq!(exits_70 == 0, coalesce, "0x70 exits: {exits_70}");
    }
}

#[test]
fn the_lapic_timer_drives_the_eoi_workload_in_xapic_and_x2apic_mode() {
    if !kvm_available() {
        return;
    }
    for (mode, pv_eoi) in [("xapic", true), ("xapic", false), ("x2apic", true)] {
        let mut config = guest_config("eoi", &format!("interrupts=50 mode={mode}"));
        config.cures.pv_eoi = pv_eoi;
        let report = run(&config);
        let text = serial_text(&report);
        if report.stop == VmStop::Guest(StopRequest::Exit(4)) {
            eprintln!("x2apic not offered by this host: {text}");
            continue;
        }
        assert_eq!(report.stop, VmStop::Guest(StopRequest::Exit(0)), "{text}");
        let guest = guest_fields(&report.serial, "eoi:");
        assert_eq!(guest["interrupts"], 50, "{text}");
        assert_eq!(guest["pv_eoi"], u64::from(pv_eoi), "{text}");
        assert_eq!(guest["skipped"] + guest["written"], 50);
        if !pv_eoi {
            assert_eq!(guest["written"], 50, "without PV EOI every EOI is written");
        }
    }
}

#[test]
fn cpuid_advertises_pv_eoi_unless_told_not_to() {
    if !kvm_available() {
        return;
    }
    for pv_eoi in [true, false] {
        let mut config = guest_config("probe", "action=cpuid");
        config.cures.pv_eoi = pv_eoi;
        let report = run(&config);
        let text = serial_text(&report);
        assert_eq!(
            report.stop,
            VmStop::Guest(StopRequest::Exit(0x14)),
            "{text}"
        );
        assert_eq!(field(&text, "kvm_signature"), "[KVMKVMKVM]");
        assert_eq!(field(&text, "kvm_max_leaf"), (0x4000_0001u32).to_string());
        assert_eq!(field(&text, "pv_eoi"), if pv_eoi { "1" } else { "0" });
        assert_eq!(field(&text, "apic_id"), "0");
    }
}

#[test]
fn application_processors_start_on_init_sipi_and_profiles_merge() {
    if !kvm_available() {
        return;
    }
    let mut config = guest_config("probe", "action=smp");
    config.vcpus.count = 2;
    let report = run(&config);
    let text = serial_text(&report);
    assert_eq!(
        report.stop,
        VmStop::Guest(StopRequest::Exit(0x17)),
        "{text}"
    );
    assert_eq!(field(&text, "smp cpus"), "2", "fw_cfg reports --cpus");
    assert_eq!(
        field(&text, "smp aps_up"),
        "1",
        "the AP ran its start-up code"
    );
    assert_eq!(report.cpus, 2);
    assert!(report.kvm_stats["exits"] >= report.profile.total_exits());
}

#[test]
fn more_vcpus_than_kvm_allows_is_an_error() {
    if !kvm_available() {
        return;
    }
    let mut config = guest_config("probe", "action=exit");
    config.vcpus.count = 255;
    let error = hushvm::machine::run(&config).unwrap_err().to_string();
    assert!(error.contains("--cpus 255"), "{error}");
}
