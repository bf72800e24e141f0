//! Signals stop the VM as a power-off does (status 128 + n, one line on stderr, the disk
//! synced); a closed `--serial` pipe does not kill hushvm; one writer per disk image.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::kvm_available;

fn scratch_disk(name: &str, bytes: u64) -> PathBuf {
    let path = common::scratch_dir().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    path
}

/// `hushvm run` with `args`, stdout piped, stderr captured.
fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hushvm starts")
}

/// A probe guest that spins until something stops it.
fn spinning() -> Child {
    let probe = common::guest_file("probe");
    let mut child = spawn(&[
        "--kernel",
        probe.to_str().unwrap(),
        "--cmdline",
        "action=spin",
        "--timeout",
        "60",
    ]);
    wait_for_line(&mut child, "probe: start");
    child
}

/// Reads the child's stdout until `line` (the guest runs by then).
fn wait_for_line(child: &mut Child, line: &str) {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let seen = lines.by_ref().map_while(Result::ok).any(|l| l == line);
    assert!(seen, "the guest printed {line:?}");
    // Keep reading in the background, so that the guest's output never blocks.
    std::thread::spawn(move || lines.for_each(drop));
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid; it touches no memory.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

fn stopped_by(output: &Output, status: i32, name: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(status), "{stderr}");
    assert_eq!(stderr, format!("hushvm: stopped by {name}\n"));
}

#[test]
fn sigint_and_sigterm_stop_the_vm_with_128_plus_the_signal() {
    if !kvm_available() {
        return;
    }
    for (number, status, name) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGTERM, 143, "SIGTERM"),
        (libc::SIGHUP, 129, "SIGHUP"),
    ] {
        let child = spinning();
        signal(&child, number);
        stopped_by(&child.wait_with_output().unwrap(), status, name);
    }
}

/// What the blk guest writes to block `block` (tests/virtio.rs checks the same).
fn pattern(block: u64, i: u64) -> u8 {
    match i % 256 {
        offset @ 0..=3 => (block as u32).to_le_bytes()[offset as usize],
        _ => (i as u32).wrapping_mul(7).wrapping_add(1) as u8,
    }
}

fn assert_blocks_on_disk(path: &Path, blocks: u64) {
    let disk = std::fs::read(path).unwrap();
    for block in 0..blocks {
        for i in 0..4096u64 {
            let at = (block * 4096 + i) as usize;
            assert_eq!(disk[at], pattern(block, i), "block {block} byte {i}");
        }
    }
}

/// The blk guest writing `disk`, held after its flush until something stops it.
fn holding(disk: &Path) -> Child {
    let guest = common::guest_file("blk");
    let mut child = spawn(&[
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline",
        "requests=32 hold=1",
        "--disk",
        disk.to_str().unwrap(),
        "--timeout",
        "60",
    ]);
    wait_for_line(&mut child, "blk: flushed");
    child
}

#[test]
fn sigterm_leaves_the_guests_writes_on_disk() {
    if !kvm_available() {
        return;
    }
    let disk = scratch_disk("sigterm.img", 4 << 20);
    let child = holding(&disk);
    signal(&child, libc::SIGTERM);
    stopped_by(&child.wait_with_output().unwrap(), 143, "SIGTERM");
    assert_blocks_on_disk(&disk, 32);
}

#[test]
fn a_closed_serial_pipe_does_not_kill_hushvm() {
    if !kvm_available() {
        return;
    }
    let probe = common::guest_file("probe");
    let mut child = spawn(&[
        "--kernel",
        probe.to_str().unwrap(),
        "--cmdline",
        "action=exit code=7",
        "--serial",
        "stdio",
        "--timeout",
        "30",
    ]);
    // Close the only reader before the guest writes: each write is EPIPE (and SIGPIPE,
    // were it not ignored).
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(15),
        "{stderr} {:?}",
        output.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn run_on(disk: &str) -> Output {
    let probe = common::guest_file("probe");
    Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args(["run", "--kernel", probe.to_str().unwrap()])
        .args(["--cmdline", "action=exit code=1", "--serial", "none"])
        .args(["--disk", disk, "--timeout", "30"])
        .output()
        .unwrap()
}

fn assert_locked(output: &Output, disk: &Path) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "hushvm: error: --disk {}: locked by another process (is another VM using it?)\n",
            disk.display()
        )
    );
}

#[test]
fn a_disk_has_one_writer_or_many_readers() {
    if !kvm_available() {
        return;
    }
    let disk = scratch_disk("locked.img", 4 << 20);
    let path = disk.to_str().unwrap();
    let writer = holding(&disk);
    let started = std::time::Instant::now();
    assert_locked(&run_on(path), &disk);
    assert_locked(&run_on(&format!("{path},readonly")), &disk);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed at once"
    );
    signal(&writer, libc::SIGTERM);
    writer.wait_with_output().unwrap();

    let reader = spawn(&[
        "--kernel",
        common::guest_file("probe").to_str().unwrap(),
        "--cmdline",
        "action=spin",
        "--disk",
        &format!("{path},readonly"),
        "--timeout",
        "60",
    ]);
    let mut reader = reader;
    wait_for_line(&mut reader, "probe: start");
    let second = run_on(&format!("{path},readonly"));
    assert_eq!(second.status.code(), Some(3), "a second reader runs");
    assert_locked(&run_on(path), &disk);
    signal(&reader, libc::SIGINT);
    stopped_by(&reader.wait_with_output().unwrap(), 130, "SIGINT");
}
