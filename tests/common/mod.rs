//! Helpers for tests that need `/dev/kvm`.
//!
//! Without KVM these tests fail, unless HUSHVM_SKIP_KVM_TESTS=1 asks to skip them; with
//! HUSHVM_REQUIRE_KVM=1 (as CI sets it) they always fail without KVM.
#![allow(dead_code)]

pub mod linux_checks;
pub mod netns;

use std::time::Duration;

use hushvm::config::SerialMode;
use hushvm::kvm::Hypervisor;
use hushvm::machine::{self, Kernel, MachineConfig, RunReport};

/// True if the test should go on; false if it may be skipped; panics otherwise.
pub fn kvm_available() -> bool {
    if Hypervisor::is_available() {
        return true;
    }
    let required = std::env::var("HUSHVM_REQUIRE_KVM").as_deref() == Ok("1");
    let skip = std::env::var("HUSHVM_SKIP_KVM_TESTS").as_deref() == Ok("1");
    if skip && !required {
        eprintln!("SKIPPED: /dev/kvm is not available and HUSHVM_SKIP_KVM_TESTS=1");
        return false;
    }
    panic!("this test needs /dev/kvm, which cannot be opened (set HUSHVM_SKIP_KVM_TESTS=1 to skip KVM tests)");
}

/// A configuration that boots built-in guest `name` with `cmdline`, capturing COM1.
pub fn guest_config(name: &str, cmdline: &str) -> MachineConfig {
    let image = hushvm::guests::image(name)
        .expect("built-in guest")
        .to_vec();
    let mut config = MachineConfig::new(Kernel {
        name: format!("{name}.elf"),
        image,
    });
    config.boot.cmdline = cmdline.to_string();
    config.devices.serial = SerialMode::Capture;
    config.run.timeout = Some(Duration::from_secs(60));
    config
}

/// Boots and runs `config`.
pub fn run(config: &MachineConfig) -> RunReport {
    machine::run(config).expect("the machine runs")
}

/// COM1's output as text.
pub fn serial_text(report: &RunReport) -> String {
    String::from_utf8_lossy(&report.serial).into_owned()
}

/// The value after `key=` on the line that starts with `key`.
pub fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
        })
        .unwrap_or_else(|| panic!("no {key}= in:\n{text}"))
}

/// A scratch directory for this test process.
pub fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hushvm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Built-in guest `name` written to the scratch directory. Tests run in parallel and
/// share the directory: the file is written under a name of its own and renamed into
/// place, so a hushvm started by another test never reads it half written.
pub fn guest_file(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = scratch_dir();
    let path = dir.join(format!("{name}.elf"));
    let partial = dir.join(format!(
        "{name}.elf.{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(
        &partial,
        hushvm::guests::image(name).expect("built-in guest"),
    )
    .expect("guest file");
    std::fs::rename(&partial, &path).expect("guest file in place");
    path
}

/// Runs the hushvm binary with `args`, feeding `input` on its standard input.
pub fn hushvm_with_input(args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hushvm runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("input written");
    child.wait_with_output().expect("hushvm finishes")
}

/// Runs the hushvm binary with `args` and no input.
pub fn hushvm(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("hushvm runs")
}

/// Asserts one `hushvm: error:` line containing `expected`, status 1, no panic.
pub fn assert_clear_error(output: &std::process::Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("hushvm: error: "), "{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in {stderr}"
    );
}
