//! The platform a Linux guest expects, seen by the probe guest: ACPI power-off and
//! reset, the PM timer, the ACPI tables, CPUID as `--cpu` edits it.

mod common;

use common::{field, guest_config, kvm_available, run, serial_text};
use hushvm::bus::StopRequest;
use hushvm::cpuid::CpuModel;
use hushvm::kvm::{Hypervisor, VcpuOptions, Vm};
use hushvm::layout::MemoryLayout;
use hushvm::profile::ExitKind;
use hushvm::run_loop::VmStop;

#[test]
fn acpi_s5_powers_off_and_0xcf9_resets() {
    if !kvm_available() {
        return;
    }
    let report = run(&guest_config("probe", "action=poweroff"));
    assert_eq!(report.stop, VmStop::Guest(StopRequest::PowerOff));
    assert_eq!(report.stop.exit_status(), 0);
    let report = run(&guest_config("probe", "action=cf9reset"));
    assert_eq!(report.stop, VmStop::Guest(StopRequest::Reset));
}

#[test]
fn a_reset_written_to_0xcf9_takes_effect_though_the_guest_never_exits_again() {
    if !kvm_available() {
        return;
    }
    // KVM's coalesced zone for the PCI address register (0xcf8, 4 bytes) also takes byte
    // writes to 0xcf9, so the zone is bounded: registered only while the guest has been
    // writing to a bounded zone (here COM1, "probe: start"), with the drain's timer
    // running. Then the reset is posted and the drain applies it within its period;
    // after 50 quiet milliseconds the zones are gone and the reset exits at once.
    for (extra, posted) in [("", true), (" quiet_ms=50", false)] {
        let mut config = guest_config("probe", &format!("action=cf9spin{extra}"));
        config.run.timeout = Some(std::time::Duration::from_secs(20));
        let started = std::time::Instant::now();
        let report = run(&config);
        assert_eq!(report.stop, VmStop::Guest(StopRequest::Reset), "{extra}");
        let exits = report
            .profile
            .count(|key| key.kind == ExitKind::PioOut && key.addr == 0xcf9);
        assert_eq!(exits, u64::from(!posted), "0xcf9 exits{extra}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}

#[test]
fn the_pm_timer_runs_forwards_at_its_rate() {
    if !kvm_available() {
        return;
    }
    let report = run(&guest_config("probe", "action=pmtimer"));
    let text = serial_text(&report);
    assert_eq!(report.stop, VmStop::Guest(StopRequest::Exit(0)), "{text}");
    let delta: u64 = field(&text, "pmtimer_delta").parse().unwrap();
    // 2000 loop passes take well under a second even in KVM's emulator, and at least a
    // microsecond (3.58 ticks).
    assert!((3..3_579_545).contains(&delta), "{text}");
    let reads = report
        .profile
        .count(|key| key.kind == ExitKind::PioIn && key.addr == 0x608);
    assert_eq!(reads, 2, "each read is one decoded PIO exit");
}

#[test]
fn the_rsdp_is_in_the_bios_area_with_hushvms_oem_id() {
    if !kvm_available() {
        return;
    }
    let report = run(&guest_config("probe", "action=acpi"));
    let text = serial_text(&report);
    assert_eq!(field(&text, "rsdp_signature"), "[RSD PTR ]");
    assert_eq!(field(&text, "rsdp_oem"), "[HUSHVM]");
    assert_eq!(field(&text, "rsdp_revision"), "2");
}

/// Leaf 1's ECX as the probe guest reads it under `--cpu model`.
fn guest_leaf1_ecx(model: &str) -> u32 {
    let mut config = guest_config("probe", "action=cpuid");
    config.vcpus.model = model.parse::<CpuModel>().unwrap();
    let text = serial_text(&run(&config));
    field(&text, "leaf1_ecx").parse().unwrap()
}

const CX16: u32 = 1 << 13;
const X2APIC: u32 = 1 << 21;
const XSAVE: u32 = 1 << 26;
const AVX: u32 = 1 << 28;
const HYPERVISOR: u32 = 1 << 31;

#[test]
fn cpu_features_hidden_with_cpu_are_hidden_from_the_guest() {
    if !kvm_available() {
        return;
    }
    let host = guest_leaf1_ecx("host");
    assert_ne!(host & HYPERVISOR, 0, "a guest is told it is one");
    let edited = guest_leaf1_ecx("host,-cx16,-x2apic");
    assert_eq!(edited & (CX16 | X2APIC), 0, "{edited:#x}");
    assert_eq!(
        edited | CX16 | X2APIC,
        host | CX16 | X2APIC,
        "nothing else moves"
    );
}

#[test]
fn hiding_xsave_hides_its_dependants_in_what_kvm_is_given() {
    if !kvm_available() {
        return;
    }
    let hypervisor = Hypervisor::open().unwrap();
    let layout = MemoryLayout::new(16 << 20).unwrap();
    let memory = hushvm::machine::guest_memory(&layout).unwrap();
    let vm = Vm::new(&hypervisor, &memory).unwrap();
    let options = VcpuOptions {
        model: "host,-xsave,-cx16".parse().unwrap(),
        ..VcpuOptions::default()
    };
    let cpuid = vm.cpuid(&options).unwrap();
    let leaf1 = cpuid.iter().find(|e| e.function == 1).unwrap();
    assert_eq!(leaf1.ecx & (CX16 | XSAVE | AVX), 0, "{:#x}", leaf1.ecx);
    assert_ne!(leaf1.ecx & HYPERVISOR, 0);
    let xsave_leaf = cpuid.iter().filter(|e| e.function == 0xd);
    assert!(xsave_leaf
        .into_iter()
        .all(|e| e.eax | e.ebx | e.ecx | e.edx == 0));
    assert!(vm.create_vcpu(1, 2, &cpuid).is_ok(), "KVM takes it");
    // What the guest then reads is the host KVM's business: the nested KVM of the
    // development host reports leaf 1 from elsewhere (KVM_GET_SUPPORTED_CPUID there has
    // no XSAVE bit at all, yet its guests read XSAVE and AVX), which is why a Linux
    // guest there also needs `noxsave`. cx16 and x2apic it honours (test above).
}
