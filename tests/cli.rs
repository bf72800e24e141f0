//! The command line: every bad input is one clear error line and a non-zero status,
//! never a panic; good runs exit with the guest's status.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{assert_clear_error, hushvm, kvm_available};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hushvm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn guest_file(name: &str) -> PathBuf {
    common::guest_file(name)
}

#[test]
fn bad_images_are_clear_errors() {
    // Errors found after the VM exists (hushvm opens /dev/kvm first).
    if !kvm_available() {
        return;
    }
    let missing = scratch("missing.elf");
    assert_clear_error(
        &hushvm(&["run", "--multiboot", missing.to_str().unwrap()]),
        "cannot read",
    );

    let text = scratch("text.elf");
    std::fs::write(&text, "not a kernel").unwrap();
    assert_clear_error(
        &hushvm(&["run", "--multiboot", text.to_str().unwrap()]),
        "not a kernel hushvm can boot (bzImage, ELF with a PVH note, or Multiboot)",
    );

    // hushvm itself is a 64-bit ELF with neither boot protocol.
    let elf64 = env!("CARGO_BIN_EXE_hushvm");
    assert_clear_error(
        &hushvm(&["run", "--kernel", elf64]),
        "an ELF file without a PVH entry note or a Multiboot header",
    );

    let mut image = hushvm::guests::image("probe").unwrap().to_vec();
    let magic = 0x1BAD_B002u32.to_le_bytes();
    let at = image.windows(4).position(|w| w == magic).unwrap();
    image[at] ^= 0xff;
    let headerless = scratch("headerless.elf");
    std::fs::write(&headerless, &image).unwrap();
    assert_clear_error(
        &hushvm(&["run", "--multiboot", headerless.to_str().unwrap()]),
        "no Multiboot header",
    );

    let truncated = scratch("truncated.elf");
    std::fs::write(&truncated, &hushvm::guests::image("probe").unwrap()[..200]).unwrap();
    assert_clear_error(
        &hushvm(&["run", "--multiboot", truncated.to_str().unwrap()]),
        "truncated",
    );
}

#[test]
fn bad_sizes_and_options_are_clear_errors() {
    let probe = guest_file("probe");
    let probe = probe.to_str().unwrap();
    assert_clear_error(
        &hushvm(&["run", "--multiboot", probe, "--mem", "1M"]),
        "too small",
    );
    assert_clear_error(
        &hushvm(&["run", "--multiboot", probe, "--mem", "1024G"]),
        "too large",
    );
    assert_clear_error(
        &hushvm(&["run", "--multiboot", probe, "--mem", "lots"]),
        "invalid size",
    );
    assert_clear_error(
        &hushvm(&["run", "--multiboot", probe, "--serial", "tcp:1"]),
        "invalid serial",
    );
    assert_clear_error(
        &hushvm(&["run", "--multiboot", probe, "--timeout=-3"]),
        "invalid timeout",
    );
    let missing_module = scratch("no-such-module");
    assert_clear_error(
        &hushvm(&[
            "run",
            "--multiboot",
            probe,
            "--module",
            missing_module.to_str().unwrap(),
        ]),
        "cannot read",
    );
    assert_clear_error(
        &hushvm(&["bench", "rtc", "--variant", "turbo"]),
        "unknown variant",
    );
}

#[test]
fn a_module_that_does_not_fit_is_a_clear_error() {
    // Errors found after the VM exists (hushvm opens /dev/kvm first).
    if !kvm_available() {
        return;
    }
    let probe = guest_file("probe");
    let module = scratch("big-module");
    std::fs::write(&module, vec![0u8; 3 << 20]).unwrap();
    let output = hushvm(&[
        "run",
        "--multiboot",
        probe.to_str().unwrap(),
        "--mem",
        "2M",
        "--module",
        module.to_str().unwrap(),
    ]);
    assert_clear_error(&output, "guest RAM is");
}

#[test]
fn a_missing_kvm_device_is_a_clear_error() {
    let probe = guest_file("probe");
    let output = Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args(["run", "--multiboot", probe.to_str().unwrap()])
        .env(hushvm::kvm::KVM_DEVICE_VARIABLE, "/nonexistent/kvm")
        .output()
        .unwrap();
    assert_clear_error(&output, "cannot open /nonexistent/kvm");
}

