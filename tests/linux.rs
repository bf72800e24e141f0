//! Booting Linux: Debian's stock cloud kernel (scripts/fetch-kernel.sh) as a bzImage and as
//! a PVH vmlinux, with the initramfs of scripts/make-initramfs.sh and a disk whose first
//! bytes are `HUSHVM-DISK-MAGIC`.
//!
//! What is required depends on the host, and the probe guest's `action=int3` tells which
//! host this is. Where KVM runs guest code natively (VMX/SVM) the int3 is a triple fault,
//! and Linux must reach the initramfs, read the disk and power off (status 0) within 30 s,
//! with no instruction completed by hushvm (`crate::insn` is never reached). Where KVM runs
//! guest code in its instruction emulator (the development host: HOST.md) the int3 is an
//! emulation failure. There the PVH vmlinux, with the command line that host needs
//! (`hushvm::loader::host_cmdline`) and hushvm completing the instructions the emulator
//! fails on, must reach /init, read the disk and power off through ACPI S5 (status 0),
//! and the profile must show the completed instructions; the bzImage, whose decompressor
//! alone takes minutes there, is run with `--no-emulation-fallback` and must stop exactly
//! at the kernel's INT3 self-test in `alternative_instructions`, as QEMU does
//! (docs/linux-qemu-baseline.md). On both, what the kernel printed on COM1 must match the
//! machine hushvm built: the command line, the e820 map, hushvm's ACPI tables, the CPUs
//! and the memory.
//!
//! The parsers are also checked against QEMU's console on the development host
//! (docs/linux-qemu-console.txt), so they are known to read a real kernel's lines.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{kvm_available, linux_checks, scratch_dir};
use hushvm::layout::MemoryLayout;
use hushvm::loader::host_cmdline::emulated_kvm_cmdline;
use hushvm::run_loop::{GuestFault, VmStop};

/// The kernel command line of every boot (`nokaslr`: the bzImage's INT3 self-test then
/// runs at the address the vmlinux file says; PVH entry never randomises).
const CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 noxsave nokaslr";
const DISK_MAGIC: &[u8] = b"HUSHVM-DISK-MAGIC";
/// The checks the test /init runs (guests/linux-init), through Linux's own drivers: the
/// virtio-blk disk on PCI with MSI-X (a block written, flushed, read back), virtio-rng,
/// virtio-console, ttyS0 a 16550A.
const INIT_CHECKS: &str = "hushvm.checks=blk,rng,console,serial";
const CHECK_LINES: [&str; 7] = [
    "mounts", "modules", "blk.vda", "blk", "rng", "console", "serial",
];
/// Modules no check needs, left out of the initramfs.
const SKIPPED_MODULES: &str = "failover,net_failover,virtio_net,vsock,vmw_vsock_virtio_transport_common,vmw_vsock_virtio_transport";
/// Where guest code runs natively, the whole boot must take no longer.
const NATIVE_BOOT_LIMIT: Duration = Duration::from_secs(30);
/// hushvm's own timeout: natively a safety net.
const NATIVE_TIMEOUT_S: u32 = 60;
/// In KVM's emulator QEMU took 163 s to the bzImage's INT3 self-test with 2 vCPUs and
/// 512M (docs/linux-qemu-baseline.md); on 1 December, with the development host shared
/// (load average 14 on 2 cores), hushvm was still in the kernel's early set-up at 400 s.
/// Only a bound: a passing run takes what it takes.
const INT3_STOP_TIMEOUT_S: u32 = 900;
/// In KVM's emulator, the PVH vmlinux's whole boot to /init and its power-off. Not yet
/// seen: on 1 December a boot on the shared development host was still in the kernel's
/// late initcalls after 3000 s (docs/RESULTS.md, fourth round).
const EMULATED_BOOT_TIMEOUT_S: u32 = 3600;

/// One boot at a time: the development host has two cores.
static BOOTS: Mutex<()> = Mutex::new(());

/// What a boot runs: the kernel file, its command line and machine, and whether hushvm
/// completes the instructions KVM's emulator fails on.
struct BootSpec {
    kernel: &'static str,
    cmdline: String,
    memory: u64,
    cpus: u32,
    fallback: bool,
    timeout_s: u32,
}

