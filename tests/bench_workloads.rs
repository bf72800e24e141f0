//! Every `hushvm bench` workload runs, as a user runs it (`hushvm bench NAME --json`),
//! with few iterations and one repetition, and its JSON says what the workload did: the
//! guest's own counts, the exits its variants imply, posted writes only where coalescing
//! is on. Timing is not checked (the host is too noisy).
//!
//! Exits are checked on the N-iteration run's own profile: at least the per-iteration
//! count N times, at most that plus the guest's set-up. COM1's exits are left out except
//! for the console workload: whether a posted byte of the guest's own messages exits
//! depends on when the bounded drain last ran (by up to a few hundred exits between two
//! runs, which is also why the report's per-iteration figure, a difference of two runs,
//! is only checked loosely).

mod common;

use serde_json::Value;

use common::{hushvm, kvm_available};

/// By how many exits COM1's part of two runs may differ: about the bytes a guest prints
/// around its workload (at most 209, the tick guest's).
const COM1_NOISE: f64 = 256.0;

/// A field of the guest's result line, and its value for a number of iterations.
type GuestField = (&'static str, fn(u64) -> u64);

/// What one workload's report must show.
struct Expected {
    workload: &'static str,
    /// `--transport` (mmio, the default, for every workload; pci for those that have
    /// PCI variants).
    transport: &'static str,
    iterations: u64,
    /// Guest result fields and their value for `iterations`.
    guest: &'static [GuestField],
    /// Per variant: userspace exits per iteration, at least and at most.
    variants: &'static [(&'static str, f64, f64)],
    /// Exits the guest's set-up may add (measured: about half of this).
    setup: u64,
}

const fn n(iterations: u64) -> u64 {
    iterations
}

const fn zero(_: u64) -> u64 {
    0
}

const EXPECTED: &[Expected] = &[
    Expected {
        workload: "rtc",
        transport: "mmio",
        iterations: 1024,
        guest: &[("iterations", n), ("errors", zero)],
        // out 0x70 and in 0x71; coalesced, only the read exits.
        variants: &[("baseline", 2.0, 2.0), ("coalesced", 1.0, 1.0)],
        setup: 260,
    },
    Expected {
        workload: "eoi",
        transport: "mmio",
        iterations: 256,
        guest: &[("interrupts", n)],
        // The in-kernel LAPIC takes the timer and the EOI: nothing reaches userspace.
        variants: &[
            ("baseline", 0.0, 0.0),
            ("pv-eoi", 0.0, 0.0),
            ("baseline-x2apic", 0.0, 0.0),
            ("pv-eoi-x2apic", 0.0, 0.0),
        ],
        setup: 10,
    },
    Expected {
        workload: "tick",
        transport: "mmio",
        iterations: 256,
        guest: &[("ticks", n), ("interrupts", n)],
        // Per tick the handler writes 0x70 (posted when coalesced) and reads 0x71.
        variants: &[
            ("baseline", 2.0, 2.0),
            ("pv-eoi", 2.0, 2.0),
            ("coalesced", 1.0, 1.0),
            ("all", 1.0, 1.0),
        ],
        setup: 40,
    },
    Expected {
        workload: "doorbell",
        transport: "mmio",
        iterations: 256,
        guest: &[("requests", n), ("completed", n), ("errors", zero)],
        // One doorbell per request: an exit, or an ioeventfd that stays in the kernel.
        variants: &[
            ("mmio-exit", 1.0, 1.0),
            ("mmio-ioeventfd-len4", 0.0, 0.0),
            ("mmio-ioeventfd-len0", 0.0, 0.0),
            ("mmio-ioeventfd-len0-nopoll", 0.0, 0.0),
            ("pio-ioeventfd", 0.0, 0.0),
        ],
        setup: 60,
    },
    Expected {
        workload: "doorbell",
        transport: "pci",
        iterations: 256,
        guest: &[("requests", n), ("completed", n), ("errors", zero)],
        // virtio-pci's notify capability: an MMIO exit or a length-0 ioeventfd; and the
        // I/O-port doorbell on virtio-mmio, the reference. Enumerating PCI adds exits.
        variants: &[
            ("pci-notify-exit", 1.0, 1.0),
            ("pci-notify-len0", 0.0, 0.0),
            ("pci-notify-len0-nopoll", 0.0, 0.0),
            ("mmio-pio-ioeventfd", 0.0, 0.0),
        ],
        setup: 250,
    },
    Expected {
        workload: "blk",
        transport: "mmio",
        iterations: 128,
        // A write and a read per block, and two requests of its own (its ID, a flush).
        guest: &[("requests", |n| 2 * n + 2), ("errors", zero)],
        variants: &[
            ("seq-exit", 2.0, 2.0),
            ("seq-ioeventfd", 0.0, 0.0),
            ("rand-exit", 2.0, 2.0),
            ("rand-ioeventfd", 0.0, 0.0),
        ],
        setup: 70,
    },
    Expected {
        workload: "strio",
        transport: "mmio",
        iterations: 4,
        guest: &[("rounds", n), ("bytes", |_| 4096), ("errors", zero)],
        // 4096 bytes out one exit each (rep outsb), back as 2048 words in 512-word
        // chunks (rep insw): 4100; the loop takes 8192.
        variants: &[("rep", 4100.0, 4100.0), ("loop", 8192.0, 8192.0)],
        setup: 20,
    },
    Expected {
        workload: "console",
        transport: "mmio",
        iterations: 512,
        guest: &[("bytes", n), ("errors", zero)],
        // Unposted: LSR and THR per byte (slow), or an LSR read per 16 THR writes (the
        // FIFO's worth). Posted: the reads still exit, the writes only when the drain
        // has let the zone go.
        variants: &[
            ("slow-baseline", 2.0, 2.0),
            ("slow-posted", 1.0, 2.0),
            ("fifo-baseline", 1.0625, 1.0625),
            ("fifo-posted", 0.0625, 1.0625),
            ("irq-baseline", 1.0625, 1.0625),
            ("irq-posted", 0.0, 1.0625),
        ],
        setup: 300,
    },
    Expected {
        workload: "pci",
        transport: "mmio",
        iterations: 1024,
        guest: &[("reads", n), ("errors", zero)],
        // The address to 0xcf8 (posted when coalesced), the data from 0xcfc.
        variants: &[("baseline", 2.0, 2.0), ("coalesced", 1.0, 1.0)],
        setup: 10,
    },
];

