//! `hushvm-floor`: the floor of the `rtc` benchmark. It boots the same Multiboot guest the
//! same way (hushvm's loader and KVM setup), then runs the smallest exit loop that can
//! serve it: an RTC index and 128 bytes of NVRAM, COM1 output collected in memory, and
//! isa-debug-exit. No buses, no devices, no profiler. Whatever hushvm spends per exit
//! beyond this is hushvm's own overhead.
//!
//! This bench tool is the one place outside `src/kvm/` that matches on kvm-ioctls' exits:
//! doing so directly is what makes it a floor.
//!
//! Usage: hushvm-floor --multiboot FILE [--cmdline TEXT] [--no-coalesce]
//! Prints the guest's COM1 output; exits with (v << 1) | 1 for a debug-exit write of v.

use std::io::Write;
use std::process::ExitCode;

use hushvm::bus::{AddressSpace, PostedZone};
use hushvm::coalesced::PostedWriteRing;
use hushvm::kvm::{Hypervisor, Vm};
use hushvm::loader;
use kvm_ioctls::VcpuExit;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const MEMORY: usize = 64 << 20;

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
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY)])
        .map_err(|e| e.to_string())?;
    let name = std::path::Path::new(&options.kernel)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let cmdline = loader::kernel_cmdline(&name, &options.cmdline);
    let boot = loader::load(&memory, &image, &cmdline, &[]).map_err(|e| e.to_string())?;
    let hypervisor = Hypervisor::open().map_err(|e| e.to_string())?;
    let vm = Vm::new(&hypervisor, &memory).map_err(|e| e.to_string())?;
    let mut vcpu = vm
        .create_vcpu(0, &hushvm::kvm::VcpuOptions { pv_eoi: true })
        .map_err(|e| e.to_string())?;
    vcpu.enter_protected_mode(
        boot.entry,
        loader::multiboot::BOOTLOADER_MAGIC,
        boot.info_addr,
    )
    .map_err(|e| e.to_string())?;
    let ring = if options.coalesce {
        let zone = PostedZone {
            space: AddressSpace::Pio,
            addr: 0x70,
            size: 1,
            device: "rtc",
        };
        vm.register_posted_zone(&zone).map_err(|e| e.to_string())?;
        vcpu.map_posted_write_ring().map_err(|e| e.to_string())?
    } else {
        None
    };

    let mut index = 0usize;
    let mut nvram = [0u8; 128];
    let mut output = Vec::new();
    let fd = vcpu.raw_fd();
    let status = loop {
        let exit = fd.run().map_err(|e| format!("KVM_RUN: {e}"))?;
        if let Some(ring) = &ring {
            while let Some(write) = ring.pop() {
                index = usize::from(write.data[0] & 0x7f);
            }
        }
        match exit {
            VcpuExit::IoOut(0x70, data) => index = usize::from(data[0] & 0x7f),
            VcpuExit::IoOut(0x71, data) => nvram[index] = data[0],
            VcpuExit::IoIn(0x71, data) => data[0] = nvram[index],
            VcpuExit::IoOut(0x3f8, data) => output.push(data[0]),
            VcpuExit::IoOut(0xf4, data) => break (data[0] << 1) | 1,
            VcpuExit::IoIn(_, data) => data.fill(0xff),
            VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..) => {}
            VcpuExit::MmioRead(_, data) => data.fill(0xff),
            other => return Err(format!("unexpected exit {other:?}")),
        }
    };
    std::io::stdout()
        .write_all(&output)
        .map_err(|e| e.to_string())?;
    Ok(status)
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
