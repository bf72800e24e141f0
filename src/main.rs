//! The `hushvm` command line.

mod firecracker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hushvm::snapshot::SnapshotPaths;

use hushvm::bench::{self, BenchOptions};
use hushvm::bus::StopRequest;
use hushvm::config::VirtioTransport;
use hushvm::config::{self, SerialMode};
use hushvm::cpuid::CpuModel;
use hushvm::layout::MemoryLayout;
use hushvm::loader::{self, KernelFormat, Module};
use hushvm::machine::{
    self, BootConfig, Coalescing, Cures, DeviceConfig, Kernel, MachineConfig, RunOptions,
    RunReport, VcpuConfig,
};
use hushvm::profile::ProfileReport;
use hushvm::run_loop::VmStop;
use hushvm::seccomp::SeccompAction;

#[derive(Parser)]
#[command(
    name = "hushvm",
    version,
    about = "A KVM VMM that keeps guest I/O out of userspace, and measures it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel, as `qemu-system-x86_64 -kernel` does.
    Run(Box<RunArgs>),
    /// Run a workload under each of its variants and compare them.
    Bench(BenchArgs),
    /// Replay a trace made with `run --record` through fresh devices, with no KVM.
    Replay {
        /// The trace file.
        file: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Read traces and say which registers' writes could be posted instead of exiting.
    Advise {
        /// Trace files (from `run --record`); a register gets its worst verdict over all.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write the built-in test guests (Multiboot ELF32 files) to a directory.
    Guests {
        /// Where to write them.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The kernel; its format is recognised from the file: a bzImage (Linux boot
    /// protocol, 64-bit entry), an ELF vmlinux with a PVH entry note, or a Multiboot
    /// ELF32 image.
    #[arg(long, value_name = "FILE", visible_alias = "multiboot")]
    kernel: PathBuf,
    /// vCPUs: vCPU 0 starts at the entry point, the others wait for INIT/SIPI.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    cpus: u8,
    /// CPUID features, in QEMU's spelling: `host`, then `-feature` or `+feature`
    /// (hiding a feature hides what depends on it), e.g. host,-xsave,-cx16.
    #[arg(long, value_name = "MODEL", default_value = "host")]
    cpu: CpuModel,
    /// Guest RAM (QEMU syntax: 64M, 1G; a plain number is MiB).
    #[arg(long, default_value = "64M", value_parser = parse_memory)]
    mem: MemoryLayout,
    /// Where COM1 goes: stdio, none or file:PATH.
    #[arg(long, default_value = "stdio")]
    serial: SerialMode,
    /// The kernel command line (a Multiboot kernel sees its file name, a space, then this).
    #[arg(long, default_value = "")]
    cmdline: String,
    /// A Linux kernel's initial RAM disk.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// A Multiboot module (repeatable), as QEMU's -initrd for a Multiboot kernel.
    #[arg(long = "module", value_name = "FILE")]
    modules: Vec<PathBuf>,
    /// Let every write exit to userspace: no coalesced PIO.
    #[arg(long)]
    no_coalesce: bool,
    /// A virtio-blk disk backed by PATH (a multiple of 512 bytes), repeatable:
    /// ",readonly" refuses the guest's writes, ",id=ID" names it (default blkN),
    /// ",transport=pci|mmio" places it (default --virtio-transport).
    #[arg(long, value_name = "PATH[,readonly][,id=ID][,transport=pci|mmio]")]
    disk: Vec<hushvm::config::DiskConfig>,
    /// A virtio-net device on the existing tap NAME, repeatable (ids net0, net1, ...;
    /// on --virtio-transport): ",mac=MAC" (default 52:54:00:12:34:56 plus N), ",queues=N",
    /// ",rx_bw=..", ",rx_ops=..", ",tx_bw=..", ",tx_ops=.." (token buckets).
    #[arg(
        long = "net",
        value_name = "tap=NAME[,mac=MAC][,queues=N][,rx_bw=..][,tx_bw=..]"
    )]
    net: Vec<String>,
    /// A virtio-rng device fed from the host's /dev/urandom.
    #[arg(long)]
    rng: bool,
    /// Where the virtio-rng device sits, if not where --virtio-transport says.
    #[arg(long, value_name = "pci|mmio", requires = "rng")]
    rng_transport: Option<VirtioTransport>,
    /// Where the virtio devices sit: pci (virtio-pci with MSI-X; the default for Linux
    /// kernels) or mmio (virtio-mmio; the default for Multiboot kernels).
    #[arg(long, value_name = "pci|mmio")]
    virtio_transport: Option<VirtioTransport>,
    /// A virtio-console device whose output goes to stdio, none or file:PATH.
    #[arg(long, value_name = "DEST")]
    virtio_console: Option<SerialMode>,
    /// Where the virtio-console device sits, if not where --virtio-transport says.
    #[arg(long, value_name = "pci|mmio", requires = "virtio_console")]
    virtio_console_transport: Option<VirtioTransport>,
    /// A virtio-vsock device for guest CID N whose host side listens on the Unix socket
    /// PATH (Firecracker's hybrid vsock: host programs connect there and send
    /// "CONNECT <port>\n"; guest connections to port P go to PATH_P).
    #[arg(long, value_name = "cid=N,uds=PATH[,id=ID][,transport=pci|mmio]")]
    vsock: Option<hushvm::config::VsockConfig>,
    /// Offer no VIRTIO_RING_F_EVENT_IDX: every doorbell and every used batch's interrupt
    /// go through, as without notification suppression.
    #[arg(long)]
    no_event_idx: bool,
    /// Take virtqueue doorbells as ordinary MMIO exits instead of ioeventfds.
    #[arg(long)]
    no_ioeventfd: bool,
    /// How doorbells arrive: len0 (fast-MMIO ioeventfd, the default), len4 (4-byte
    /// datamatch per queue), pio (an I/O-port ioeventfd) or exit.
    #[arg(long, hide = true, conflicts_with = "no_ioeventfd")]
    doorbell: Option<hushvm::config::Doorbell>,
    /// How long the event loop polls after an event before it sleeps, in microseconds
    /// (0: never poll).
    #[arg(long, value_name = "USECS", default_value_t = 100)]
    event_poll_us: u64,
    /// While the event loop polls, do not look at the virtqueues' available indices
    /// (serve a request only when its doorbell's ioeventfd fires)
    #[arg(long)]
    no_queue_poll: bool,
    /// At most how long a posted COM1 byte (or 0xcf8 write, whose zone also takes 0xcf9's
    /// resets) waits in KVM's ring before the event loop applies it, in microseconds; the
    /// drain runs only while the guest writes them (0: no drain, and neither is posted).
    #[arg(long, value_name = "USECS", default_value_t = 1000)]
    posted_drain_us: u64,
    /// Do not advertise KVM_FEATURE_PV_EOI in CPUID (the guest then writes every EOI).
    #[arg(long)]
    no_pv_eoi: bool,
    /// Print the exit profile when the VM stops.
    #[arg(long)]
    profile: bool,
    /// Write the exit profile as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    profile_json: Option<PathBuf>,
    /// Stop a guest still running after SECS seconds (status 124).
    #[arg(long, value_name = "SECS", value_parser = config::parse_timeout)]
    timeout: Option<std::time::Duration>,
    /// Record every exit (and every posted write and event that changed a device) to FILE.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Restore the snapshot in DIR (its vmstate and memory files) instead of booting;
    /// the other options must describe the machine that took it.
    #[arg(long, value_name = "DIR", conflicts_with = "snapshot_dir")]
    restore: Option<PathBuf>,
    /// Snapshot the VM into DIR after --snapshot-after seconds, then stop it.
    #[arg(long, value_name = "DIR", requires = "snapshot_after")]
    snapshot_dir: Option<PathBuf>,
    #[arg(long, value_name = "SECS", value_parser = config::parse_timeout, requires = "snapshot_dir")]
    snapshot_after: Option<std::time::Duration>,
    /// Count exits without timing them (to measure what the profiler's clock costs).
    #[arg(long, hide = true)]
    no_exit_timing: bool,
    /// Stop the VM when KVM's instruction emulator fails, rather than completing the few
    /// instructions hushvm knows (INT3, INT n, FWAIT, CLAC/STAC, LDMXCSR/STMXCSR,
    /// FXSAVE/FXRSTOR): to compare with QEMU, which stops there
    #[arg(long)]
    no_emulation_fallback: bool,
    /// What the vCPU and event-loop threads' seccomp filters do with a syscall outside
    /// their lists: kill (report it and exit with status 159), log (the kernel logs it
    /// and lets it run) or off (no filters).
    #[arg(long, value_name = "kill|log|off", default_value = "kill")]
    seccomp: SeccompAction,
}

