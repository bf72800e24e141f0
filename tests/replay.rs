//! Exit traces as regression tests: traces recorded from the rtc, tick, eoi and doorbell
//! workloads (tests/traces/) replay through fresh devices with no KVM and must match
//! every read. With KVM, fresh recordings must replay with zero divergence too;
//! HUSHVM_RECORD_TRACES=1 then refreshes tests/traces/ after a deliberate device change.

mod common;

use hushvm::bus::StopRequest;
use std::path::PathBuf;
use std::process::Command;

use common::{guest_config, kvm_available, run};
use hushvm::bus::{Access, AddressSpace};
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
    for (name, data, expected) in cases {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_hushvm"))
            .args(["replay", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
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
            hushvm::vcpu::VmStop::Guest(StopRequest::Exit(0)),
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
