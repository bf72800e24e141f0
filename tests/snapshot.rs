//! Snapshots: a guest snapshotted mid-run, its machine stopped, then restored into new
//! machines that finish its run: the results are an uninterrupted run's. And what a
//! create or a restore refuses.

mod common;

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use common::{guest_config, kvm_available, run, scratch_dir, serial_text};
use hushvm::bench::guest_fields;
use hushvm::bus::StopRequest;
use hushvm::machine::{self, ControlError, MachineConfig, MachineSnapshotError, VmControl};
use hushvm::run_loop::VmStop;
use hushvm::snapshot::SnapshotPaths;

fn snapshot_dir(name: &str) -> PathBuf {
    let dir = scratch_dir().join(format!("snapshot-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `config`, pauses it after `after`, snapshots it into `paths` and stops it.
/// Returns what the first machine printed before it stopped.
fn snapshot_mid_run(config: &MachineConfig, after: Duration, paths: &SnapshotPaths) -> String {
    let control = VmControl::new();
    thread::scope(|scope| {
        let machine = scope.spawn(|| machine::run_controlled(config, &control));
        thread::sleep(after);
        control
            .pause()
            .expect("the guest is still running at the pause");
        let created = machine::create_snapshot(&control, paths).expect("a snapshot");
        assert!(created.memory.written > 0 && created.memory.written < created.memory.size);
        assert!(created.state_bytes > 0);
        control.stop().unwrap();
        let report = machine.join().unwrap().expect("the first machine ran");
        assert_eq!(report.stop, VmStop::Requested);
        serial_text(&report)
    })
}

fn restore(config: &MachineConfig, paths: &SnapshotPaths) -> machine::RunReport {
    machine::restore_controlled(config, paths, true, &VmControl::new()).expect("a restored run")
}

#[test]
fn the_rtc_guest_restored_from_a_mid_run_snapshot_finishes_as_an_uninterrupted_run() {
    if !kvm_available() {
        return;
    }
    for cpus in [1, 2] {
        let mut config = guest_config("rtc", "iterations=20000");
        config.vcpus.count = cpus;
        let plain = run(&config);
        let paths = SnapshotPaths::in_dir(&snapshot_dir(&format!("rtc-{cpus}")));
        let before = snapshot_mid_run(&config, Duration::from_millis(60), &paths);
        assert!(
            !before.contains("rtc:"),
            "the guest finished first: {before}"
        );
        let memory_before = std::fs::read(&paths.memory).unwrap();
        // The sandbox pattern: the same snapshot restored more than once, each copy on its
        // own; none writes to the memory file.
        for copy in 0..2 {
            let restored = restore(&config, &paths);
            let text = serial_text(&restored);
            assert_eq!(
                restored.stop,
                VmStop::Guest(StopRequest::Exit(0)),
                "{cpus} vCPUs, copy {copy}: {text}"
            );
            let fields = guest_fields(&restored.serial, "rtc:");
            let expected = guest_fields(&plain.serial, "rtc:");
            assert_eq!(fields["errors"], 0, "{text}");
            assert_eq!(fields["iterations"], expected["iterations"]);
        }
        assert!(std::fs::read(&paths.memory).unwrap() == memory_before);
    }
}

#[test]
fn the_tick_guest_restored_gets_its_ticks() {
    if !kvm_available() {
        return;
    }
    let config = guest_config("tick", "ticks=256");
    let paths = SnapshotPaths::in_dir(&snapshot_dir("tick"));
    let before = snapshot_mid_run(&config, Duration::from_millis(100), &paths);
    assert!(
        !before.contains("tick:"),
        "the guest finished first: {before}"
    );
    let restored = restore(&config, &paths);
    let text = serial_text(&restored);
    assert_eq!(restored.stop, VmStop::Guest(StopRequest::Exit(0)), "{text}");
    let guest = guest_fields(&restored.serial, "tick:");
    assert!(guest["interrupts"] >= 256, "{text}");
}

#[test]
fn a_create_on_a_running_vm_and_bad_restores_are_refused_clearly() {
    if !kvm_available() {
        return;
    }
    let config = guest_config("rtc", "iterations=20000");
    let dir = snapshot_dir("refused");
    let paths = SnapshotPaths::in_dir(&dir);
    let control = VmControl::new();
    thread::scope(|scope| {
        let machine = scope.spawn(|| machine::run_controlled(&config, &control));
        control.wait_started().unwrap();
        let error = machine::create_snapshot(&control, &paths).unwrap_err();
        assert!(
            matches!(
                error,
                MachineSnapshotError::Control(ControlError::NotPaused)
            ),
            "{error}"
        );
        assert!(!paths.state.exists() && !paths.memory.exists());
        if let Err(error) = control.pause() {
            panic!(
                "{error}: the machine: {:?}",
                machine.join().unwrap().map(|r| r.stop)
            );
        }
        machine::create_snapshot(&control, &paths).unwrap();
        control.stop().unwrap();
        machine.join().unwrap().unwrap();
    });
    let state = std::fs::read(&paths.state).unwrap();
    let restore_error = |config: &MachineConfig, paths: &SnapshotPaths| {
        machine::restore_controlled(config, paths, true, &VmControl::new())
            .err()
            .map(|error| error.to_string())
            .expect("the restore is refused")
    };
    // Another memory size, another vCPU count.
    let mut bigger = config.clone();
    bigger.memory = hushvm::layout::MemoryLayout::new(config.memory.ram_bytes() * 2).unwrap();
    let error = restore_error(&bigger, &paths);
    assert!(error.contains("memory size"), "{error}");
    let mut two = config.clone();
    two.vcpus.count = 2;
    let error = restore_error(&two, &paths);
    assert!(error.contains("vCPU count"), "{error}");
    // A truncated, a corrupt state file; a memory file of the wrong size.
    let broken = SnapshotPaths {
        state: dir.join("broken"),
        memory: paths.memory.clone(),
    };
    std::fs::write(&broken.state, &state[..state.len() / 2]).unwrap();
    let error = restore_error(&config, &broken);
    assert!(error.contains("truncated"), "{error}");
    let mut corrupt = state.clone();
    let last = corrupt.len() - 2;
    corrupt[last] ^= 0x01;
    std::fs::write(&broken.state, &corrupt).unwrap();
    let error = restore_error(&config, &broken);
    assert!(error.contains("checksum"), "{error}");
    let short_memory = SnapshotPaths {
        state: paths.state.clone(),
        memory: dir.join("short-memory"),
    };
    std::fs::write(&short_memory.memory, [0u8; 4096]).unwrap();
    let error = restore_error(&config, &short_memory);
    assert!(error.contains("memory file holds 4096 bytes"), "{error}");
    // A load through a control whose machine has run.
    let used = VmControl::new();
    machine::run_controlled(&guest_config("rtc", "iterations=10"), &used).unwrap();
    let error = machine::restore_controlled(&config, &paths, true, &used).unwrap_err();
    assert!(error.to_string().contains("already started"), "{error}");
    // The originals are untouched: the snapshot still restores.
    assert_eq!(std::fs::read(&paths.state).unwrap(), state);
    let restored = restore(&config, &paths);
    assert_eq!(restored.stop, VmStop::Guest(StopRequest::Exit(0)));
}

#[test]
fn the_command_line_takes_a_snapshot_and_restores_it() {
    if !kvm_available() {
        return;
    }
    let rtc = common::guest_file("rtc");
    let dir = snapshot_dir("cli");
    let hushvm = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--kernel",
            rtc.to_str().unwrap(),
            "--cmdline",
            "iterations=20000",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_hushvm"))
            .args(&args)
            .output()
            .unwrap()
    };
    let dir_arg = dir.to_str().unwrap();
    let taken = hushvm(&["--snapshot-dir", dir_arg, "--snapshot-after", "0.06"]);
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert!(stderr.contains("hushvm: snapshot in"), "{stderr}");
    assert!(!String::from_utf8_lossy(&taken.stdout).contains("rtc:"));
    let restored = hushvm(&["--restore", dir_arg]);
    let stdout = String::from_utf8_lossy(&restored.stdout);
    // isa-debug-exit's status, as QEMU gives it: (0 << 1) | 1.
    assert_eq!(restored.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("errors=0"), "{stdout}");
}

#[test]
fn the_snapshot_bench_runs_and_reports_json() {
    if !kvm_available() {
        return;
    }
    let report = hushvm::bench::snapshot::run(&[128 << 20], 2, 1).expect("the bench runs");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["workload"], "snapshot");
    let size = &report.variants[0];
    assert_eq!((size.name.as_str(), size.memory_bytes), ("128M", 128 << 20));
    assert_eq!(size.restores, 2);
    assert!(size.restore_min_ns > 0 && size.restore_min_ns <= size.restore_max_ns);
    assert!(size.create_ns > 0 && size.state_bytes > 0);
    // The guest touched a small part of its RAM: far less than all of it is written.
    assert!(size.memory_written_bytes > 0 && size.memory_written_bytes < size.memory_bytes / 4);
    assert!(report.render().contains("snapshot / 128M"));
}

/// A copy of the disk image at `path` for a restored machine. (A process keeps its OFD
/// lock on an image after its machine has run, so a restore in the same process gets
/// its own copy: the sandbox pattern gives each restored copy its own disk anyway.)
fn disk_copy(config: &mut MachineConfig, name: &str) {
    let copy = scratch_dir().join(name);
    std::fs::copy(&config.devices.disks[0].path, &copy).unwrap();
    config.devices.disks = vec![hushvm::config::DiskConfig::new(copy)];
}

fn scratch_disk(name: &str, bytes: u64) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    path
}