fn expected(workload: &str, transport: &str) -> &'static Expected {
    EXPECTED
        .iter()
        .find(|e| e.workload == workload && e.transport == transport)
        .unwrap_or_else(|| panic!("no expectations for {workload} on {transport}"))
}

fn number(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {value}"))
}

fn count(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {value}"))
}

/// Runs `hushvm bench NAME --transport TRANSPORT` and checks its JSON against
/// [`EXPECTED`].
fn check(name: &str, transport: &str) {
    if !kvm_available() {
        return;
    }
    let expected = expected(name, transport);
    let iterations = expected.iterations.to_string();
    let output = hushvm(&[
        "bench",
        name,
        "--transport",
        transport,
        "--iterations",
        &iterations,
        "--repeat",
        "1",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name}: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(report["workload"], name);
    assert_eq!(count(&report, "iterations"), expected.iterations);
    assert_eq!(count(&report, "repeat"), 1);
    let variants = report["variants"].as_array().expect("variants");
    let names: Vec<&str> = variants.iter().filter_map(|v| v["name"].as_str()).collect();
    let wanted: Vec<&str> = expected.variants.iter().map(|v| v.0).collect();
    assert_eq!(names, wanted, "{name}: the variants, in report order");
    for (variant, &(variant_name, low, high)) in variants.iter().zip(expected.variants) {
        let what = format!("{name}/{variant_name}");
        assert_eq!(
            count(variant, "exit_status"),
            1,
            "{what}: the guest is satisfied"
        );
        for &(key, value) in expected.guest {
            let guest = &variant["guest"];
            assert_eq!(
                count(guest, key),
                value(expected.iterations),
                "{what}: {key}"
            );
        }
        check_exits(expected, variant, (low, high), &what);
        // KVM counts every exit, those that reach userspace too.
        assert!(
            count(variant, "userspace_exits") <= count(variant, "kvm_exits"),
            "{what}"
        );
        let posted = count(variant, "posted_writes");
        match variant["coalesce"].as_bool().expect("coalesce") {
            true => assert!(posted > 0, "{what}: coalesced, yet nothing posted"),
            false => assert_eq!(posted, 0, "{what}: posted without coalescing"),
        }
        assert!(number(variant, "ns_per_iteration").is_finite(), "{what}");
        assert!(variant["profile"].is_object(), "{what}: the profile");
    }
    check_devices(name, expected, variants);
}

/// The N-iteration run's userspace exits (COM1's aside, but for the console workload)
/// within `[low * N, high * N + setup]`; the report's per-iteration figure within
/// [`COM1_NOISE`] / N of `[low, high]`.
fn check_exits(expected: &Expected, variant: &Value, (low, high): (f64, f64), what: &str) {
    let exits = count(variant, "userspace_exits");
    let com1: u64 = variant["profile"]["exits"]
        .as_array()
        .expect("the profile's exits")
        .iter()
        .filter(|exit| (0x3f8..=0x3ff).contains(&count(exit, "addr")))
        .map(|exit| count(exit, "samples"))
        .sum();
    let measured = match expected.workload {
        "console" => exits,
        _ => exits.saturating_sub(com1),
    };
    let iterations = expected.iterations as f64;
    let (least, most) = (low * iterations, high * iterations + expected.setup as f64);
    assert!(
        (least..=most).contains(&(measured as f64)),
        "{what}: {measured} userspace exits, expected {least} to {most}"
    );
    let per_iteration = number(variant, "userspace_exits_per_iteration");
    let noise = COM1_NOISE / iterations;
    assert!(
        (low - noise..=high + noise).contains(&per_iteration),
        "{what}: {per_iteration} userspace exits per iteration, expected about {low} to {high}"
    );
}

/// The counts that devices report: interrupts for the interrupt workloads, doorbells
/// served for the virtio ones.
fn check_devices(name: &str, expected: &Expected, variants: &[Value]) {
    let iterations = expected.iterations;
    for variant in variants {
        let what = format!("{name}/{}", variant["name"]);
        match name {
            "eoi" => assert_eq!(count(variant, "interrupts"), iterations, "{what}"),
            // The RTC's periodic interrupt may fire once more before the guest stops.
            "tick" => {
                let injected = count(variant, "host_interrupts");
                assert!((iterations..=iterations + 2).contains(&injected), "{what}");
            }
            "doorbell" | "blk" => {
                let requests = count(&variant["guest"], "requests");
                let served = count(variant, "virtio_notifications");
                assert!((1..=requests).contains(&served), "{what}: {served} served");
                // On virtio-pci the doorbell guest asks for no interrupt (no MSI-X
                // vector on its queue); on virtio-mmio each used buffer raises one.
                if expected.transport == "mmio" {
                    assert!(count(variant, "virtio_interrupts") >= served, "{what}");
                }
            }
            _ => assert_eq!(count(variant, "virtio_notifications"), 0, "{what}"),
        }
    }
}

#[test]
fn every_workload_and_variant_has_expectations() {
    let mut runs = Vec::new();
    for workload in hushvm::bench::WORKLOADS {
        if workload.net {
            // Needs a tap: tests/net.rs runs it in a namespace of its own.
            continue;
        }
        let transports = [
            ("mmio", Some(workload.variants)),
            ("pci", workload.pci_variants),
        ];
        for (transport, variants) in transports {
            let Some(variants) = variants else { continue };
            let names: Vec<&str> = variants.iter().map(|v| v.name).collect();
            let expected: Vec<&str> = expected(workload.name, transport)
                .variants
                .iter()
                .map(|v| v.0)
                .collect();
            assert_eq!(names, expected, "{} on {transport}", workload.name);
            runs.push((workload.name, transport));
        }
    }
    let covered: Vec<_> = EXPECTED.iter().map(|e| (e.workload, e.transport)).collect();
    assert_eq!(runs, covered, "one test below per workload and transport");
}

#[test]
fn bench_rtc() {
    check("rtc", "mmio");
}

#[test]
fn bench_eoi() {
    check("eoi", "mmio");
}

#[test]
fn bench_tick() {
    check("tick", "mmio");
}

#[test]
fn bench_doorbell() {
    check("doorbell", "mmio");
}

#[test]
fn bench_doorbell_on_pci() {
    check("doorbell", "pci");
}

#[test]
fn bench_blk() {
    check("blk", "mmio");
}

#[test]
fn bench_strio() {
    check("strio", "mmio");
}

#[test]
fn bench_console() {
    check("console", "mmio");
}

#[test]
fn bench_pci() {
    check("pci", "mmio");
}
