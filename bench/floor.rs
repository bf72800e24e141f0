//! `hushvm-floor`: the floor of the `rtc` benchmark. It boots the same Multiboot guest the
//! same way (hushvm's loader and KVM setup), then runs the smallest exit loop that can
//! serve it: an RTC index and 128 bytes of NVRAM, COM1 output collected in memory, and
//! isa-debug-exit. No buses, no devices, no profiler. Whatever hushvm spends per exit
//! beyond this is hushvm's own overhead.
//!
//! The loop itself is `hushvm::kvm::floor`: it matches on kvm-ioctls' exits directly,
//! which is what makes it a floor, and only `kvm/` may do that.
//!
//! Usage: hushvm-floor --multiboot FILE [--cmdline TEXT] [--no-coalesce]
//! Prints the guest's COM1 output; exits with (v << 1) | 1 for a debug-exit write of v.

use std::io::Write;
use std::process::ExitCode;

use hushvm::bus::{AddressSpace, PostedZone};
use hushvm::kvm::floor::run_rtc_floor;
use hushvm::kvm::{Hypervisor, Vm};
use hushvm::layout::{ports, MemoryLayout};
use hushvm::loader::{self, BootRequest};
use hushvm::machine;

const MEMORY: u64 = 64 << 20;

struct Options {
    kernel: String,
    cmdline: String,
    coalesce: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        kernel: String::new(),
        cmdline: String::new(),
        coalesce: true,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--multiboot" => options.kernel = args.next().ok_or("--multiboot needs a file")?,
            "--cmdline" => options.cmdline = args.next().ok_or("--cmdline needs a value")?,
            "--no-coalesce" => options.coalesce = false,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.kernel.is_empty() {
        return Err("usage: hushvm-floor --multiboot FILE [--cmdline TEXT] [--no-coalesce]".into());
    }
    Ok(options)
}

fn run(options: &Options) -> Result<u8, String> {
    let image = std::fs::read(&options.kernel).map_err(|e| format!("{}: {e}", options.kernel))?;
    let layout = MemoryLayout::new(MEMORY).map_err(|e| e.to_string())?;
    let memory = machine::guest_memory(&layout).map_err(|e| e.to_string())?;
    let name = std::path::Path::new(&options.kernel)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let request = BootRequest {
        kernel_name: &name,
        image: &image,
        cmdline: &options.cmdline,
        modules: &[],
        initrd: None,
        rsdp: None,
    };
    let entry = loader::load(&memory, &layout, &request).map_err(|e| e.to_string())?;
    let hypervisor = Hypervisor::open().map_err(|e| e.to_string())?;
    let vm = Vm::new(&hypervisor, &memory).map_err(|e| e.to_string())?;
    let cpuid = vm
        .cpuid(&hushvm::kvm::VcpuOptions::default())
        .map_err(|e| e.to_string())?;
    let mut vcpu = vm.create_vcpu(0, 1, &cpuid).map_err(|e| e.to_string())?;
    vcpu.set_entry_state(&entry).map_err(|e| e.to_string())?;
    let ring = if options.coalesce {
        let zone = PostedZone {
            space: AddressSpace::Pio,
            addr: u64::from(ports::RTC),
            size: 1,
            device: "rtc",
            flush: hushvm::bus::Flush::BeforeNextAccess,
        };
        vm.register_posted_zone(&zone).map_err(|e| e.to_string())?;
        vcpu.map_posted_write_ring().map_err(|e| e.to_string())?
    } else {
        None
    };
    let floor = run_rtc_floor(&mut vcpu, ring.as_ref()).map_err(|e| e.to_string())?;
    std::io::stdout()
        .write_all(&floor.serial)
        .map_err(|e| e.to_string())?;
    Ok(floor.status)
}

fn main() -> ExitCode {
    match parse_options().and_then(|options| run(&options)) {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            eprintln!("hushvm-floor: error: {error}");
            ExitCode::FAILURE
        }
    }
}