#[derive(Args)]
struct BenchArgs {
    /// The workload: rtc (seed 000), eoi (seed 002), tick (RTC tick, seeds 000 + 002),
    /// doorbell (seed 003), blk (virtio-blk), strio, console, pci (configuration
    /// reads through 0xcf8/0xcfc), net (virtio-net transmitting, needs --tap), pause (time
    /// from a pause request to every vCPU out of KVM_RUN, 1 and 2 vCPUs; --iterations:
    /// pauses per VM), api (Firecracker mode: spawn to socket, InstanceStart to the
    /// guest's first output, API latency; --iterations: calls of each kind per process) or
    /// vsock (4 KiB messages each way through virtio-vsock; --iterations: messages per VM).
    workload: String,
    /// Iterations per measured run (rtc: loop passes; eoi, tick: interrupts; doorbell:
    /// requests; blk: 4 KiB blocks written and read back; pci: configuration reads;
    /// net: frames sent).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    iterations: Option<u64>,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Run only this variant.
    #[arg(long, value_name = "NAME")]
    variant: Option<String>,
    /// Count exits without timing them.
    #[arg(long)]
    no_exit_timing: bool,
    /// Where the virtio devices sit: mmio, or pci (virtio-pci; the guest is told
    /// `transport=pci`; doorbell and net).
    #[arg(long, value_name = "mmio|pci", default_value = "mmio")]
    transport: VirtioTransport,
    /// The seccomp filters' action, as for `run`.
    #[arg(long, value_name = "kill|log|off", default_value = "kill")]
    seccomp: SeccompAction,
    /// net: the tap its virtio-net device uses (an existing tap, up, in hushvm's network
    /// namespace, whose host side is 10.77.0.1/24: the guest floods 10.77.0.1 port 9).
    #[arg(long, value_name = "NAME")]
    tap: Option<String>,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The machine `hushvm run` describes.
fn machine_config(args: RunArgs) -> Result<MachineConfig> {
    let image = loader::read_file(&args.kernel)?;
    // As QEMU's q35 and Cloud Hypervisor do, a Linux kernel gets its devices on PCI.
    let linux = !matches!(loader::detect(&image), Ok(KernelFormat::Multiboot) | Err(_));
    let transport = args.virtio_transport.unwrap_or(match linux {
        true => VirtioTransport::Pci,
        false => VirtioTransport::Mmio,
    });
    let modules = args
        .modules
        .iter()
        .map(|path| {
            Ok(Module {
                name: path.display().to_string(),
                data: loader::read_file(path)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(MachineConfig {
        memory: args.mem,
        vcpus: VcpuConfig {
            count: args.cpus,
            model: args.cpu,
        },
        boot: BootConfig {
            kernel: Kernel {
                name: file_name(&args.kernel),
                image,
            },
            cmdline: args.cmdline,
            modules,
            initrd: args.initrd.as_deref().map(loader::read_file).transpose()?,
        },
        devices: DeviceConfig {
            serial: args.serial,
            disks: args.disk,
            rng: args.rng,
            rng_transport: args.rng_transport,
            console_transport: args.virtio_console_transport,
            virtio_console: args.virtio_console,
            vsock: args.vsock,
            net: hushvm::net::config::parse_net_options(&args.net)?,
            transport,
        },
        cures: Cures {
            coalesce: !args.no_coalesce,
            pv_eoi: !args.no_pv_eoi,
            doorbell: match (args.no_ioeventfd, args.doorbell) {
                (true, _) => hushvm::config::Doorbell::Exit,
                (false, Some(doorbell)) => doorbell,
                (false, None) => hushvm::config::Doorbell::default(),
            },
            event_poll: std::time::Duration::from_micros(args.event_poll_us),
            queue_poll: !args.no_queue_poll,
            event_idx: !args.no_event_idx,
            posted_drain: (args.posted_drain_us > 0)
                .then(|| std::time::Duration::from_micros(args.posted_drain_us)),
        },
        run: RunOptions {
            timeout: args.timeout,
            time_exits: !args.no_exit_timing,
            record: args.record,
            seccomp: args.seccomp,
            emulation_fallback: !args.no_emulation_fallback,
        },
    })
}

/// One line on standard error for a stop the user should hear about.
fn say_why_it_stopped(report: &RunReport) {
    match &report.stop {
        VmStop::Fault(fault) => {
            eprintln!("hushvm: the VM stopped: {}", hushvm::errors::chain(fault));
            if let Some(registers) = &report.registers {
                eprintln!("  {registers}");
            }
        }
        VmStop::Timeout => {
            eprintln!("hushvm: the guest was still running after the timeout; stopped")
        }
        VmStop::Guest(StopRequest::PowerOff) => eprintln!("hushvm: guest powered off"),
        VmStop::Signal(signal) => {
            eprintln!("hushvm: stopped by {}", machine::signal_name(*signal))
        }
        VmStop::Guest(_) | VmStop::Requested => {}
    }
}

/// `--profile` (a table on standard error) and `--profile-json FILE`.
fn write_profile(report: &RunReport, table: bool, json: Option<&Path>) -> Result<()> {
    if !table && json.is_none() {
        return Ok(());
    }
    let profile = ProfileReport::new(&report.profile, report.kvm_stats.clone());
    if table {
        eprint!("{}", profile.render());
        if let Coalescing::On(zones) = &report.coalescing {
            let zones: Vec<String> = zones.iter().map(|(a, s)| format!("{a:#x}+{s}")).collect();
            eprintln!("coalesced PIO zones: {}", zones.join(" "));
        }
        eprintln!("wall time: {:.3} ms", report.wall.as_secs_f64() * 1e3);
        for device in &report.devices {
            let counters: Vec<String> = device
                .counters
                .iter()
                .filter(|(_, value)| *value > 0)
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            if !counters.is_empty() {
                eprintln!(
                    "device {} ({}): {}",
                    device.id,
                    device.kind.name(),
                    counters.join(" ")
                );
            }
        }
    }
    if let Some(path) = json {
        let json = serde_json::to_string_pretty(&profile)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let (table, json) = (args.profile, args.profile_json.clone());
    let restore = args.restore.as_deref().map(SnapshotPaths::in_dir);
    let snapshot = args.snapshot_dir.as_deref().map(SnapshotPaths::in_dir);
    let after = args.snapshot_after.unwrap_or_default();
    let config = machine_config(args)?;
    // From here a SIGINT, SIGTERM or SIGHUP stops the VM as a power-off does (a signal
    // during the build stops it as soon as it starts). Rust's runtime already ignores
    // SIGPIPE: a closed --serial pipe is a write error that COM1 counts, not a death.
    machine::install_signal_handlers().context("cannot install the signal handlers")?;
    let control = machine::VmControl::new();
    let report = match (&restore, &snapshot) {
        (Some(paths), _) => {
            control.filter_builder_thread();
            machine::restore_controlled(&config, paths, true, &control)?
        }
        (None, Some(paths)) => {
            let (report, created) = machine::snapshot::run_and_snapshot(&config, after, paths)?;
            eprintln!(
                "hushvm: snapshot in {}: {} bytes of state, {} of {} bytes of RAM written",
                paths
                    .state
                    .parent()
                    .unwrap_or(paths.state.as_path())
                    .display(),
                created.state_bytes,
                created.memory.written,
                created.memory.size
            );
            report
        }
        (None, None) => {
            control.filter_builder_thread();
            machine::run_controlled(&config, &control)?
        }
    };
    say_why_it_stopped(&report);
    write_profile(&report, table, json.as_deref())?;
    Ok(ExitCode::from((report.stop.exit_status() & 0xff) as u8))
}

fn bench(args: BenchArgs) -> Result<ExitCode> {
    if args.workload == "pause" {
        return bench_pause(&args);
    }
    if args.workload == "api" {
        return bench_api(&args);
    }
    if args.workload == "vsock" {
        return bench_vsock(&args);
    }
    if args.workload == "snapshot" {
        let restores = args.iterations.unwrap_or(bench::snapshot::DEFAULT_RESTORES);
        let report = bench::snapshot::run(&bench::snapshot::DEFAULT_SIZES, restores, args.repeat)?;
        return print_out(match args.json {
            true => format!("{}\n", serde_json::to_string(&report)?),
            false => report.render(),
        })
        .map(|_| ExitCode::SUCCESS);
    }
    let workload = bench::workload(&args.workload)
        .ok_or_else(|| bench::BenchError::UnknownWorkload(args.workload.clone()))?;
    let options = BenchOptions {
        iterations: args.iterations,
        repeat: args.repeat,
        variant: args.variant,
        time_exits: !args.no_exit_timing,
        transport: args.transport,
        seccomp: args.seccomp,
        tap: args.tap,
    };
    let report = bench::run(workload, &options)?;
    if args.json {
        print_out(format_args!("{}\n", serde_json::to_string(&report)?))?;
    } else {
        print_out(report.render())?;
    }
    if !report.all_passed() {
        bail!("a guest reported a failure (exit status other than 1)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `hushvm bench vsock`: `--iterations` 4 KiB messages each way per VM.
fn bench_vsock(args: &BenchArgs) -> Result<ExitCode> {
    let messages = args.iterations.unwrap_or(bench::vsock::DEFAULT_MESSAGES);
    let report = bench::vsock::run(messages, args.repeat, args.transport, args.seccomp)?;
    if args.json {
        print_out(format_args!("{}\n", serde_json::to_string(&report)?))?;
    } else {
        print_out(report.render())?;
    }
    if !report.all_passed() {
        bail!("a vsock run lost bytes or its guest reported an error");
    }
    Ok(ExitCode::SUCCESS)
}

/// `hushvm bench pause`: `--iterations` pauses per VM, `--repeat` VMs per vCPU count.
fn bench_pause(args: &BenchArgs) -> Result<ExitCode> {
    let pauses = args.iterations.unwrap_or(bench::pause::DEFAULT_PAUSES);
    let report = bench::pause::run(pauses, args.repeat, args.seccomp)?;
    if args.json {
        print_out(format_args!("{}\n", serde_json::to_string(&report)?))?;
    } else {
        print_out(report.render())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `hushvm bench api`: `--iterations` API calls of each kind per process, `--repeat`
/// processes.
fn bench_api(args: &BenchArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find hushvm's own binary")?;
    let requests = args.iterations.unwrap_or(200);
    let report = bench::api::run(&exe, args.repeat, requests)?;
    if args.json {
        print_out(format_args!("{}\n", serde_json::to_string(&report)?))?;
    } else {
        print_out(report.render())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn replay(file: &Path, json: bool) -> Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let report = hushvm::replay::replay(&bytes)?;
    if json {
        print_out(format_args!("{}\n", serde_json::to_string(&report)?))?;
    } else {
        print_out(format_args!(
            "replayed {} exits: {} divergences; {:.0} exits/s, {:.1} ns/exit\n",
            report.exits, report.divergences, report.exits_per_second, report.ns_per_exit
        ))?;
    }
    if let Some(divergence) = &report.first_divergence {
        eprintln!(
            "hushvm: replay diverged at exit {} ({}): expected {:02x?}, got {:02x?}",
            divergence.exit, divergence.access, divergence.expected, divergence.got
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn advise(files: &[PathBuf], json: bool) -> Result<ExitCode> {
    let traces = files
        .iter()
        .map(|file| std::fs::read(file).with_context(|| format!("cannot read {}", file.display())))
        .collect::<Result<Vec<_>>>()?;
    let traces: Vec<&[u8]> = traces.iter().map(Vec::as_slice).collect();
    let advice = hushvm::advise::advise_all(&traces)?;
    if json {
        print_out(format_args!("{}\n", serde_json::to_string(&advice)?))?;
    } else {
        print_out(advice.render())?;
    }
    if advice.divergences > 0 {
        eprintln!(
            "hushvm: the replay diverged {} times: these verdicts are suspect",
            advice.divergences
        );
    }
    for row in advice.contradictions() {
        eprintln!(
            "hushvm: {} is declared posted, but its writes reached beyond the device ({})",
            row.register,
            row.effects.summary()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn write_guests(out: &Path) -> Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, image) in hushvm::guests::GUESTS {
        let path = out.join(format!("{name}.elf"));
        std::fs::write(&path, image).with_context(|| format!("cannot write {}", path.display()))?;
        print_out(format_args!("{}\n", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to standard output. A reader that went away (`hushvm guests | head -1`)
/// is no error: `println!` would panic there (SIGPIPE is ignored, so the write fails with
/// EPIPE); any other failure is one error line.
fn print_out(text: impl std::fmt::Display) -> Result<()> {
    use std::io::Write;
    match write!(std::io::stdout().lock(), "{text}") {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

/// `--mem` with its cause: clap shows a value parser's error by its own message only.
fn parse_memory(text: &str) -> Result<hushvm::layout::MemoryLayout, String> {
    config::parse_memory(text).map_err(|error| hushvm::errors::chain(&error))
}

/// clap's error, as one line: its message and any argument it lists, without the usage
/// block and the pointer to --help.
fn one_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .map(|line| line.strip_prefix("error: ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> ExitCode {
    if let Some(args) = firecracker::args_if_firecracker() {
        return match firecracker::FirecrackerArgs::try_parse_from(args) {
            Ok(args) => firecracker::run(args).unwrap_or_else(|error| {
                eprintln!("hushvm: error: {}", error_line(&error));
                ExitCode::FAILURE
            }),
            Err(error) if !error.use_stderr() => error.exit(),
            Err(error) => {
                eprintln!("hushvm: error: {}", one_line(&error));
                ExitCode::FAILURE
            }
        };
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            eprintln!("hushvm: error: {}", one_line(&error));
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Bench(args) => bench(args),
        Command::Replay { file, json } => replay(&file, json),
        Command::Advise { files, json } => advise(&files, json),
        Command::Guests { out } => write_guests(&out),
    };
    result.unwrap_or_else(|error| {
        eprintln!("hushvm: error: {}", error_line(&error));
        ExitCode::FAILURE
    })
}

/// The error and its causes on one line, joined by ": ". Each of hushvm's errors keeps
/// its cause once, as its source and not in its own message, so nothing repeats.
fn error_line(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
