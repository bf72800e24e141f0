//! Pause and resume (machine::VmControl) while guests run their loops: the guests'
//! results are those of an uninterrupted run; stop and `--timeout` end a paused VM;
//! misuse is an error. And `hushvm bench pause` runs and prints its JSON.

mod common;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::{guest_config, kvm_available, run, serial_text};
use hushvm::bench::{guest_fields, run_pausing, Pacing, PausedRun};
use hushvm::bus::StopRequest;
use hushvm::config::DiskConfig;
use hushvm::machine::{self, ControlError, MachineConfig, VmControl};
use hushvm::run_loop::VmStop;

/// Pauses every few milliseconds until the guest stops.
const OFTEN: Pacing = Pacing {
    every: Duration::from_millis(3),
    hold: Duration::from_millis(2),
    limit: usize::MAX,
    stop_after: false,
};

fn pausing(config: &MachineConfig) -> PausedRun {
    run_pausing(config, OFTEN).expect("the machine runs")
}

fn exits_at(report: &machine::RunReport, port: u64) -> u64 {
    report.profile.count(|k| k.addr == port)
}

#[test]
fn the_rtc_guest_reads_every_value_right_across_pauses_with_one_and_two_vcpus() {
    if !kvm_available() {
        return;
    }
    for cpus in [1, 2] {
        let mut config = guest_config("rtc", "iterations=20000");
        config.vcpus.count = cpus;
        let plain = run(&config);
        let paused = pausing(&config);
        let text = serial_text(&paused.report);
        assert_eq!(paused.report.stop, plain.stop, "{text}");
        assert_eq!(paused.report.stop, VmStop::Guest(StopRequest::Exit(0)));
        let (fields, expected) = (
            guest_fields(&paused.report.serial, "rtc:"),
            guest_fields(&plain.serial, "rtc:"),
        );
        assert_eq!(fields["errors"], 0, "{text}");
        assert_eq!(fields["iterations"], expected["iterations"]);
        // Every IN reached userspace once: none lost, none repeated by a pause.
        assert_eq!(exits_at(&paused.report, 0x71), exits_at(&plain, 0x71));
        assert!(
            paused.pauses.len() >= 3,
            "{cpus} vCPUs: only {} pauses landed while the guest ran",
            paused.pauses.len()
        );
        assert!(paused.pauses.iter().all(|p| p.vcpus_out <= p.quiet));
    }
}

#[test]
fn the_tick_guest_gets_every_injected_tick_once_across_pauses() {
    if !kvm_available() {
        return;
    }
    for cpus in [1, 2] {
        let mut config = guest_config("tick", "ticks=256");
        config.vcpus.count = cpus;
        let paused = pausing(&config);
        let report = &paused.report;
        let text = serial_text(report);
        assert_eq!(report.stop, VmStop::Guest(StopRequest::Exit(0)), "{text}");
        let guest = guest_fields(&report.serial, "tick:");
        // Ticks were pending at pauses (the timer keeps running on the host); each one
        // the host injected reached the guest exactly once, and none came as a storm.
        assert_eq!(guest["interrupts"], report.interrupts_on("rtc"), "{text}");
        assert!(guest["interrupts"] >= 256);
        // The guest stops counting at 256 (and lets in one late edge).
        assert!(guest["interrupts"] <= 256 + 2, "{text}");
        assert_eq!(guest["skipped"] + guest["written"], guest["interrupts"]);
        assert!(paused.pauses.len() >= 3, "{} pauses", paused.pauses.len());
    }
}

fn scratch_disk(name: &str, bytes: u64) -> PathBuf {
    let path = common::scratch_dir().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    path
}

