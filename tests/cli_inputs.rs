//! README's "Options and bad input", row by row: every bad value or file gives one
//! `hushvm: error:` line and status 1, never a panic. (tests/cli.rs covers the kernel
//! formats, --mem, --serial and --module rows; tests/virtio.rs a disk that cannot be
//! written (the running hushvm binary); tests/signals.rs a locked one.)

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{assert_clear_error, hushvm, kvm_available};

fn scratch(name: &str) -> PathBuf {
    common::scratch_dir().join(name)
}

fn file(name: &str, contents: &[u8]) -> String {
    let path = scratch(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_string()
}

fn probe() -> String {
    common::guest_file("probe").to_str().unwrap().to_string()
}

/// The probe guest with `extra` options; it exits at once (status 3) if it gets to run.
fn run_probe(extra: &[&str]) -> Output {
    let probe = probe();
    let mut args = vec!["run", "--kernel", &probe];
    if !extra.contains(&"--serial") {
        args.extend(["--serial", "none"]);
    }
    args.extend(["--cmdline", "action=exit code=1", "--timeout", "30"]);
    args.extend(extra);
    hushvm(&args)
}

/// Options clap or the config parsers refuse: no KVM needed.
#[test]
fn bad_option_values_are_clear_errors() {
    let probe = probe();
    let run = |option: &str, value: &str| {
        hushvm(&["run", "--kernel", &probe, &format!("{option}={value}")])
    };
    for (option, value, expected) in [
        ("--mem", "0", "too small"),
        ("--mem", "4097K", "not a multiple of 4 KiB"),
        ("--cpus", "0", "0 is not in 1..=255"),
        ("--cpus", "300", "300 is not in 1..=255"),
        ("--cpu", "pentium", "unknown CPU model"),
        ("--serial", "file:", "invalid serial destination"),
        ("--disk", "a.img,rw", "expected PATH[,readonly][,id=ID]"),
        ("--disk", ",readonly", "expected PATH[,readonly][,id=ID]"),
        ("--disk", "a.img,transport=isa", "expected pci or mmio"),
        ("--disk", "a.img,id=a/b", "invalid device id"),
        ("--virtio-console", "tcp:1", "invalid serial destination"),
        ("--virtio-transport", "isa", "expected pci or mmio"),
        ("--timeout", "0", "invalid timeout"),
        ("--timeout", "abc", "invalid timeout"),
        ("--timeout", "1e300", "invalid timeout"),
        ("--event-poll-us", "x", "--event-poll-us"),
        ("--event-poll-us", "-1", "--event-poll-us"),
        ("--posted-drain-us", "x", "--posted-drain-us"),
        ("--posted-drain-us", "99999999999999999999", "too large"),
        ("--doorbell", "fast", "expected exit, len0, len4 or pio"),
    ] {
        assert_clear_error(&run(option, value), expected);
    }
    assert_clear_error(&hushvm(&["run"]), "--kernel");
    assert_clear_error(&hushvm(&["run", "--kernel", &probe, "--warp"]), "--warp");
    assert_clear_error(&hushvm(&["frob"]), "frob");
}

#[test]
fn bad_kernel_files_are_clear_errors() {
    let dir = common::scratch_dir();
    assert_clear_error(
        &hushvm(&["run", "--kernel", dir.to_str().unwrap()]),
        "Is a directory",
    );
    assert_clear_error(
        &hushvm(&["run", "--kernel", &file("empty.elf", b"")]),
        "not a kernel hushvm can boot",
    );
    let probe = probe();
    let missing = scratch("no-initrd").to_str().unwrap().to_string();
    assert_clear_error(
        &hushvm(&["run", "--kernel", &probe, "--initrd", &missing]),
        "cannot read",
    );
    assert_clear_error(
        &hushvm(&["run", "--kernel", &probe, "--module", dir.to_str().unwrap()]),
        "Is a directory",
    );
}

#[test]
fn bench_replay_advise_and_guests_refuse_bad_input() {
    assert_clear_error(&hushvm(&["bench", "warp"]), "unknown workload");
    assert_clear_error(&hushvm(&["bench", "rtc", "--repeat", "0"]), "--repeat");
    assert_clear_error(
        &hushvm(&["bench", "rtc", "--iterations", "0"]),
        "--iterations",
    );
    let missing = scratch("no-trace").to_str().unwrap().to_string();
    let garbage = file("garbage.trace", b"certainly not a trace");
    let trace = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/traces/eoi.trace"
    ));
    let truncated = file("truncated.trace", &trace.unwrap()[..100]);
    for command in ["replay", "advise"] {
        assert_clear_error(&hushvm(&[command, &missing]), "cannot read");
        assert_clear_error(&hushvm(&[command, &garbage]), "not a hushvm trace");
        assert_clear_error(&hushvm(&[command, &truncated]), "truncated trace");
    }
    assert_clear_error(&hushvm(&["advise"]), "<FILES>");
    let under_a_file = format!("{garbage}/guests");
    assert_clear_error(
        &hushvm(&["guests", "--out", &under_a_file]),
        "cannot create",
    );
}

