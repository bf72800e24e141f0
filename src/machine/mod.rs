//! A PC-like machine: RAM, the in-kernel irqchip, the legacy devices at their PC
//! addresses, a Multiboot kernel, one thread per vCPU, the event loop on the calling
//! thread, and what it all reports at the end.

mod devices;
mod replay;
mod vcpus;
mod virtio;

use crate::sync::LockExt;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::bus::{AddressSpace, BusError, IoBuses};
use crate::coalesced::PostedWrites;
use crate::config::{DiskConfig, Doorbell, SerialMode};
use crate::devices::rtc::{Clock, Rtc, RtcState, SystemClock};
use crate::event_loop::{DeviceAccess, DoorbellEvent, RtcTimer, SerialInput, StopWake, Subscriber};
use crate::irq::InterruptLine;
use crate::kvm::{Hypervisor, KvmError, Vcpu, VcpuOptions, Vm};
use crate::loader::{self, LoaderError, Module};
use crate::profile::ExitProfile;
use crate::trace::{MachineClock, MachineDescription, Recorder};
use crate::vcpu::{self, VmStop};

pub use devices::{COM1_GSI, RTC_GSI};
pub use replay::{replay_devices, ReplayMachine};
pub use virtio::{open_disk, VIRTIO_BASE};

/// The event loop's polling window after each event (QEMU's IOThreads poll up to 32 us by
/// default; doorbell round trips on the development host need a little more).
pub const DEFAULT_EVENT_POLL: Duration = Duration::from_micros(100);

/// A kernel image and the name the guest's command line gives it.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The file name, as QEMU puts it at the start of the command line.
    pub name: String,
    /// The Multiboot ELF32 image.
    pub image: Vec<u8>,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Guest RAM in bytes, already validated.
    pub memory: u64,
    /// vCPUs; vCPU 0 boots, the others wait for INIT/SIPI.
    pub cpus: u8,
    /// The kernel.
    pub kernel: Kernel,
    /// The user's command line (after the kernel's name).
    pub cmdline: String,
    /// Multiboot modules.
    pub modules: Vec<Module>,
    /// Where COM1 goes (and, for stdio, where its input comes from).
    pub serial: SerialMode,
    /// Post writes to declared registers in the coalesced ring.
    pub coalesce: bool,
    /// Advertise KVM_FEATURE_PV_EOI in CPUID leaf 0x40000001.
    pub pv_eoi: bool,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Time every exit (the profiler's clock); counting is always on.
    pub time_exits: bool,
    /// A virtio-blk disk.
    pub disk: Option<DiskConfig>,
    /// A virtio-rng device.
    pub rng: bool,
    /// A virtio-console device, and where its output goes (`Stdio` writes to stdout).
    pub virtio_console: Option<SerialMode>,
    /// How virtqueue doorbells reach the devices.
    pub doorbell: Doorbell,
    /// How long the event loop keeps polling after an event before it sleeps.
    pub event_poll: Duration,
    /// Record every exit to this trace file.
    pub record: Option<PathBuf>,
}

impl MachineConfig {
    /// A configuration with the defaults of `hushvm run`.
    pub fn new(kernel: Kernel) -> Self {
        Self {
            memory: 64 << 20,
            cpus: 1,
            kernel,
            cmdline: String::new(),
            modules: Vec::new(),
            serial: SerialMode::Stdio,
            coalesce: true,
            pv_eoi: true,
            timeout: None,
            time_exits: true,
            disk: None,
            rng: false,
            virtio_console: None,
            doorbell: Doorbell::default(),
            event_poll: DEFAULT_EVENT_POLL,
            record: None,
        }
    }
}