#[test]
fn the_blk_guest_restored_mid_run_reads_back_what_it_wrote() {
    if !kvm_available() {
        return;
    }
    let mut config = guest_config("blk", "requests=1024 pattern=rand");
    let plain_disk = scratch_disk("snapshot-blk-plain.img", 4 << 20);
    config.devices.disks = vec![hushvm::config::DiskConfig::new(plain_disk)];
    let plain = run(&config);
    let expected = guest_fields(&plain.serial, "blk:");
    assert_eq!(expected["errors"], 0, "{}", serial_text(&plain));
    let disk = scratch_disk("snapshot-blk.img", 4 << 20);
    config.devices.disks = vec![hushvm::config::DiskConfig::new(disk.clone())];
    let paths = SnapshotPaths::in_dir(&snapshot_dir("blk"));
    // Requests completed before the pause, more after the restore.
    let before = snapshot_mid_run(&config, plain.wall / 3, &paths);
    assert!(
        !before.contains("blk:"),
        "the guest finished first: {before}"
    );
    disk_copy(&mut config, "snapshot-blk-restored.img");
    let disk = config.devices.disks[0].path.clone();
    let restored = restore(&config, &paths);
    let text = serial_text(&restored);
    assert_eq!(restored.stop, VmStop::Guest(StopRequest::Exit(0)), "{text}");
    let fields = guest_fields(&restored.serial, "blk:");
    assert_eq!(fields["errors"], 0, "{text}");
    assert_eq!(fields["requests"], expected["requests"], "{text}");
    assert!(
        restored.virtio_notifications > 0,
        "requests were made after the restore"
    );
    // A disk of another size than the snapshot's is refused before anything is built.
    std::fs::File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let error = machine::restore_controlled(&config, &paths, true, &VmControl::new())
        .unwrap_err()
        .to_string();
    assert!(error.contains("disk image sizes"), "{error}");
}

