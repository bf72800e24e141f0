//! Seccomp: a thread that makes a syscall outside its filter's list is reported and the
//! process stopped (`--seccomp kill`, the default), let through (`log`), or never
//! filtered (`off`). `HUSHVM_SECCOMP_SELFTEST=1` makes every vCPU thread call `getppid`
//! right after installing its filter. That every guest and workload runs under the
//! default filters is checked by the rest of the suite, which uses the default.

mod common;

use std::process::{Command, Output};

use common::{guest_file, kvm_available};
use hushvm::seccomp::{SELFTEST_VARIABLE, VIOLATION_STATUS};

/// Runs the rtc guest for a few iterations with `--seccomp action`, selftest or not.
fn run_rtc(action: Option<&str>, selftest: bool) -> Output {
    let guest = guest_file("rtc");
    let mut command = Command::new(env!("CARGO_BIN_EXE_hushvm"));
    command.args([
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline",
        "iterations=10",
        "--timeout",
        "30",
    ]);
    if let Some(action) = action {
        command.args(["--seccomp", action]);
    }
    if selftest {
        command.env(SELFTEST_VARIABLE, "1");
    } else {
        command.env_remove(SELFTEST_VARIABLE);
    }
    command.output().expect("hushvm runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_vcpu_thread_making_a_forbidden_syscall_is_reported_and_stopped() {
    if !kvm_available() {
        return;
    }
    for action in [None, Some("kill")] {
        let output = run_rtc(action, true);
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(VIOLATION_STATUS), "{stderr}");
        assert_eq!(VIOLATION_STATUS, 159);
        let line = format!(
            "hushvm: seccomp: thread vcpu0 made syscall {}, which its filter does not allow",
            libc::SYS_getppid
        );
        assert!(stderr.lines().any(|l| l == line), "{stderr}");
        // The guest never ran: the filter is on before its first instruction.
        assert!(output.stdout.is_empty(), "{:?}", output.stdout);
    }
}

#[test]
fn log_and_off_let_the_syscall_run() {
    if !kvm_available() {
        return;
    }
    for action in ["log", "off"] {
        let output = run_rtc(Some(action), true);
        let stderr = stderr(&output);
        // The rtc guest exits with value 0: status 1, as under QEMU's isa-debug-exit.
        assert_eq!(output.status.code(), Some(1), "{action}: {stderr}");
        assert!(!stderr.contains("seccomp"), "{action}: {stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("rtc: iterations=") && stdout.contains("errors=00000000000000000000")
        );
    }
}

#[test]
fn the_default_filters_let_a_guest_run_to_its_end() {
    if !kvm_available() {
        return;
    }
    let output = run_rtc(None, false);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("errors=00000000000000000000"));
}

#[test]
fn an_unknown_action_is_a_clear_error() {
    let guest = guest_file("rtc");
    let output = Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args([
            "run",
            "--kernel",
            guest.to_str().unwrap(),
            "--seccomp",
            "trap",
        ])
        .output()
        .expect("hushvm runs");
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("expected kill, log or off"), "{stderr}");
}

/// The KVM calls a vCPU thread makes for a guest that moves a PCI BAR (its doorbells'
/// ioeventfds re-registered) or reprograms an MSI-X vector (the GSI routing table), and
/// for a fault (the registers), made from a thread under the vcpu filter: a denied one
/// would end this test process with status 159. The test guests do not reach these paths
/// (Linux does, on a host where it boots that far).
#[test]
fn the_vcpu_filter_allows_bar_moves_msix_routing_and_register_dumps() {
    use hushvm::bus::AddressSpace;
    use hushvm::kvm::{Hypervisor, Vm};
    use hushvm::layout::MemoryLayout;
    use hushvm::seccomp::{Filters, SeccompAction, ThreadKind};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    if !kvm_available() {
        return;
    }
    let layout = MemoryLayout::new(16 << 20).unwrap();
    let memory = hushvm::machine::guest_memory(&layout).unwrap();
    let hypervisor = Hypervisor::open().unwrap();
    let vm = Vm::new(&hypervisor, &memory).unwrap();
    let cpuid = vm.cpuid(&Default::default()).unwrap();
    let vcpu = vm.create_vcpu(0, 1, &cpuid).unwrap();
    let (routes, ioevents) = (vm.msi_routes(), vm.ioevents());
    let (gsi, _line) = routes.vector().unwrap();
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    let filters = Filters::new(SeccompAction::Kill).unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                filters.install(ThreadKind::Vcpu, "vcpu-test").unwrap();
                routes.set(gsi, Some((0xfee0_0000, 0x41))).unwrap();
                routes.set(gsi, None).unwrap();
                let (old, new) = (0xe000_0000, 0xe100_0000);
                ioevents
                    .assign(&event, AddressSpace::Mmio, old, None)
                    .unwrap();
                ioevents
                    .deassign(&event, AddressSpace::Mmio, old, None)
                    .unwrap();
                ioevents
                    .assign(&event, AddressSpace::Mmio, new, None)
                    .unwrap();
                assert!(vcpu.dump_registers().starts_with("rip="));
            })
            .join()
            .unwrap();
    });
}