#[test]
fn the_blk_guest_reads_back_what_it_wrote_across_pauses() {
    if !kvm_available() {
        return;
    }
    let path = scratch_disk("pause-blk.img", 4 << 20);
    let mut config = guest_config("blk", "requests=256 pattern=rand");
    config.devices.disks = vec![DiskConfig::new(path.clone())];
    let paused = pausing(&config);
    let report = &paused.report;
    let text = serial_text(report);
    assert_eq!(report.stop, VmStop::Guest(StopRequest::Exit(0)), "{text}");
    let fields = guest_fields(&report.serial, "blk:");
    assert_eq!(fields["errors"], 0, "{text}");
    assert_eq!(fields["requests"], 2 * 256 + 2);
    assert!(paused.pauses.len() >= 3, "{} pauses", paused.pauses.len());
    let _ = std::fs::remove_file(path);
}

/// Runs `config` under `control` on a thread; returns its join handle.
fn start(
    config: MachineConfig,
    control: &VmControl,
) -> thread::JoinHandle<Result<machine::RunReport, machine::MachineError>> {
    let control = control.clone();
    thread::spawn(move || machine::run_controlled(&config, &control))
}

#[test]
fn a_paused_vm_stops_when_asked_with_one_and_two_vcpus() {
    if !kvm_available() {
        return;
    }
    for cpus in [1, 2] {
        let mut config = guest_config("rtc", "iterations=100000000");
        config.vcpus.count = cpus;
        let control = VmControl::new();
        let machine = start(config, &control);
        control.pause().expect("pause");
        assert!(control.is_paused());
        assert_eq!(control.pause().unwrap_err(), ControlError::AlreadyPaused);
        thread::sleep(Duration::from_millis(20));
        assert!(!machine.is_finished(), "a paused VM goes on existing");
        let asked = Instant::now();
        control.stop().expect("stop");
        let report = machine.join().unwrap().expect("the machine ran");
        assert_eq!(report.stop, VmStop::Requested);
        assert!(asked.elapsed() < Duration::from_secs(5));
        assert_eq!(control.resume().unwrap_err(), ControlError::NotRunning);
        assert_eq!(control.pause().unwrap_err(), ControlError::NotRunning);
    }
}

#[test]
fn the_timeout_ends_a_paused_vm() {
    if !kvm_available() {
        return;
    }
    let mut config = guest_config("rtc", "iterations=100000000");
    config.run.timeout = Some(Duration::from_millis(300));
    let control = VmControl::new();
    let machine = start(config, &control);
    control.pause().expect("pause");
    let report = machine.join().unwrap().expect("the machine ran");
    assert_eq!(report.stop, VmStop::Timeout);
}

#[test]
fn resume_without_a_pause_is_an_error() {
    if !kvm_available() {
        return;
    }
    let unused = VmControl::new();
    assert_eq!(unused.resume().unwrap_err(), ControlError::NotRunning);
    let control = VmControl::new();
    let machine = start(guest_config("rtc", "iterations=100000000"), &control);
    control.pause().expect("pause");
    control.resume().expect("resume");
    assert_eq!(control.resume().unwrap_err(), ControlError::NotPaused);
    control.stop().expect("stop");
    let report = machine.join().unwrap().expect("the machine ran");
    assert_eq!(report.stop, VmStop::Requested);
}

#[test]
fn bench_pause_prints_its_json() {
    if !kvm_available() {
        return;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args([
            "bench",
            "pause",
            "--iterations",
            "3",
            "--repeat",
            "1",
            "--json",
        ])
        .output()
        .expect("hushvm runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["workload"], "pause");
    let variants = report["variants"].as_array().expect("variants");
    let vcpus: Vec<_> = variants.iter().map(|v| v["vcpus"].as_u64()).collect();
    assert_eq!(vcpus, [Some(1), Some(2)]);
    for variant in variants {
        assert_eq!(variant["pauses"], 3, "{variant}");
        let median = variant["vcpus_out_median_ns"].as_u64().expect("a median");
        assert!(median > 0 && median <= variant["vcpus_out_max_ns"].as_u64().unwrap());
        assert!(
            variant["quiet_median_ns"].as_u64().unwrap()
                >= variant["vcpus_out_min_ns"].as_u64().unwrap()
        );
    }
}