impl BootSpec {
    fn memory_arg(&self) -> String {
        format!("{}M", self.memory >> 20)
    }
}

/// The bzImage as the QEMU comparison boots it: 2 vCPUs, 512 MiB; in KVM's emulator
/// without completing anything (it stops at the INT3 self-test, as QEMU does).
#[test]
fn linux_boots_from_a_bzimage() {
    with_host(|emulated| {
        let spec = BootSpec {
            kernel: "bzImage",
            cmdline: format!("{CMDLINE} {INIT_CHECKS}"),
            memory: 512 << 20,
            cpus: 2,
            fallback: !emulated,
            timeout_s: if emulated {
                INT3_STOP_TIMEOUT_S
            } else {
                NATIVE_TIMEOUT_S
            },
        };
        let (boot, files) = boot_with(&spec);
        let context = boot.context(spec.kernel);
        assert_early_boot(&boot.console, &spec, &context);
        if emulated {
            assert_stopped_at_int3_selftest(&boot, files, &context);
        } else {
            assert_booted_to_userspace(&boot, &context);
            assert!(boot.elapsed < NATIVE_BOOT_LIMIT, "too slow\n{context}");
            assert_nothing_completed(&boot, &context);
        }
    });
}

/// The PVH vmlinux to /init everywhere: in KVM's emulator with the command line that host
/// needs and the instructions completed by hushvm; one vCPU and 256 MiB, the least that
/// checks the drivers (every vCPU and every MiB costs emulated boot time there).
///
/// Ignored for now: where KVM emulates, this boot has not been seen reaching /init (more
/// than 50 minutes of wall time on the shared development host, docs/RESULTS.md), which
/// CI's 20 minutes cannot hold. `cargo test --test linux -- --ignored` runs it.
#[test]
#[ignore = "in KVM's emulator the boot to /init takes longer than CI allows (docs/RESULTS.md)"]
fn linux_boots_from_a_pvh_vmlinux() {
    with_host(|emulated| {
        let spec = BootSpec {
            kernel: "vmlinux",
            cmdline: format!(
                "console=ttyS0 earlyprintk=ttyS0 nokaslr {} {INIT_CHECKS}",
                emulated_kvm_cmdline()
            ),
            memory: 256 << 20,
            cpus: 1,
            fallback: true,
            timeout_s: if emulated {
                EMULATED_BOOT_TIMEOUT_S
            } else {
                NATIVE_TIMEOUT_S
            },
        };
        let (boot, _) = boot_with(&spec);
        let context = boot.context(spec.kernel);
        assert_early_boot(&boot.console, &spec, &context);
        assert_booted_to_userspace(&boot, &context);
        if emulated {
            assert_instructions_completed(&boot, &context);
        } else {
            assert!(boot.elapsed < NATIVE_BOOT_LIMIT, "too slow\n{context}");
            assert_nothing_completed(&boot, &context);
        }
    });
}

/// The probe's int3 with an empty IDT: where KVM emulates, hushvm completes it by
/// delivering #BP, which (with no IDT) ends in a triple fault, and the profile counts one
/// `int3`; with `--no-emulation-fallback` the VM stops at the emulation failure. Natively
/// the CPU raises #BP itself and nothing is completed.
#[test]
fn the_int3_probe_is_completed_only_where_kvm_emulates() {
    if !kvm_available() {
        return;
    }
    let emulated = *guest_code_emulated();
    let report = common::run(&common::guest_config("probe", "action=int3"));
    assert_eq!(report.stop, VmStop::Fault(GuestFault::TripleFault));
    let expected: BTreeMap<&str, u64> = if emulated {
        BTreeMap::from([("int3", 1)])
    } else {
        BTreeMap::new()
    };
    assert_eq!(report.profile.completed, expected);
}

/// Runs `check(emulated)` if KVM and the kernel are there, one boot at a time.
fn with_host(check: impl FnOnce(bool)) {
    if !kvm_available() || linux_files().is_none() {
        return;
    }
    let emulated = *guest_code_emulated();
    let _one_at_a_time = BOOTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    check(emulated);
}

fn boot_with(spec: &BootSpec) -> (Boot, &'static LinuxFiles) {
    let files = linux_files().expect("checked by with_host");
    (run_kernel(spec, files), files)
}