#[test]
fn a_run_exits_with_the_guest_status_and_writes_its_profile() {
    if !kvm_available() {
        return;
    }
    let probe = guest_file("probe");
    let serial = scratch("serial.txt");
    let json = scratch("profile.json");
    let output = hushvm(&[
        "run",
        "--multiboot",
        probe.to_str().unwrap(),
        "--cmdline",
        "action=exit code=7",
        "--serial",
        &format!("file:{}", serial.display()),
        "--profile",
        "--profile-json",
        json.to_str().unwrap(),
        "--timeout",
        "30",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(15), "{stderr}");
    assert_eq!(std::fs::read_to_string(&serial).unwrap(), "probe: start\n");
    assert!(stderr.contains("Samples  Samples%"), "{stderr}");
    assert!(stderr.contains("0xf4:POUT"), "{stderr}");
    let profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        profile["userspace_exits"], 2,
        "the first byte of output (it registers THR's zone), 12 bytes posted (applied \
         before the exit), and the exit"
    );
    assert_eq!(profile["posted_writes"], 12, "{profile}");
}

#[test]
fn host_input_reaches_the_guest_through_com1_interrupts() {
    if !kvm_available() {
        return;
    }
    let probe = common::guest_file("probe");
    let args = [
        "run",
        "--multiboot",
        probe.to_str().unwrap(),
        "--cmdline",
        "action=echo",
        "--timeout",
        "30",
    ];
    let output = common::hushvm_with_input(&args, b"hello guest\n");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0x2d),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("echo=[hello guest]"), "{stdout}");
}

#[test]
fn timeout_and_crash_statuses() {
    if !kvm_available() {
        return;
    }
    let probe = guest_file("probe");
    let probe = probe.to_str().unwrap();
    let output = hushvm(&[
        "run",
        "--multiboot",
        probe,
        "--cmdline",
        "action=spin",
        "--timeout",
        "0.3",
        "--serial",
        "none",
    ]);
    assert_eq!(output.status.code(), Some(124));
    let output = hushvm(&[
        "run",
        "--multiboot",
        probe,
        "--cmdline",
        "action=triple",
        "--serial",
        "none",
        "--timeout",
        "30",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("triple fault") && stderr.contains("rip="),
        "{stderr}"
    );
}

/// The start of a bzImage: one setup sector and a header announcing `payload` bytes.
fn bzimage_header(version: u16, payload: u32) -> Vec<u8> {
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1;
    image[0x1f4..0x1f8].copy_from_slice(&(payload / 16).to_le_bytes());
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    image[0x236..0x238].copy_from_slice(&3u16.to_le_bytes());
    image
}

#[test]
fn bad_linux_images_and_cpu_models_are_clear_errors() {
    // Errors found after the VM exists (hushvm opens /dev/kvm first).
    if !kvm_available() {
        return;
    }
    let truncated = scratch("truncated.bzImage");
    std::fs::write(&truncated, bzimage_header(0x020f, 1 << 20)).unwrap();
    assert_clear_error(
        &hushvm(&["run", "--kernel", truncated.to_str().unwrap()]),
        "truncated bzImage",
    );
    let old = scratch("old.bzImage");
    let mut image = bzimage_header(0x0203, 4096);
    image.extend(vec![0u8; 4096]);
    std::fs::write(&old, image).unwrap();
    assert_clear_error(
        &hushvm(&["run", "--kernel", old.to_str().unwrap()]),
        "boot protocol 2.03 is too old",
    );
    let probe = guest_file("probe");
    assert_clear_error(
        &hushvm(&[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cpu",
            "host,-warp",
        ]),
        "unknown CPU feature `warp`",
    );
    assert_clear_error(
        &hushvm(&[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--cpu",
            "pentium",
        ]),
        "--cpu",
    );
    let initrd = scratch("initrd.img");
    std::fs::write(&initrd, b"initrd").unwrap();
    assert_clear_error(
        &hushvm(&[
            "run",
            "--kernel",
            probe.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ]),
        "--initrd is for Linux kernels",
    );
}
