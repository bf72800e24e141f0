//! The console workload (issue 11): COM1 output in Linux's three patterns, with and
//! without THR writes posted; the output must arrive complete and in order, and posting
//! must take the byte's exit away.

mod common;

use common::{guest_config, kvm_available, run};
use hushvm::bench::guest_fields;
use hushvm::bus::StopRequest;
use hushvm::profile::ExitKind;
use hushvm::run_loop::VmStop;

/// The payload the guest prints: byte i is '\n' every 64th, else 'A' + i % 26.
fn expected(bytes: u32) -> Vec<u8> {
    (0..bytes)
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                b'A' + (i % 26) as u8
            }
        })
        .collect()
}

/// Runs the console guest; returns the payload it printed and the THR write exits.
fn console(pattern: &str, bytes: u32, posted: bool) -> (Vec<u8>, u64, String) {
    console_with(&format!("bytes={bytes} pattern={pattern}"), bytes, posted)
}

/// The same, with the guest's whole command line (`bytes` must match it).
fn console_with(cmdline: &str, bytes: u32, posted: bool) -> (Vec<u8>, u64, String) {
    let mut config = guest_config("console", cmdline);
    config.cures.coalesce = posted;
    let report = run(&config);
    let text = String::from_utf8_lossy(&report.serial).into_owned();
    assert_eq!(
        report.stop,
        VmStop::Guest(StopRequest::Exit(0)),
        "{cmdline}: {text}"
    );
    let begin = b"console-begin\n";
    let start = report
        .serial
        .windows(begin.len())
        .position(|w| w == begin)
        .expect("the begin marker")
        + begin.len();
    let payload = report.serial[start..start + bytes as usize].to_vec();
    let thr_exits = report
        .profile
        .count(|key| key.kind == ExitKind::PioOut && key.addr == 0x3f8);
    (payload, thr_exits, text)
}

#[test]
fn every_pattern_prints_everything_in_order_posted_or_not() {
    if !kvm_available() {
        return;
    }
    for pattern in ["slow", "fifo", "irq"] {
        for posted in [false, true] {
            let (payload, thr_exits, text) = console(pattern, 300, posted);
            assert_eq!(payload, expected(300), "{pattern} posted={posted}");
            if posted {
                // THR is registered on its first write, which exits ("console-begin"'s
                // 'c'); it may go idle again only if the guest pauses 20 ms.
                assert!(
                    (1..=3).contains(&thr_exits),
                    "{pattern}: THR writes exit only to activate: {thr_exits}"
                );
            } else {
                assert!(thr_exits >= 300, "{pattern}: {thr_exits}");
            }
            if pattern == "irq" {
                let fields = guest_fields(text.as_bytes(), "console:");
                let interrupts = fields["interrupts"];
                assert!(interrupts >= 300 / 16, "{pattern} posted={posted}: {text}");
            }
        }
    }
}

#[test]
fn a_stop_right_after_a_burst_loses_no_posted_byte() {
    if !kvm_available() {
        return;
    }
    // The guest's last bytes are posted; the debug-exit write that ends the run comes
    // next, and the exit path applies the ring before it.
    let (payload, thr_exits, _) = console("fifo", 16, true);
    assert_eq!(payload, expected(16));
    assert!((1..=3).contains(&thr_exits), "{thr_exits}");
}

#[test]
fn output_after_the_bounded_drain_went_idle_still_arrives_in_order() {
    if !kvm_available() {
        return;
    }
    // Half the payload, 100 ms with no output (the drain deactivates THR's zone after 20
    // idle periods of 1 ms), then the rest: its first byte exits and activates the zone
    // again.
    for pattern in ["slow", "fifo"] {
        let cmdline = format!("bytes=200 pattern={pattern} gap_ms=100");
        let (payload, thr_exits, text) = console_with(&cmdline, 200, true);
        assert_eq!(payload, expected(200), "{pattern}: {text}");
        assert!(thr_exits >= 2, "{pattern}: activated again: {thr_exits}");
        assert!(thr_exits <= 6, "{pattern}: {thr_exits}");
    }
}
