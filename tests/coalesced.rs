//! Coalesced PIO end to end: the index port's writes stop exiting, and nothing the guest
//! can observe changes.

mod common;

use common::{guest_config, kvm_available, run};
use hushvm::bus::StopRequest;
use hushvm::machine::{Coalescing, RunReport};
use hushvm::profile::{ExitKey, ExitKind};
use hushvm::run_loop::VmStop;

/// The rtc guest first programs 64 NVRAM bytes (64 index writes, 64 data writes).
const SETUP_INDEX_WRITES: u64 = 64;

fn rtc_run(iterations: u64, coalesce: bool) -> RunReport {
    let mut config = guest_config("rtc", &format!("iterations={iterations}"));
    config.cures.coalesce = coalesce;
    run(&config)
}

fn count(report: &RunReport, kind: ExitKind, addr: u64) -> u64 {
    report.profile.count(|k| *k == ExitKey { kind, addr })
}

#[test]
fn without_coalescing_every_index_write_exits() {
    if !kvm_available() {
        return;
    }
    let report = rtc_run(500, false);
    assert_eq!(
        report.stop,
        VmStop::Guest(StopRequest::Exit(0)),
        "the guest checked every value"
    );
    assert_eq!(report.coalescing, Coalescing::Off);
    assert_eq!(
        count(&report, ExitKind::PioOut, 0x70),
        500 + SETUP_INDEX_WRITES
    );
    assert_eq!(count(&report, ExitKind::PioIn, 0x71), 500);
    assert_eq!(report.profile.posted_writes, 0);
}

#[test]
fn with_coalescing_index_writes_are_posted_and_applied_in_order() {
    if !kvm_available() {
        return;
    }
    // No timeout: the vCPU runs on the calling thread (the other tests use a watchdog).
    let mut config = guest_config("rtc", "iterations=500");
    config.run.timeout = None;
    let report = run(&config);
    assert_eq!(
        report.stop,
        VmStop::Guest(StopRequest::Exit(0)),
        "every read saw its own index"
    );
    assert_eq!(
        report.coalescing,
        Coalescing::On(vec![(0x70, 1), (0x3f8, 1), (0xcf8, 4)]),
        "the RTC index, COM1's THR (registered on first use) and the PCI configuration address"
    );
    assert_eq!(
        count(&report, ExitKind::PioOut, 0x70),
        0,
        "no index write exits"
    );
    assert_eq!(count(&report, ExitKind::PioIn, 0x71), 500);
    // THR is registered on its first write, which exits (and again after 20 ms with no
    // output, which this guest does not pause for, except on a starved host).
    let printed = report.serial.len() as u64;
    let thr_exits = count(&report, ExitKind::PioOut, 0x3f8);
    assert!((1..=3).contains(&thr_exits), "{thr_exits}");
    assert_eq!(
        report.profile.posted_writes + thr_exits,
        500 + SETUP_INDEX_WRITES + printed,
        "every index write, and every byte the guest printed but the activating ones"
    );
}

/// The seed's ordering rule, observed from the guest: the same guest, with and without
/// `--no-coalesce`, prints the same, exits the same and leaves the RTC the same.
#[test]
fn coalescing_changes_nothing_the_guest_or_the_devices_can_see() {
    if !kvm_available() {
        return;
    }
    for cmdline in ["action=nvram", "action=info", "action=exit code=3"] {
        let mut off = guest_config("probe", cmdline);
        off.cures.coalesce = false;
        let mut on = guest_config("probe", cmdline);
        on.cures.coalesce = true;
        let (off, on) = (run(&off), run(&on));
        assert_eq!(off.serial, on.serial, "{cmdline}: serial output");
        assert_eq!(off.stop, on.stop, "{cmdline}: exit");
        // Register C's flags follow the wall clock (an update-ended flag each second a
        // run happens to span), not coalescing: compare everything else.
        let (mut off_rtc, mut on_rtc) = (off.rtc.clone(), on.rtc.clone());
        off_rtc.cmos[0x0c] = 0;
        on_rtc.cmos[0x0c] = 0;
        assert_eq!(off_rtc, on_rtc, "{cmdline}: RTC state");
    }
    let (off, on) = (rtc_run(300, false), rtc_run(300, true));
    let without_tsc = |serial: &[u8]| {
        String::from_utf8_lossy(serial)
            .split_whitespace()
            .filter(|w| !w.starts_with("tsc="))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(without_tsc(&off.serial), without_tsc(&on.serial));
    assert_eq!(off.stop, on.stop);
    assert_eq!(off.rtc, on.rtc);
}

#[test]
fn the_nvram_guest_is_checked_by_its_checksum() {
    if !kvm_available() {
        return;
    }
    let report = run(&guest_config("probe", "action=nvram"));
    let text = common::serial_text(&report);
    // The guest's last round wrote i * 3 + 7 to every byte from 0x0e, except where the
    // RTC keeps time (0x32 is the century, derived from the clock).
    let state = &report.rtc;
    for index in 0x0eusize..0x80 {
        if index != 0x32 {
            assert_eq!(
                state.cmos[index],
                (index as u8).wrapping_mul(3).wrapping_add(7),
                "{index:#x}"
            );
        }
    }
    assert!(
        !state.nmi_disabled,
        "round 3 writes indexes without the NMI bit"
    );
    assert!(text.contains("nvram checksum="), "{text}");
}