#[test]
fn the_pci_guest_restored_after_its_bar_moved_finishes_with_its_msix_vectors() {
    if !kvm_available() {
        return;
    }
    let mut config = guest_config("pcitest", "action=all requests=1000");
    config.devices.transport = hushvm::config::VirtioTransport::Pci;
    config.devices.rng = true;
    let plain_disk = scratch_disk("snapshot-pci-plain.img", 1 << 20);
    config.devices.disks = vec![hushvm::config::DiskConfig::new(plain_disk)];
    let plain = run(&config);
    let disk = scratch_disk("snapshot-pci.img", 1 << 20);
    config.devices.disks = vec![hushvm::config::DiskConfig::new(disk)];
    let expected = guest_fields(&plain.serial, "pcitest: blk_ok");
    assert_eq!(expected["blk_ok"], 1, "{}", serial_text(&plain));
    let paths = SnapshotPaths::in_dir(&snapshot_dir("pci"));
    let before = snapshot_mid_run(&config, plain.wall / 3, &paths);
    assert!(
        before.contains("moved=1"),
        "the BAR moved before the snapshot: {before}"
    );
    assert!(
        !before.contains("blk_ok"),
        "the guest finished first: {before}"
    );
    disk_copy(&mut config, "snapshot-pci-restored.img");
    let restored = restore(&config, &paths);
    let text = serial_text(&restored);
    assert_eq!(restored.stop, VmStop::Guest(StopRequest::Exit(0)), "{text}");
    let fields = guest_fields(&restored.serial, "pcitest: blk_ok");
    assert_eq!(fields, expected, "{text}");
    assert!(
        restored.virtio_interrupts() > 0,
        "MSI-X vectors fired after the restore"
    );
}