/// The files a boot needs.
struct LinuxFiles {
    /// target/linux: bzImage, vmlinux (scripts/fetch-kernel.sh).
    dir: PathBuf,
    initramfs: PathBuf,
}

/// The kernel (fetched if missing), a fresh initramfs and disk; `None` when the kernel
/// cannot be fetched and KVM tests may be skipped.
fn linux_files() -> Option<&'static LinuxFiles> {
    static FILES: OnceLock<Option<LinuxFiles>> = OnceLock::new();
    FILES.get_or_init(prepare_linux_files).as_ref()
}

fn prepare_linux_files() -> Option<LinuxFiles> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/linux");
    let ready = ["bzImage", "vmlinux", "busybox", "modules/modules.order"]
        .iter()
        .all(|name| dir.join(name).metadata().is_ok_and(|m| m.len() > 0));
    if !ready {
        let status = Command::new(root.join("scripts/fetch-kernel.sh"))
            .stdin(Stdio::null())
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            let required = std::env::var("HUSHVM_REQUIRE_KVM").as_deref() == Ok("1");
            let skip = std::env::var("HUSHVM_SKIP_KVM_TESTS").as_deref() == Ok("1");
            if skip && !required {
                eprintln!("SKIPPED: scripts/fetch-kernel.sh failed ({status:?})");
                return None;
            }
            panic!("scripts/fetch-kernel.sh failed ({status:?}): the Linux tests need its kernel");
        }
    }
    let scratch = scratch_dir();
    let initramfs = scratch.join("initramfs.cpio");
    // Everything that saves emulated work where KVM emulates: no signature checks, no
    // inflating, no modules no check needs.
    let made = Command::new(root.join("scripts/make-initramfs.sh"))
        .args([
            "--strip-signatures",
            "--no-compress",
            "--skip-modules",
            SKIPPED_MODULES,
        ])
        .arg(&initramfs)
        .stdin(Stdio::null())
        .status()
        .expect("scripts/make-initramfs.sh runs");
    assert!(made.success(), "scripts/make-initramfs.sh failed: {made}");
    Some(LinuxFiles { dir, initramfs })
}

/// True if this host's KVM runs guest code in its instruction emulator: the probe guest's
/// int3 (empty IDT), not completed by hushvm, is then an emulation failure rather than a
/// triple fault.
fn guest_code_emulated() -> &'static bool {
    static EMULATED: OnceLock<bool> = OnceLock::new();
    EMULATED.get_or_init(|| {
        let mut config = common::guest_config("probe", "action=int3");
        config.run.emulation_fallback = false;
        let report = common::run(&config);
        match report.stop {
            VmStop::Fault(GuestFault::InternalError { .. }) => true,
            VmStop::Fault(GuestFault::TripleFault) => false,
            other => panic!("the int3 probe stopped with {other:?}"),
        }
    })
}

/// What one `hushvm run` of a kernel left behind.
struct Boot {
    status: Option<i32>,
    elapsed: Duration,
    /// COM1's output.
    console: String,
    stderr: String,
    /// The profile's instructions completed by hushvm, by name (`--profile-json`).
    completed: BTreeMap<String, u64>,
    /// The disk image after the run.
    disk: Vec<u8>,
    /// The virtio-console's output.
    virtio_console: String,
}

impl Boot {
    /// Everything a failed assertion should show.
    fn context(&self, kernel: &str) -> String {
        format!(
            "{kernel}: status {:?} after {:.1} s, completed {:?}\n--- stderr:\n{}\n--- console (last 60 lines):\n{}",
            self.status,
            self.elapsed.as_secs_f64(),
            self.completed,
            self.stderr,
            last_lines(&self.console, 60)
        )
    }
}