/// Setting the machine up failed.
#[derive(Debug, Error)]
pub enum MachineError {
    #[error("cannot allocate {bytes:#x} bytes of guest RAM: {source}")]
    Memory {
        bytes: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot load the kernel: {0}")]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("cannot place a device: {0}")]
    Bus(#[from] BusError),
    #[error("--cpus {asked}: this KVM allows 1 to {max}")]
    TooManyCpus { asked: u8, max: usize },
    #[error("cannot open the serial output file {}: {source}", path.display())]
    SerialFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--disk {}: {reason}", path.display())]
    Disk { path: PathBuf, reason: String },
    #[error("cannot write the trace {}: {source}", path.display())]
    Trace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open /dev/urandom for virtio-rng: {0}")]
    Entropy(#[source] io::Error),
    #[error("cannot set up the event loop: {0}")]
    EventLoop(String),
    #[error("vCPU thread: {0}")]
    Thread(String),
}

impl From<io::Error> for MachineError {
    fn from(error: io::Error) -> Self {
        MachineError::EventLoop(error.to_string())
    }
}

/// What the posted-write machinery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coalescing {
    /// `--no-coalesce`.
    Off,
    /// Zones registered: `(port or address, size)` each.
    On(Vec<(u64, u32)>),
    /// Asked for, but the kernel cannot.
    Unsupported,
}

/// Interrupts the devices raised (edges sent through irqfd).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interrupts {
    /// COM1, IRQ 4.
    pub com1: u64,
    /// RTC, IRQ 8.
    pub rtc: u64,
}

/// How a run ended and what it measured.
#[derive(Debug)]
pub struct RunReport {
    /// Why the VM stopped.
    pub stop: VmStop,
    /// The registers of the vCPU that stopped it, for a fault.
    pub registers: Option<String>,
    /// Every vCPU's exit profile, merged.
    pub profile: ExitProfile,
    /// KVM's own counters for the run, summed over vCPUs.
    pub kvm_stats: BTreeMap<String, u64>,
    /// From the start of setup to the stop.
    pub wall: Duration,
    /// COM1 output, with [`SerialMode::Capture`].
    pub serial: Vec<u8>,
    /// The RTC at the end.
    pub rtc: RtcState,
    /// Posted writes.
    pub coalescing: Coalescing,
    /// Interrupts raised by the devices.
    pub interrupts: Interrupts,
    /// Doorbells that made a virtio device use buffers, over all devices.
    pub virtio_notifications: u64,
    /// Interrupts the virtio devices raised.
    pub virtio_interrupts: u64,
    /// The virtio console's output, with [`SerialMode::Capture`].
    pub virtio_console: Vec<u8>,
    /// vCPUs the VM had.
    pub cpus: u8,
}

/// A byte buffer shared between the UART and the caller.
#[derive(Debug, Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.locked().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn serial_output(
    mode: &SerialMode,
    capture: &SharedBuffer,
) -> Result<Box<dyn Write + Send>, MachineError> {
    Ok(match mode {
        SerialMode::Stdio => Box::new(io::stdout()),
        SerialMode::None => Box::new(io::sink()),
        SerialMode::File(path) => {
            Box::new(
                File::create(path).map_err(|source| MachineError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        SerialMode::Capture => Box::new(capture.clone()),
    })
}

/// Registers every declared posted register with KVM, or says why not.
fn enable_posted_writes(
    vm: &Vm,
    vcpu: &Vcpu,
    buses: &IoBuses,
) -> Result<(PostedWrites, Coalescing), KvmError> {
    let zones = buses.posted_zones();
    if zones
        .iter()
        .any(|zone| !vm.supports_posted_writes(zone.space))
    {
        return Ok((PostedWrites::disabled(), Coalescing::Unsupported));
    }
    let Some(ring) = vcpu.map_posted_write_ring()? else {
        return Ok((PostedWrites::disabled(), Coalescing::Unsupported));
    };
    for zone in &zones {
        vm.register_posted_zone(zone)?;
    }
    let registered = zones
        .iter()
        .filter(|zone| zone.space == AddressSpace::Pio)
        .map(|zone| (zone.addr, zone.size))
        .collect();
    Ok((
        PostedWrites::new(Arc::new(ring)),
        Coalescing::On(registered),
    ))
}

fn create_vcpus(
    hypervisor: &Hypervisor,
    vm: &Vm,
    config: &MachineConfig,
) -> Result<Vec<Vcpu>, MachineError> {
    let max = hypervisor.max_vcpus().min(usize::from(u8::MAX));
    if config.cpus == 0 || usize::from(config.cpus) > max {
        return Err(MachineError::TooManyCpus {
            asked: config.cpus,
            max,
        });
    }
    let options = VcpuOptions {
        pv_eoi: config.pv_eoi,
    };
    Ok((0..config.cpus)
        .map(|id| vm.create_vcpu(id, &options))
        .collect::<Result<_, _>>()?)
}

/// Trace input sinks: COM1 and the virtio console.
const INPUT_COM1: u8 = 0;
const INPUT_VIRTIO_CONSOLE: u8 = 1;

/// Starts the trace `--record` asks for.
fn start_trace(
    config: &MachineConfig,
    clock_start: Duration,
) -> Result<Option<Arc<Recorder>>, MachineError> {
    let Some(path) = &config.record else {
        return Ok(None);
    };
    let disk_bytes = config
        .disk
        .as_ref()
        .and_then(|disk| std::fs::metadata(&disk.path).ok())
        .map_or(0, |metadata| metadata.len());
    let description = MachineDescription {
        memory: config.memory,
        cpus: config.cpus,
        rng: config.rng,
        console: config.virtio_console.is_some(),
        disk_bytes,
        clock_start: clock_start.as_nanos() as u64,
    };
    Recorder::create(path, &description)
        .map(Some)
        .map_err(|source| MachineError::Trace {
            path: path.clone(),
            source,
        })
}

/// Boots the machine and runs it until it stops.
pub fn run(config: &MachineConfig) -> Result<RunReport, MachineError> {
    // Calibrate the profiler's clock before the run's wall time starts.
    let _ = crate::profile::ExitClock::get();
    let started = Instant::now();
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), config.memory as usize)])
        .map_err(|source| MachineError::Memory {
        bytes: config.memory,
        source,
    })?;
    let mut cmdline = loader::kernel_cmdline(&config.kernel.name, &config.cmdline);
    cmdline.push_str(&virtio::cmdline_additions(
        config.disk.is_some(),
        config.rng,
        config.virtio_console.is_some(),
    ));
    let boot = loader::load(&memory, &config.kernel.image, &cmdline, &config.modules)?;

    let hypervisor = Hypervisor::open()?;
    let vm = Vm::new(&hypervisor, &memory)?;
    let com1_line: Arc<dyn InterruptLine> = Arc::new(vm.irq_line(COM1_GSI)?);
    let rtc_line: Arc<dyn InterruptLine> = Arc::new(vm.irq_line(RTC_GSI)?);
    let capture = SharedBuffer::default();
    let lines = devices::Lines {
        com1: com1_line.clone(),
        rtc: rtc_line.clone(),
    };
    let clock_start = SystemClock.now();
    let recorder = start_trace(config, clock_start)?;
    let rtc = Rtc::new(MachineClock::new(clock_start, recorder.clone()));
    let serial_out = serial_output(&config.serial, &capture)?;
    let mut devices = devices::build(config.memory, config.cpus, rtc, serial_out, lines)?;
    let console_capture = SharedBuffer::default();
    let virtio_config = virtio::VirtioConfig {
        disk: config.disk.as_ref(),
        rng: config.rng,
        console: config
            .virtio_console
            .as_ref()
            .map(|mode| serial_output(mode, &console_capture))
            .transpose()?,
        doorbell: config.doorbell,
    };
    let virtio_slots = virtio::build(virtio_config, &memory, &vm, &mut devices.buses)?;
    let vcpus = create_vcpus(&hypervisor, &vm, config)?;
    vcpus[0].enter_protected_mode(
        boot.entry,
        loader::multiboot::BOOTLOADER_MAGIC,
        boot.info_addr,
    )?;
    let (posted, coalescing) = if config.coalesce {
        enable_posted_writes(&vm, &vcpus[0], &devices.buses)?
    } else {
        (PostedWrites::disabled(), Coalescing::Off)
    };
    if coalescing == Coalescing::Unsupported {
        eprintln!("hushvm: warning: KVM cannot post port writes (no KVM_CAP_COALESCED_PIO); running without coalescing");
    }

    let access = DeviceAccess {
        buses: Arc::new(devices.buses),
        posted: Arc::new(posted),
        recorder: recorder.clone(),
    };
    let mut events =
        EventManager::<Subscriber>::new().map_err(|e| MachineError::EventLoop(format!("{e:?}")))?;
    events.add_subscriber(Arc::new(Mutex::new(RtcTimer::new(
        devices.rtc.clone(),
        access.clone(),
    )?)));
    // Standard input goes to virtio-console when it is on stdio, else to COM1 on stdio.
    let console_input = virtio_slots.iter().find_map(|slot| slot.input.clone());
    match console_input {
        Some(console) if config.virtio_console == Some(SerialMode::Stdio) => {
            events.add_subscriber(Arc::new(Mutex::new(SerialInput::from_stdin(
                console,
                access.clone(),
                INPUT_VIRTIO_CONSOLE,
            )?)));
        }
        _ if config.serial == SerialMode::Stdio => {
            events.add_subscriber(Arc::new(Mutex::new(SerialInput::from_stdin(
                devices.com1.clone(),
                access.clone(),
                INPUT_COM1,
            )?)));
        }
        _ => {}
    }
    let mut virtio_counters = Vec::new();
    for slot in virtio_slots {
        for (event, queue) in slot.doorbells {
            let doorbell = DoorbellEvent::new(
                event,
                queue,
                slot.index,
                slot.notify.clone(),
                access.clone(),
            );
            events.add_subscriber(Arc::new(Mutex::new(doorbell)));
        }
        virtio_counters.push((slot.notifications, slot.interrupt));
    }
    let (wake_subscriber, wake) = StopWake::new()?;
    events.add_subscriber(Arc::new(Mutex::new(wake_subscriber)));
    vcpu::install_kick_handler().map_err(MachineError::Thread)?;

    let shared = vcpus::Shared {
        buses: access.buses.clone(),
        posted: access.posted.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        wake,
        first_stop: Arc::default(),
        time_exits: config.time_exits,
        recorder: recorder.clone(),
    };
    let threads = vcpus
        .into_iter()
        .map(|vcpu| vcpus::spawn(vcpu, shared.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = config.timeout.map(|limit| Instant::now() + limit);
    let (outcomes, timed_out) = vcpus::run_until_stopped(
        &mut events,
        threads,
        &shared.stop,
        deadline,
        config.event_poll,
    )?;
    let wall = started.elapsed();
    if let (Some(recorder), Some(path)) = (&recorder, &config.record) {
        recorder.finish().map_err(|source| MachineError::Trace {
            path: path.clone(),
            source,
        })?;
    }

    let first = shared.first_stop.locked().take();
    let (stop, registers) = match first {
        Some(first) => first,
        None if timed_out => (VmStop::Timeout, None),
        None => (VmStop::Requested, None),
    };
    let mut profile = ExitProfile::default();
    let mut kvm_stats = BTreeMap::new();
    for outcome in &outcomes {
        profile.merge(&outcome.report.profile);
        for (name, value) in &outcome.stats {
            *kvm_stats.entry(name.clone()).or_insert(0) += value;
        }
    }
    profile.posted_writes = access.posted.applied();
    let rtc = devices.rtc.locked().state();
    let serial = std::mem::take(&mut *capture.0.locked());
    let virtio_console = std::mem::take(&mut *console_capture.0.locked());
    Ok(RunReport {
        stop,
        registers,
        profile,
        kvm_stats,
        wall,
        serial,
        rtc,
        coalescing,
        interrupts: Interrupts {
            com1: com1_line.pulses(),
            rtc: rtc_line.pulses(),
        },
        virtio_notifications: virtio_counters
            .iter()
            .map(|(notifications, _)| notifications())
            .sum(),
        virtio_interrupts: virtio_counters.iter().map(|(_, line)| line.pulses()).sum(),
        virtio_console,
        cpus: config.cpus,
    })
}
