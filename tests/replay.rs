//! Exit traces as regression tests: traces recorded from the rtc, tick, eoi and doorbell
//! workloads (tests/traces/) replay through fresh devices with no KVM and must match
//! every read. With KVM, fresh recordings must replay with zero divergence too;
//! HUSHVM_RECORD_TRACES=1 then refreshes tests/traces/ after a deliberate device change.

mod common;

use hushvm::bus::StopRequest;
use std::path::PathBuf;
use std::process::Command;

use common::{guest_config, kvm_available, run};
use hushvm::advise::{advise, Verdict};
use hushvm::bus::{Access, AddressSpace};
use hushvm::config::Doorbell;
use hushvm::machine::MachineConfig;
use hushvm::replay::{decode, replay, replay_with};
use hushvm::trace::format::{ExitDirection, Record};

const TRACES: &[&str] = &["rtc", "tick", "eoi", "doorbell"];

fn trace_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/traces")
        .join(format!("{name}.trace"))
}

fn committed(name: &str) -> Vec<u8> {
    std::fs::read(trace_path(name)).expect("committed trace")
}

#[test]
fn committed_traces_replay_without_divergence() {
    for name in TRACES {
        let report = replay(&committed(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.exits > 100, "{name}: {} exits", report.exits);
        assert_eq!(
            report.divergences, 0,
            "{name}: {:?}",
            report.first_divergence
        );
    }
}

/// The NVRAM index the RTC holds when the exit numbered `target` (1-based) runs.
fn index_before(records: &[Record], target: u64) -> u8 {
    let (mut exits, mut index) = (0u64, 0u8);
    for record in records {
        match record {
            Record::PostedWrite {
                addr: 0x70, data, ..
            } => index = data[0] & 0x7f,
            Record::Exit {
                direction,
                addr,
                data,
                ..
            } => {
                exits += 1;
                if exits == target {
                    return index;
                }
                if *direction == ExitDirection::PioOut && *addr == 0x70 {
                    index = data[0] & 0x7f;
                }
            }
            _ => {}
        }
    }
    panic!("no exit {target}");
}

#[test]
fn a_changed_device_is_caught_at_the_right_exit() {
    let bytes = committed("rtc");
    let (_, records) = decode(&bytes).unwrap();
    // Change the RTC after exit 300: the first later read of 0x71 must see it.
    let reads_0x71: Vec<u64> = records
        .iter()
        .filter(|r| matches!(r, Record::Exit { .. }))
        .enumerate()
        .filter(|(_, r)| {
            matches!(
                r,
                Record::Exit {
                    direction: ExitDirection::PioIn,
                    addr: 0x71,
                    ..
                }
            )
        })
        .map(|(i, _)| i as u64 + 1)
        .collect();
    let target = *reads_0x71.iter().find(|n| **n > 300).unwrap();
    let index = index_before(&records, target);
    let report = replay_with(&bytes, &mut |replayed, machine| {
        if replayed == 300 {
            // Overwrite the NVRAM byte that exit `target` reads, then restore the index.
            let buses = machine.buses();
            buses.dispatch(AddressSpace::Pio, 0x70, Access::Write(&[index]));
            buses.dispatch(AddressSpace::Pio, 0x71, Access::Write(&[0xee]));
        }
    })
    .unwrap();
    let divergence = report.first_divergence.expect("the change is caught");
    assert_eq!(divergence.exit, target);
    assert_eq!(divergence.access, "0x71:PIN");
    assert_eq!(divergence.got, vec![0xee]);
    assert_ne!(divergence.expected, vec![0xee]);
}

#[test]
fn truncated_and_corrupt_traces_are_clear_errors() {
    let bytes = committed("rtc");
    let dir = std::env::temp_dir().join(format!("hushvm-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut corrupt_tag = bytes.clone();
    corrupt_tag[38] = 0xee; // the first record's tag, right after the 38-byte header
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            bytes[..bytes.len() - 3].to_vec(),
            "truncated trace",
        ),
        ("header-only", bytes[..12].to_vec(), "truncated trace"),
        ("not-a-trace", b"#!/bin/sh\n".to_vec(), "not a hushvm trace"),
        ("corrupt", corrupt_tag, "corrupt trace"),
    ];
    for ((name, data, expected), command) in cases
        .into_iter()
        .flat_map(|case| [(case.clone(), "replay"), (case, "advise")])
    {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_hushvm"))
            .args([command, path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command} {name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{name}: expected {expected:?} in {stderr}"
        );
    }
}

#[test]
fn replay_prints_json() {
    let output = Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args(["replay", trace_path("tick").to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["divergences"], 0);
    assert!(json["exits"].as_u64().unwrap() > 100);
    assert!(json["exits_per_second"].as_f64().unwrap() > 0.0);
    assert!(json["ns_per_exit"].as_f64().unwrap() > 0.0);
}

#[test]
fn fresh_recordings_replay_without_divergence() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hushvm-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let workloads = [
        ("rtc", "rtc", "iterations=500", false),
        ("tick", "tick", "ticks=64", false),
        ("eoi", "eoi", "interrupts=50", false),
        ("doorbell", "doorbell", "requests=50", true),
    ];
    for (name, guest, cmdline, rng) in workloads {
        let mut config = guest_config(guest, cmdline);
        config.devices.rng = rng;
        config.run.record = Some(dir.join(format!("{name}.trace")));
        let report = run(&config);
        assert_eq!(
            report.stop,
            hushvm::run_loop::VmStop::Guest(StopRequest::Exit(0)),
            "{name}"
        );
        let bytes = std::fs::read(config.run.record.as_ref().unwrap()).unwrap();
        let replayed = replay(&bytes).unwrap();
        assert_eq!(
            replayed.exits,
            report.profile.total_exits(),
            "{name}: every exit was recorded"
        );
        assert_eq!(
            replayed.divergences, 0,
            "{name}: {:?}",
            replayed.first_divergence
        );
        if std::env::var("HUSHVM_RECORD_TRACES").as_deref() == Ok("1") {
            std::fs::write(trace_path(name), &bytes).unwrap();
        }
    }
}

#[test]
fn the_advisor_judges_the_committed_traces() {
    for name in TRACES {
        let advice = advise(&committed(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(advice.divergences, 0, "{name}");
        assert_eq!(advice.contradictions().count(), 0, "{name}");
        let verdict = |device, offset, size| {
            let row = advice.register(device, offset, size);
            row.unwrap_or_else(|| panic!("{name}: no {device}+{offset}"))
                .verdict
        };
        assert_eq!(
            verdict("com1", 0, 1),
            Some(Verdict::TimeBound),
            "{name}: THR"
        );
        assert_eq!(
            verdict("isa-debug-exit", 0, 1),
            Some(Verdict::Never),
            "{name}"
        );
        if matches!(*name, "rtc" | "tick") {
            assert_eq!(verdict("rtc", 0, 1), Some(Verdict::Latch), "{name}: index");
        }
    }
    let tick = advise(&committed("tick")).unwrap();
    let data = tick.register("rtc", 1, 1).unwrap();
    assert_eq!(
        data.verdict,
        Some(Verdict::TimeBound),
        "register A/B writes re-arm"
    );
    // The doorbell workload's doorbells were ioeventfds: no QueueNotify exit to judge.
    let doorbell = advise(&committed("doorbell")).unwrap();
    assert!(doorbell.register("virtio-rng", 0x50, 4).is_none());
    assert_eq!(doorbell.ioeventfd_doorbells, 50);
}

#[test]
fn advise_prints_a_table_and_json() {
    let hushvm = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_hushvm"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let (rtc, tick) = (trace_path("rtc"), trace_path("tick"));
    let table = hushvm(&["advise", rtc.to_str().unwrap()]);
    let index = table
        .lines()
        .find(|l| l.starts_with("rtc 0x70+0 "))
        .unwrap();
    assert!(index.contains(" latch "), "{table}");
    let json = hushvm(&[
        "advise",
        rtc.to_str().unwrap(),
        tick.to_str().unwrap(),
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["traces"], 2);
    let rows = json["registers"].as_array().unwrap();
    let data = rows
        .iter()
        .find(|row| row["register"] == "rtc 0x70+0x1 (1 byte)")
        .unwrap();
    assert_eq!(data["verdict"], "time-bound", "tick's timer writes count");
}

#[test]
fn the_advisor_rejects_what_must_exit_on_fresh_recordings() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hushvm-advise-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let record = |name: &str, guest: &str, cmdline: &str, edit: &dyn Fn(&mut MachineConfig)| {
        let mut config = guest_config(guest, cmdline);
        edit(&mut config);
        config.run.record = Some(dir.join(format!("{name}.trace")));
        run(&config);
        advise(&std::fs::read(config.run.record.as_ref().unwrap()).unwrap()).unwrap()
    };
    let rtc = record("rtc", "rtc", "iterations=100", &|c| {
        c.cures.coalesce = false
    });
    let index = rtc.register("rtc", 0, 1).unwrap();
    assert_eq!(index.verdict, Some(Verdict::Latch));
    assert!(index.exits_saved >= 100 && index.exits_saved == index.writes);
    let doorbell = record("doorbell", "doorbell", "requests=20", &|c| {
        c.devices.rng = true;
        c.cures.doorbell = Doorbell::Exit;
    });
    let notify = doorbell.register("virtio-rng", 0x50, 4).unwrap();
    assert_eq!((notify.verdict, notify.writes), (Some(Verdict::Never), 20));
    let stops = [
        ("reset", "i8042", 4, 1),
        ("cf9reset", "pci-config", 1, 1),
        ("poweroff", "acpi-pm1-control", 0, 2),
    ];
    for (action, device, offset, size) in stops {
        let advice = record(action, "probe", &format!("action={action}"), &|_| {});
        let row = advice.register(device, offset, size).unwrap();
        assert_eq!(row.verdict, Some(Verdict::Never), "{action}");
    }
}