fn run_kernel(spec: &BootSpec, files: &LinuxFiles) -> Boot {
    let serial = scratch_dir().join(format!("{}.console", spec.kernel));
    let profile = scratch_dir().join(format!("{}.profile.json", spec.kernel));
    let console_out = scratch_dir().join(format!("{}.vc", spec.kernel));
    let disk = scratch_dir().join(format!("{}.disk", spec.kernel));
    let _ = std::fs::remove_file(&serial);
    let _ = std::fs::remove_file(&profile);
    let _ = std::fs::remove_file(&console_out);
    let mut image = vec![0u8; 1 << 20];
    image[..DISK_MAGIC.len()].copy_from_slice(DISK_MAGIC);
    std::fs::write(&disk, image).expect("disk image");
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hushvm"));
    command
        .arg("run")
        .arg("--kernel")
        .arg(files.dir.join(spec.kernel))
        .arg("--initrd")
        .arg(&files.initramfs)
        .args(["--cmdline", &spec.cmdline, "--mem", &spec.memory_arg()])
        .args([
            "--cpus",
            &spec.cpus.to_string(),
            "--cpu",
            "host,-cx16,-xsave",
        ])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .arg("--disk")
        .arg(&disk)
        .arg("--rng")
        .arg("--virtio-console")
        .arg(format!("file:{}", console_out.display()))
        .args(["--timeout", &spec.timeout_s.to_string()])
        .arg("--profile-json")
        .arg(&profile);
    if !spec.fallback {
        command.arg("--no-emulation-fallback");
    }
    let output = command.stdin(Stdio::null()).output().expect("hushvm runs");
    Boot {
        status: output.status.code(),
        elapsed: started.elapsed(),
        console: String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        completed: completed_instructions(&std::fs::read(&profile).unwrap_or_default()),
        disk: std::fs::read(&disk).unwrap_or_default(),
        virtio_console: String::from_utf8_lossy(&std::fs::read(&console_out).unwrap_or_default())
            .into_owned(),
    }
}