/// Printing to a reader that went away is no panic: `guests` ends normally.
#[test]
fn a_closed_standard_output_is_no_panic() {
    let out = scratch("guests").to_str().unwrap().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args(["guests", "--out", &out])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

/// A bzImage header (protocol 2.15, 64-bit entry) over a 4 KiB payload of zeros that
/// accepts a 255-byte command line: enough for the loader's checks.
fn tiny_bzimage() -> String {
    let mut image = vec![0u8; 1024 + 4096];
    image[0x1f1] = 1;
    image[0x1f4..0x1f8].copy_from_slice(&(4096u32 / 16).to_le_bytes());
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // LOADED_HIGH: a bzImage, not a zImage
    image[0x214..0x218].copy_from_slice(&0x0100_0000u32.to_le_bytes()); // code32_start
    image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    image[0x236..0x238].copy_from_slice(&3u16.to_le_bytes());
    image[0x238..0x23c].copy_from_slice(&255u32.to_le_bytes());
    file("tiny.bzImage", &image)
}

#[test]
fn linux_boot_limits_are_clear_errors() {
    if !kvm_available() {
        return;
    }
    let kernel = tiny_bzimage();
    let long = "a".repeat(300);
    assert_clear_error(
        &hushvm(&["run", "--kernel", &kernel, "--cmdline", &long]),
        "the command line is 300 bytes; this kernel accepts at most 255",
    );
    let initrd = file("big.initrd", &vec![0u8; 20 << 20]);
    assert_clear_error(
        &hushvm(&[
            "run", "--kernel", &kernel, "--mem", "16M", "--initrd", &initrd,
        ]),
        "does not fit",
    );
}

#[test]
fn more_vcpus_than_kvm_allows_is_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let max = hushvm::kvm::Hypervisor::open().unwrap().max_vcpus();
    if max >= 255 {
        return; // --cpus cannot ask for more than this KVM allows.
    }
    let cpus = (max + 1).to_string();
    assert_clear_error(
        &run_probe(&["--cpus", &cpus]),
        &format!("--cpus {cpus}: this KVM allows 1 to {max}"),
    );
}

#[test]
fn bad_disks_and_outputs_are_clear_errors() {
    if !kvm_available() {
        return;
    }
    let no_dir = scratch("no-such-dir/file");
    let no_dir = no_dir.to_str().unwrap();
    let dir = common::scratch_dir();
    let dir = dir.to_str().unwrap();
    let odd = file("odd.img", &[0u8; 1000]);
    let missing = scratch("no.img").to_str().unwrap().to_string();
    for (extra, expected) in [
        (vec!["--disk", &missing], "no such file"),
        (vec!["--disk", &odd], "not a positive multiple of 512"),
        (vec!["--disk", dir], "not a regular file"),
        (
            vec!["--disk", &odd, "--disk", &format!("{odd},id=blk0")],
            "two devices have the id \"blk0\"",
        ),
        (
            vec!["--disk", &format!("{odd},id=rng0")],
            "two devices have the id \"rng0\"",
        ),
        (
            vec![
                "--virtio-transport",
                "mmio",
                "--rng",
                "--virtio-console",
                "none",
            ]
            .into_iter()
            .chain(["--disk", &odd, "--disk", &odd])
            .collect(),
            "more virtio-mmio devices than the 3 windows",
        ),
        (vec!["--serial", &format!("file:{no_dir}")], "cannot open"),
        (
            vec!["--virtio-console", &format!("file:{no_dir}")],
            "cannot open",
        ),
        (vec!["--record", no_dir], "cannot write the trace"),
        (vec!["--profile-json", no_dir], "cannot write"),
    ] {
        assert_clear_error(&run_probe(&extra), expected);
    }
}