/// The `completed_instructions` of a `--profile-json` file (empty if there is none).
fn completed_instructions(json: &[u8]) -> BTreeMap<String, u64> {
    let value: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
    value["completed_instructions"]
        .as_object()
        .map(|names| {
            names
                .iter()
                .filter_map(|(name, count)| Some((name.clone(), count.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// What every boot must show on COM1, natively or emulated: the kernel's console is on
/// ttyS0, and the machine it describes is the one hushvm built.
fn assert_early_boot(console: &str, spec: &BootSpec, context: &str) {
    assert_console_on_ttys0(console, context);
    assert_command_line(console, &spec.cmdline, context);
    let expected = MemoryLayout::new(spec.memory).unwrap().memory_map_lines();
    assert_eq!(e820_lines(console), expected, "the e820 map\n{context}");
    assert_acpi_oem(console, "HUSHVM", context);
    assert_eq!(allowed_cpus(console), Some(spec.cpus), "smpboot\n{context}");
    assert_memory_total(console, spec.memory, context);
}

/// The kernel printed through COM1 from the start, and its console is ttyS0.
fn assert_console_on_ttys0(console: &str, context: &str) {
    assert!(
        kernel_messages(console).any(|line| line.starts_with("Linux version ")),
        "nothing from the kernel arrived through COM1\n{context}"
    );
    assert!(
        kernel_messages(console).any(|line| line == "printk: console [ttyS0] enabled"),
        "the kernel's console is not ttyS0\n{context}"
    );
}

/// The kernel's own command line is `given`, perhaps followed by the
/// `virtio_mmio.device=` entries hushvm appends for its devices.
fn assert_command_line(console: &str, given: &str, context: &str) {
    let line = command_line(console).unwrap_or_else(|| panic!("no Command line:\n{context}"));
    let rest = line
        .strip_prefix(given)
        .unwrap_or_else(|| panic!("Command line: {line:?} is not {given:?}\n{context}"));
    assert!(
        rest.split_whitespace()
            .all(|word| word.starts_with("virtio_mmio.device=")),
        "Command line: {line:?} adds more than virtio_mmio devices to {given:?}\n{context}"
    );
}

/// Every ACPI table the kernel lists carries OEM id `oem`; the tables a PC needs are there.
fn assert_acpi_oem(console: &str, oem: &str, context: &str) {
    let tables = acpi_tables(console);
    for wanted in ["RSDP", "FACP", "DSDT", "APIC"] {
        assert!(
            tables.iter().any(|(signature, _)| signature == wanted),
            "no ACPI {wanted} table in {tables:?}\n{context}"
        );
    }
    for (signature, table_oem) in &tables {
        assert_eq!(table_oem, oem, "ACPI {signature}'s OEM id\n{context}");
    }
}

/// The kernel's "Memory: NK/MK available" total is `bytes` less what the memory map
/// withholds (the legacy hole, reserved pages): within 4 MiB of it, never above.
fn assert_memory_total(console: &str, bytes: u64, context: &str) {
    let (available_k, total_k) =
        memory_kib(console).unwrap_or_else(|| panic!("no Memory: line\n{context}"));
    let ram_k = bytes / 1024;
    assert!(
        total_k <= ram_k && total_k + 4096 >= ram_k,
        "Memory: total {total_k}K, not about {ram_k}K\n{context}"
    );
    assert!(
        available_k > 0 && available_k <= total_k,
        "Memory: {available_k}K/{total_k}K\n{context}"
    );
}

/// The test /init ran, loaded the virtio modules, and every check passed through Linux's
/// own drivers (the block it wrote is in the image, its line came out of the
/// virtio-console); then it powered the machine off through ACPI S5 (status 0).
fn assert_booted_to_userspace(boot: &Boot, context: &str) {
    let init = linux_checks::parse(&boot.console);
    init.assert_passed(&CHECK_LINES, "poweroff", context);
    let block = init.check("blk.vda").expect("checked by assert_passed");
    if let Err(problem) = linux_checks::verify_disk_write(&boot.disk, block) {
        panic!("{problem}\n{context}");
    }
    let line = init.check("console").expect("checked by assert_passed");
    if let Err(problem) = linux_checks::verify_console_line(&boot.virtio_console, line) {
        panic!("{problem}\n{context}");
    }
    assert!(
        boot.console.contains("reboot: Power down"),
        "no power-off\n{context}"
    );
    assert_eq!(boot.status, Some(0), "{context}");
}

/// Where KVM runs guest code natively, hushvm's completion path is never taken.
fn assert_nothing_completed(boot: &Boot, context: &str) {
    assert!(
        boot.completed.is_empty(),
        "hushvm completed instructions on a host whose KVM runs guest code natively\n{context}"
    );
}

/// In KVM's emulator: the kernel's INT3s (its self-test, text_poke_bp) and the FPU
/// instructions of its first user process were completed, and nothing outside the set.
fn assert_instructions_completed(boot: &Boot, context: &str) {
    const SET: [&str; 11] = [
        "int3",
        "int",
        "fwait",
        "clac",
        "stac",
        "fxsave",
        "fxsave64",
        "fxrstor",
        "fxrstor64",
        "ldmxcsr",
        "stmxcsr",
    ];
    assert!(
        boot.completed
            .keys()
            .all(|name| SET.contains(&name.as_str())),
        "a completed instruction outside the set\n{context}"
    );
    assert!(
        boot.completed.get("int3").is_some_and(|&count| count >= 1),
        "the INT3 self-test was not completed\n{context}"
    );
}

/// In KVM's emulator with `--no-emulation-fallback`: the VM stopped with an emulation
/// failure at the kernel's INT3 self-test (the int3 in `int3_selftest`, found in the
/// vmlinux), not before, not after.
fn assert_stopped_at_int3_selftest(boot: &Boot, files: &LinuxFiles, context: &str) {
    assert_eq!(boot.status, Some(2), "not a guest fault\n{context}");
    assert!(
        boot.stderr.contains("KVM internal error"),
        "not an emulation failure\n{context}"
    );
    assert!(
        boot.completed.is_empty(),
        "completed instructions\n{context}"
    );
    let vmlinux = std::fs::read(files.dir.join("vmlinux")).expect("vmlinux");
    let int3 = int3_selftest_address(&vmlinux).expect("the INT3 self-test in vmlinux");
    assert_eq!(
        stopped_rip(&boot.stderr),
        Some(int3),
        "the stop is not the INT3 self-test at {int3:#x}\n{context}"
    );
}

// ---- Reading the kernel's console ----

/// The console's messages without their `[    0.000000] ` timestamps or line ends.
fn kernel_messages(console: &str) -> impl Iterator<Item = &str> {
    console.lines().map(|line| {
        let line = line.trim_end_matches('\r');
        match line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once("] "))
        {
            Some((stamp, message)) if stamp.trim().parse::<f64>().is_ok() => message,
            _ => line,
        }
    })
}

/// What the kernel printed after `Command line: `.
fn command_line(console: &str) -> Option<&str> {
    kernel_messages(console).find_map(|line| line.strip_prefix("Command line: "))
}

/// The kernel's `BIOS-e820: ` lines, each without that prefix:
/// `[mem 0x0000000000000000-0x000000000009fbff] usable`.
fn e820_lines(console: &str) -> Vec<&str> {
    kernel_messages(console)
        .filter_map(|line| line.strip_prefix("BIOS-e820: "))
        .collect()
}

/// The ACPI tables the kernel lists (`ACPI: RSDP 0x00000000000E0000 000024 (v02 HUSHVM)`)
/// as (signature, OEM id).
fn acpi_tables(console: &str) -> Vec<(String, String)> {
    kernel_messages(console)
        .filter_map(|line| {
            let rest = line.strip_prefix("ACPI: ")?;
            let mut words = rest.split_whitespace();
            let signature = words.next()?;
            let address = words.next()?;
            if signature.len() != 4 || !address.starts_with("0x") {
                return None;
            }
            // "(v02 HUSHVM)" or "(v01 BOCHS  BXPC ...)": the OEM id is 6 characters.
            let inside = &rest[rest.find("(v")? + 1..];
            let oem: String = inside.get(4..)?.chars().take(6).collect();
            Some((
                signature.to_string(),
                oem.trim_end_matches([' ', ')']).to_string(),
            ))
        })
        .collect()
}

/// N from `smpboot: Allowing N CPUs, 0 hotplug CPUs`.
fn allowed_cpus(console: &str) -> Option<u32> {
    kernel_messages(console).find_map(|line| {
        line.strip_prefix("smpboot: Allowing ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// (available, total) in KiB from `Memory: 219840K/523896K available (...)`.
fn memory_kib(console: &str) -> Option<(u64, u64)> {
    kernel_messages(console).find_map(|line| {
        let numbers = line.strip_prefix("Memory: ")?.split_whitespace().next()?;
        let (available, total) = numbers.split_once('/')?;
        let kib = |text: &str| text.strip_suffix('K')?.parse().ok();
        Some((kib(available)?, kib(total)?))
    })
}

/// The `rip=0x...` hushvm printed with a fault.
fn stopped_rip(stderr: &str) -> Option<u64> {
    let hex = stderr.split("rip=0x").nth(1)?;
    let digits: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&digits, 16).ok()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---- Finding the INT3 self-test in vmlinux ----

/// The virtual address of the int3 in the kernel's `int3_selftest()`: the asm there is
/// `int3; nop; nop; nop; nop` (the handler emulates a 5-byte call), so the one place in
/// the executable segments where 0xcc is followed by exactly four 0x90. `None` if there is
/// no such place or more than one.
fn int3_selftest_address(elf: &[u8]) -> Option<u64> {
    const PATTERN: [u8; 5] = [0xcc, 0x90, 0x90, 0x90, 0x90];
    let mut found = Vec::new();
    for segment in executable_segments(elf)? {
        let bytes = elf.get(segment.offset..segment.offset + segment.size)?;
        for (i, window) in bytes.windows(PATTERN.len() + 1).enumerate() {
            if window[..PATTERN.len()] == PATTERN && window[PATTERN.len()] != 0x90 {
                found.push(segment.vaddr + i as u64);
            }
        }
    }
    match found[..] {
        [address] => Some(address),
        _ => None,
    }
}

struct Segment {
    offset: usize,
    size: usize,
    vaddr: u64,
}

/// The executable PT_LOAD segments of an ELF64 little-endian file.
fn executable_segments(elf: &[u8]) -> Option<Vec<Segment>> {
    const PT_LOAD: u32 = 1;
    const PF_X: u32 = 1;
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let mut segments = Vec::new();
    for n in 0..phnum {
        let header = phoff + n * phentsize;
        if u32_at(header)? == PT_LOAD && u32_at(header + 4)? & PF_X != 0 {
            segments.push(Segment {
                offset: usize::try_from(u64_at(header + 8)?).ok()?,
                vaddr: u64_at(header + 16)?,
                size: usize::try_from(u64_at(header + 32)?).ok()?,
            });
        }
    }
    Some(segments)
}

// ---- The helpers against a real kernel's console: QEMU's on the development host ----

/// QEMU 7.2 booting the bzImage (through SeaBIOS) on the development host.
const QEMU_CONSOLE: &str = include_str!("../docs/linux-qemu-console.txt");
/// The same with the vmlinux through QEMU's PVH entry.
const QEMU_CONSOLE_PVH: &str = include_str!("../docs/linux-qemu-console-pvh.txt");

#[test]
fn parsers_read_qemus_console() {
    assert_console_on_ttys0(QEMU_CONSOLE, "QEMU");
    assert_eq!(
        command_line(QEMU_CONSOLE),
        Some("console=ttyS0 noxsave earlyprintk=ttyS0")
    );
    assert_command_line(
        QEMU_CONSOLE,
        "console=ttyS0 noxsave earlyprintk=ttyS0",
        "QEMU",
    );
    assert_eq!(
        e820_lines(QEMU_CONSOLE),
        [
            "[mem 0x0000000000000000-0x000000000009fbff] usable",
            "[mem 0x000000000009fc00-0x000000000009ffff] reserved",
            "[mem 0x00000000000f0000-0x00000000000fffff] reserved",
            "[mem 0x0000000000100000-0x000000001ffdffff] usable",
            "[mem 0x000000001ffe0000-0x000000001fffffff] reserved",
            "[mem 0x00000000feffc000-0x00000000feffffff] reserved",
            "[mem 0x00000000fffc0000-0x00000000ffffffff] reserved",
            "[mem 0x000000fd00000000-0x000000ffffffffff] reserved",
        ]
    );
    assert_eq!(allowed_cpus(QEMU_CONSOLE), Some(2));
    assert_eq!(memory_kib(QEMU_CONSOLE), Some((219_832, 523_768)));
    assert_eq!(
        acpi_tables(QEMU_CONSOLE)
            .iter()
            .map(|(signature, _)| signature.as_str())
            .collect::<Vec<_>>(),
        ["RSDP", "RSDT", "FACP", "DSDT", "APIC", "HPET", "WAET"],
        "FACS has no OEM id and is left out"
    );
    assert_acpi_oem(QEMU_CONSOLE, "BOCHS", "QEMU");
    assert_memory_total(QEMU_CONSOLE, 512 << 20, "QEMU");
}

#[test]
fn parsers_read_qemus_pvh_console() {
    assert_console_on_ttys0(QEMU_CONSOLE_PVH, "QEMU PVH");
    assert_command_line(
        QEMU_CONSOLE_PVH,
        "console=ttyS0 noxsave earlyprintk=ttyS0",
        "QEMU PVH",
    );
    // QEMU's PVH map merges the EBDA and BIOS areas into one reserved range.
    assert_eq!(
        e820_lines(QEMU_CONSOLE_PVH)[..3],
        [
            "[mem 0x0000000000000000-0x000000000009fbff] usable",
            "[mem 0x000000000009fc00-0x00000000000fffff] reserved",
            "[mem 0x0000000000100000-0x000000001ffdffff] usable",
        ]
    );
    assert_eq!(allowed_cpus(QEMU_CONSOLE_PVH), Some(2));
    assert_acpi_oem(QEMU_CONSOLE_PVH, "BOCHS", "QEMU PVH");
    assert_memory_total(QEMU_CONSOLE_PVH, 512 << 20, "QEMU PVH");
}

#[test]
fn parsers_reject_what_is_not_there() {
    let console = "[    0.000000] Linux version 6.1\r\n[    0.000000] Command line: a b\r\n";
    assert_eq!(command_line(console), Some("a b"));
    assert!(e820_lines(console).is_empty());
    assert!(acpi_tables(console).is_empty());
    assert_eq!(allowed_cpus(console), None);
    assert_eq!(memory_kib(console), None);
    let tables = acpi_tables(
        "[    0.01] ACPI: RSDP 0x00000000000E0000 000024 (v02 HUSHVM)\n\
         [    0.01] ACPI: Reserving FACP table memory at [mem 0xe0100-0xe01ff]\n\
         [    0.02] ACPI: DSDT 0x00000000000E0200 000100 (v02 HUSHVM HUSHVMDS 00000001 HVM  00000001)\n",
    );
    assert_eq!(
        tables,
        [
            ("RSDP".to_string(), "HUSHVM".to_string()),
            ("DSDT".to_string(), "HUSHVM".to_string())
        ]
    );
    assert_eq!(
        memory_kib("Memory: 1K/2K available (x)\n"),
        Some((1, 2)),
        "lines without a timestamp read too"
    );
}

#[test]
#[should_panic(expected = "is not")]
fn a_changed_command_line_is_caught() {
    assert_command_line(
        QEMU_CONSOLE,
        "console=ttyS1 noxsave earlyprintk=ttyS0",
        "QEMU",
    );
}

#[test]
#[should_panic(expected = "adds more than virtio_mmio devices")]
fn words_added_to_the_command_line_are_caught() {
    assert_command_line(QEMU_CONSOLE, "console=ttyS0 noxsave", "QEMU");
}

#[test]
fn virtio_mmio_devices_may_follow_the_command_line() {
    let console =
        "[    0.000000] Command line: console=ttyS0 nokaslr virtio_mmio.device=4K@0xc0000000:5\n";
    assert_command_line(console, "console=ttyS0 nokaslr", "appended");
}

#[test]
#[should_panic(expected = "not about")]
fn a_memory_total_far_from_the_ram_size_is_caught() {
    assert_memory_total(QEMU_CONSOLE, 1 << 30, "QEMU");
}

#[test]
fn stop_rip_is_read_from_hushvms_fault_report() {
    let stderr = "hushvm: the VM stopped: KVM internal error (suberror 1: emulation failure)\n  \
                  rip=0xffffffff8305c0fc rsp=0xffffffff82a03e80 rflags=0x46\n";
    assert_eq!(stopped_rip(stderr), Some(0xffff_ffff_8305_c0fc));
    assert_eq!(stopped_rip("hushvm: error: bad image"), None);
}

/// A minimal ELF64 with one executable PT_LOAD at file offset 0x1000, vaddr `base`.
fn elf_with_text(base: u64, text: &[u8]) -> Vec<u8> {
    let mut elf = vec![0u8; 0x1000];
    elf[..5].copy_from_slice(b"\x7fELF\x02");
    elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
    elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
    elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    let header = 0x40;
    elf[header..header + 4].copy_from_slice(&1u32.to_le_bytes());
    elf[header + 4..header + 8].copy_from_slice(&5u32.to_le_bytes());
    elf[header + 8..header + 16].copy_from_slice(&0x1000u64.to_le_bytes());
    elf[header + 16..header + 24].copy_from_slice(&base.to_le_bytes());
    elf[header + 32..header + 40].copy_from_slice(&(text.len() as u64).to_le_bytes());
    elf.extend_from_slice(text);
    elf
}

#[test]
fn the_int3_selftest_is_found_in_the_fetched_vmlinux() {
    let Some(files) = linux_files() else {
        return;
    };
    let vmlinux = std::fs::read(files.dir.join("vmlinux")).expect("vmlinux");
    let address = int3_selftest_address(&vmlinux).expect("one INT3 self-test");
    assert!(address >= 0xffff_ffff_8100_0000, "{address:#x}");
    // Where QEMU stopped these kernels (docs/linux-qemu-baseline.md).
    let measured = [
        ("6.1.0-48-cloud-amd64", 0xffff_ffff_8305_c0fc),
        ("6.1.0-56-cloud-amd64", 0xffff_ffff_8305_e26c),
    ];
    let release = std::fs::read_to_string(files.dir.join("KERNEL_VERSION")).unwrap_or_default();
    if let Some((_, rip)) = measured.iter().find(|(name, _)| *name == release.trim()) {
        assert_eq!(address, *rip, "{release}");
    }
}

#[test]
fn the_int3_selftest_is_found_by_its_four_nops() {
    let base = 0xffff_ffff_8100_0000;
    // A padding int3 with six nops, then the self-test's int3 with four.
    let text = [
        0xc3, 0xcc, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x55, 0x48, 0x8d, 0x7c, 0x24, 0x04, 0xcc,
        0x90, 0x90, 0x90, 0x90, 0x83, 0x7c,
    ];
    assert_eq!(
        int3_selftest_address(&elf_with_text(base, &text)),
        Some(base + 14)
    );
    let twice = [&text[..], &text[13..]].concat();
    assert_eq!(int3_selftest_address(&elf_with_text(base, &twice)), None);
    assert_eq!(int3_selftest_address(b"not an elf"), None);
}
