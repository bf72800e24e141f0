//! A PC-like machine, described by [`MachineConfig`] and built in small steps:
//! layout -> guest memory -> VM -> platform devices -> ACPI tables -> boot loader ->
//! vCPUs -> run.
//! Replay builds its devices through the same [`device_table::build`], on an [`Unplugged`]
//! platform.

mod backends;
mod control;
mod device_table;
mod inventory;
mod machine_config;
mod pci_bus;
mod platform;
mod posted_setup;
mod run_report;
mod signals;
pub mod snapshot;
mod threads;
mod virtio_placement;
mod vsock_host;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::access::DeviceAccess;
use crate::acpi;
use crate::bus::BusError;
use crate::config::{SerialMode, VirtioTransport};
use crate::devices::acpi_pm::MonotonicClock;
use crate::devices::rtc::{Clock, SystemClock};
use crate::event_loop::{
    DoorbellEvent, DrainTick, DrainTimerFd, HeldOutput, HostInput, HostSocketEvents, IntxResample,
    NetTapEvents, OutputRoom, QueuePoller, RtcTimer, StopWake, Subscriber,
};
use crate::kvm::{Hypervisor, KvmError, Vcpu, VcpuOptions, Vm};
use crate::layout::{self, LayoutError, MemoryLayout};
use crate::loader::{self, BootRequest, EntryState, LoaderError};
use crate::profile::ExitProfile;
use crate::run_loop;
use crate::seccomp::{Filters, SeccompError};
use crate::services::InputTarget;
use crate::sync::LockExt;
use crate::trace::{
    MachineClock, MachineDescription, RecordedClock, Recorder, TracedKind, TracedVirtio,
};

pub use backends::{open_disk, Backends, CountingSink, DiskProblem};
pub use control::{ControlError, Paused, VmControl};
pub use device_table::{build as build_devices, Clocks, DeviceSpec, Devices};
pub use inventory::{
    plan_virtio, BusPlacement, DeviceCounters, DeviceEntry, DeviceKind, Interrupt, Inventory,
    VirtioKind, VirtioRequest, VirtioSpec, FIXED_IDS,
};
pub use machine_config::{
    BootConfig, Cures, DeviceConfig, Kernel, MachineConfig, RunOptions, VcpuConfig,
    DEFAULT_EVENT_POLL, DEFAULT_POSTED_DRAIN,
};
pub use platform::{Platform, Unplugged};
pub use run_report::{Coalescing, RunReport};
pub use signals::{install as install_signal_handlers, signal_name, STOP_SIGNALS};
pub use snapshot::{create as create_snapshot, Created, MachineSnapshotError};
pub use vsock_host::VsockProblem;

use crate::snapshot::SnapshotPaths;
use snapshot::{SavedMachine, SnapshotSource, SnapshotState};

/// Setting the machine up failed.
#[derive(Debug, Error)]
pub enum MachineError {
    #[error("cannot allocate {bytes:#x} bytes of guest RAM")]
    Memory {
        bytes: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("--mem")]
    Layout(#[from] LayoutError),
    #[error("cannot build the ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    #[error("cannot write guest memory at {at:#x}")]
    GuestMemory {
        at: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("cannot load the kernel")]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("cannot place a device")]
    Bus(#[from] BusError),
    #[error("cannot build the PCI bus")]
    Pci(#[from] crate::devices::pci::PciError),
    #[error("--cpu")]
    Cpuid(#[from] crate::cpuid::CpuidError),
    #[error("--cpus {asked}: this KVM allows 1 to {max}")]
    TooManyCpus { asked: u8, max: usize },
    #[error("cannot open the serial output file {}", path.display())]
    SerialFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--disk {}", path.display())]
    Disk {
        path: PathBuf,
        #[source]
        problem: DiskProblem,
    },
    #[error("cannot write the trace {}", path.display())]
    Trace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open /dev/urandom for virtio-rng")]
    Entropy(#[source] io::Error),
    #[error("cannot set up the event loop")]
    EventLoop(#[source] io::Error),
    /// Standard output could not be made a non-blocking destination.
    #[error("cannot set up standard output as a device's destination")]
    Output(#[source] io::Error),
    #[error("the event loop failed")]
    EventManager(#[source] event_manager::Error),
    #[error("cannot install the vCPU kick signal handler")]
    KickSignal(#[source] vmm_sys_util::errno::Error),
    #[error("cannot start a vCPU thread")]
    SpawnThread(#[source] io::Error),
    #[error("a vCPU or event-loop thread panicked")]
    ThreadPanicked,
    #[error("seccomp")]
    Seccomp(#[from] SeccompError),
    #[error("cannot plan the devices")]
    Devices(#[from] crate::config::ConfigError),
    #[error("device {0} has no backend")]
    MissingBackend(String),
    #[error(transparent)]
    Snapshot(#[from] MachineSnapshotError),
    #[error(
        "--record: a trace describes at most one disk, with every virtio device on one transport"
    )]
    TraceCannotDescribe,
    #[error(
        "--record: a trace cannot describe a vsock device (host programs' bytes are not recorded)"
    )]
    TraceCannotDescribeVsock,
    #[error("--vsock uds={}: {problem}", path.display())]
    VsockSocket {
        path: PathBuf,
        problem: VsockProblem,
    },
    #[error("cannot set up the vsock device")]
    Vsock(#[source] crate::devices::virtio::vsock::VsockError),
    #[error("--net tap={tap}: queues={asked}: this device has one queue pair (queues=1)")]
    NetQueuePairs { tap: String, asked: u16 },
    #[error("cannot open the tap")]
    Tap(#[from] crate::net::tap::TapError),
    #[error("--record does not cover virtio-net (--net) yet")]
    TraceCannotRecordNet,
}

/// The virtio devices `config` asks for, planned.
pub fn virtio_plan(config: &DeviceConfig) -> Result<Vec<VirtioSpec>, MachineError> {
    let default = config.transport;
    let request = VirtioRequest {
        disks: config
            .disks
            .iter()
            .map(|disk| (disk.id.clone(), disk.transport))
            .collect(),
        rng: config
            .rng
            .then_some(config.rng_transport.unwrap_or(default)),
        console: config
            .virtio_console
            .is_some()
            .then_some(config.console_transport.unwrap_or(default)),
        vsock: config
            .vsock
            .as_ref()
            .map(|vsock| (vsock.id(), vsock.transport.unwrap_or(default))),
        nets: config.net.len(),
        default,
    };
    Ok(plan_virtio(&request)?)
}

/// How a machine starts: booted from its kernel, or restored from a snapshot.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    Boot,
    /// Firecracker's `PUT /snapshot/load`: the machine built as `config` says, its state
    /// and RAM from `paths`; it runs at once if `resume`, else starts paused.
    Restore {
        paths: &'a SnapshotPaths,
        resume: bool,
    },
}

/// Guest RAM as the layout places it.
pub fn guest_memory(layout: &MemoryLayout) -> Result<GuestMemoryMmap, MachineError> {
    let ranges: Vec<(GuestAddress, usize)> = layout
        .ram_regions()
        .into_iter()
        .map(|(start, bytes)| (GuestAddress(start), bytes as usize))
        .collect();
    GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|source| MachineError::Memory {
        bytes: layout.ram_bytes(),
        source,
    })
}

/// Checks `--cpus` against what this KVM allows, before anything is built for them.
fn check_vcpu_count(hypervisor: &Hypervisor, config: &MachineConfig) -> Result<(), MachineError> {
    let count = config.vcpus.count;
    let max = hypervisor.max_vcpus().min(usize::from(u8::MAX));
    if count == 0 || usize::from(count) > max {
        return Err(MachineError::TooManyCpus { asked: count, max });
    }
    Ok(())
}

/// Creates the vCPUs; vCPU 0 enters the kernel at `entry` (none for a restore).
fn create_vcpus(
    vm: &Vm,
    config: &MachineConfig,
    entry: Option<&EntryState>,
) -> Result<Vec<Vcpu>, MachineError> {
    let count = config.vcpus.count;
    let options = VcpuOptions {
        pv_eoi: config.cures.pv_eoi,
        model: config.vcpus.model.clone(),
    };
    let cpuid = vm.cpuid(&options)?;
    let vcpus = (0..count)
        .map(|id| vm.create_vcpu(id, count, &cpuid))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(entry) = entry {
        vcpus[0].set_entry_state(entry)?;
    }
    Ok(vcpus)
}

/// Starts the trace `--record` asks for, describing the devices of `plan`.
fn start_trace(
    config: &MachineConfig,
    plan: &[VirtioSpec],
    clock_start: Duration,
) -> Result<Option<Arc<Recorder>>, MachineError> {
    let Some(path) = &config.run.record else {
        return Ok(None);
    };
    if plan.iter().any(|spec| spec.kind == VirtioKind::Vsock) {
        // A trace cannot carry what host programs send through the sockets.
        return Err(MachineError::TraceCannotDescribeVsock);
    }
    let devices = &config.devices;
    if !devices.net.is_empty() {
        // Frames from a tap are host input a trace does not record yet.
        return Err(MachineError::TraceCannotRecordNet);
    }
    let disk_bytes: Vec<u64> = devices
        .disks
        .iter()
        .map(|disk| std::fs::metadata(&disk.path).map_or(0, |metadata| metadata.len()))
        .collect();
    let default_pci = devices.transport == VirtioTransport::Pci;
    // The version-1 flags describe one disk and one transport for every device; a
    // machine beyond them is described by the header's device list too.
    let flags_suffice = disk_bytes.len() <= 1
        && plan
            .iter()
            .all(|spec| (spec.transport == VirtioTransport::Pci) == default_pci);
    let virtio = match flags_suffice {
        true => Vec::new(),
        false => plan
            .iter()
            .map(|spec| {
                Ok(TracedVirtio {
                    id: spec.id.clone(),
                    kind: match spec.kind {
                        VirtioKind::Block { .. } => TracedKind::Block,
                        VirtioKind::Rng => TracedKind::Rng,
                        VirtioKind::Console | VirtioKind::Vsock => TracedKind::Console,
                        VirtioKind::Net { .. } => return Err(MachineError::TraceCannotRecordNet),
                    },
                    pci: spec.transport == VirtioTransport::Pci,
                    disk_bytes: match spec.kind {
                        VirtioKind::Block { disk } => disk_bytes.get(disk).copied().unwrap_or(0),
                        _ => 0,
                    },
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let description = MachineDescription {
        memory: config.memory.ram_bytes(),
        cpus: config.vcpus.count,
        rng: devices.rng,
        console: devices.virtio_console.is_some(),
        pci: default_pci,
        event_idx: config.cures.event_idx,
        disk_bytes: disk_bytes.first().copied().unwrap_or(0),
        clock_start: clock_start.as_nanos() as u64,
        virtio,
    };
    Recorder::create(path, &description)
        .map(Some)
        .map_err(|source| MachineError::Trace {
            path: path.clone(),
            source,
        })
}

/// Writes the ACPI tables that describe the machine; returns the RSDP's address.
fn write_acpi_tables<C: Clock>(
    config: &MachineConfig,
    memory: &GuestMemoryMmap,
    devices: &Devices<C>,
) -> Result<u64, MachineError> {
    let windows = devices
        .virtio
        .iter()
        .filter_map(|wiring| wiring.mmio_window)
        .map(|window| acpi::VirtioMmioWindow {
            base: layout::virtio_mmio_slot(window),
            size: layout::VIRTIO_MMIO_SLOT_SIZE,
            gsi: layout::virtio_mmio_gsi(window),
        })
        .collect();
    let tables = acpi::build(&acpi::AcpiConfig {
        cpus: config.vcpus.count,
        virtio_mmio: windows,
        pci: Some(pci_description(devices)),
    })?;
    memory
        .write_slice(&tables.bytes, GuestAddress(layout::ACPI_TABLES))
        .map_err(|source| MachineError::GuestMemory {
            at: layout::ACPI_TABLES,
            source,
        })?;
    Ok(tables.rsdp_addr)
}

/// The PCI host bridge the tables describe: bus 0 only, the layout's windows, QEMU's
/// I/O window, and the INTx line of each virtio-pci device.
fn pci_description<C: Clock>(devices: &Devices<C>) -> acpi::AcpiPci {
    let on_pci = devices
        .virtio
        .iter()
        .filter(|wiring| wiring.mmio_window.is_none())
        .count();
    acpi::AcpiPci {
        ecam_base: layout::PCI_ECAM_START,
        bus_end: 0,
        mmio32: layout::PCI_MMIO32_START..layout::PCI_MMIO32_END,
        io: Some(layout::ports::PCI_IO_START..=u16::MAX),
        intx: pci_bus::intx_routes(on_pci),
    }
}

/// Loads the kernel, with the devices' additions to its command line.
fn load_kernel<C: Clock>(
    config: &MachineConfig,
    memory: &GuestMemoryMmap,
    devices: &Devices<C>,
    rsdp: u64,
) -> Result<EntryState, MachineError> {
    let boot = &config.boot;
    let mut cmdline = boot.cmdline.clone();
    cmdline.push_str(&virtio_placement::cmdline_additions(&devices.virtio));
    let request = BootRequest {
        kernel_name: &boot.kernel.name,
        image: &boot.kernel.image,
        cmdline: &cmdline,
        modules: &boot.modules,
        initrd: boot.initrd.as_deref(),
        rsdp: Some(rsdp),
    };
    Ok(loader::load(memory, &config.memory, &request)?)
}

/// The event loop's subscribers: the RTC timer, host input, the doorbells, the stop
/// wake-up, the stop signals; and the queues it polls.
fn event_loop<C: Clock + 'static>(
    config: &MachineConfig,
    devices: &mut Devices<C>,
    access: &DeviceAccess,
    (wake, state): (StopWake, &Arc<threads::StopState>),
    (drain_timer, held): (Option<Arc<DrainTimerFd>>, &[HeldOutput]),
) -> Result<(EventManager<Subscriber>, QueuePoller), MachineError> {
    let mut events = EventManager::<Subscriber>::new().map_err(MachineError::EventManager)?;
    let subscribe = |events: &mut EventManager<Subscriber>, subscriber: Subscriber| {
        events.add_subscriber(subscriber);
    };
    let timer = RtcTimer::new(devices.services.rtc.clone(), access.clone())
        .map_err(MachineError::EventLoop)?;
    subscribe(&mut events, Arc::new(Mutex::new(timer)));
    // Standard input goes to virtio-console when it is on stdio, else to COM1 on stdio.
    let target = if config.devices.virtio_console == Some(SerialMode::Stdio) {
        Some(InputTarget::VirtioConsole)
    } else {
        (config.devices.serial == SerialMode::Stdio).then_some(InputTarget::Com1)
    };
    if let Some(service) = target.and_then(|target| devices.services.input(target)) {
        let input = HostInput::from_stdin(service.clone(), access.clone())
            .map_err(MachineError::EventLoop)?;
        subscribe(&mut events, Arc::new(Mutex::new(input)));
    }
    let mut polled = Vec::new();
    for slot in &mut devices.virtio {
        if config.cures.queue_poll && !slot.doorbells.is_empty() {
            polled.push(slot.service.clone());
        }
        for (event, queue) in slot.doorbells.drain(..) {
            let doorbell = DoorbellEvent::new(event, queue, slot.service.clone(), access.clone());
            subscribe(&mut events, Arc::new(Mutex::new(doorbell)));
        }
        if let Some(sockets) = slot.host_sockets.take() {
            let service = slot.service.clone();
            let host = HostSocketEvents::new(sockets.fd, sockets.handle, service, access.clone());
            subscribe(&mut events, Arc::new(Mutex::new(host)));
        }
        if let Some((event, device)) = slot.resample.take() {
            let resample = IntxResample::new(event, device, access.clone());
            subscribe(&mut events, Arc::new(Mutex::new(resample)));
        }
        if let Some(net) = slot.net.take() {
            let tap = NetTapEvents::new(
                net.tap,
                net.status,
                slot.service.clone(),
                net.waker,
                access.clone(),
            )
            .map_err(MachineError::EventLoop)?;
            subscribe(&mut events, Arc::new(Mutex::new(tap)));
        }
    }
    if let Some(timer) = drain_timer {
        let drain = DrainTick::new(timer, access.clone());
        subscribe(&mut events, Arc::new(Mutex::new(drain)));
    }
    for output in held {
        let room = OutputRoom::new(output.clone(), access.clone());
        subscribe(&mut events, Arc::new(Mutex::new(room)));
    }
    subscribe(&mut events, Arc::new(Mutex::new(wake)));
    let signals = signals::SignalStop::new(state.clone()).map_err(MachineError::EventLoop)?;
    subscribe(&mut events, Arc::new(Mutex::new(signals)));
    Ok((events, QueuePoller::new(polled, access.clone())))
}

/// Boots the machine and runs it until it stops.
pub fn run(config: &MachineConfig) -> Result<RunReport, MachineError> {
    run_controlled(config, &VmControl::new())
}

/// [`run`], with `control` pausing, resuming and stopping the machine from another
/// thread.
pub fn run_controlled(
    config: &MachineConfig,
    control: &VmControl,
) -> Result<RunReport, MachineError> {
    start_controlled(config, Start::Boot, control)
}

/// Restores the snapshot at `paths` into a machine built as `config` says and runs it
/// until it stops (`resume` false: it starts paused, for `control` to resume). The
/// configuration must give the snapshot's memory size, vCPUs and devices.
pub fn restore_controlled(
    config: &MachineConfig,
    paths: &SnapshotPaths,
    resume: bool,
    control: &VmControl,
) -> Result<RunReport, MachineError> {
    start_controlled(config, Start::Restore { paths, resume }, control)
}

/// Boots or restores the machine, and runs it until it stops.
pub fn start_controlled(
    config: &MachineConfig,
    start: Start<'_>,
    control: &VmControl,
) -> Result<RunReport, MachineError> {
    if matches!(start, Start::Restore { .. }) && !control.is_fresh() {
        // Not through end(): the machine that has the control goes on as it was.
        return Err(MachineSnapshotError::from(ControlError::AlreadyStarted).into());
    }
    let result = build_and_run(config, control, start);
    // Also when the build failed: a pause waiting for the start gets its answer.
    let _ = control.shared().end();
    result
}

fn build_and_run(
    config: &MachineConfig,
    control: &VmControl,
    start: Start<'_>,
) -> Result<RunReport, MachineError> {
    // Calibrate the profiler's clock before the run's wall time starts.
    let _ = crate::profile::ExitClock::get();
    let started = Instant::now();
    // A restore reads and checks its state file before anything is built.
    let restoring: Option<(SnapshotState, bool)> = match start {
        Start::Boot => None,
        Start::Restore { paths, resume } => Some((snapshot::read_state(config, paths)?, resume)),
    };
    let memory = match start {
        Start::Boot => guest_memory(&config.memory)?,
        Start::Restore { paths, .. } => {
            crate::snapshot::memory::map(&config.memory.ram_regions(), &paths.memory)
                .map_err(MachineSnapshotError::from)?
        }
    };
    let hypervisor = Hypervisor::open()?;
    check_vcpu_count(&hypervisor, config)?;
    let vm = Vm::new(&hypervisor, &memory)?;
    let clock_start = SystemClock.now();
    let spec = DeviceSpec {
        memory: config.memory,
        cpus: config.vcpus.count,
        doorbell: config.cures.doorbell,
        event_idx: config.cures.event_idx,
        virtio: virtio_plan(&config.devices)?,
    };
    let recorder = start_trace(config, &spec.virtio, clock_start)?;
    let captures = backends::Captures::default();
    let mut backends = Backends::open(&config.devices, &captures)?;
    let disk_syncs = std::mem::take(&mut backends.disk_syncs);
    let waits = (backends.serial_wait.take(), backends.console_wait.take());
    let clocks = Clocks {
        rtc: MachineClock::new(clock_start, recorder.clone()),
        pm_timer: RecordedClock::new(MonotonicClock::default(), recorder.clone()),
    };
    let mut devices = device_table::build(&spec, &vm, backends, clocks, &memory)?;
    let held = backends::held_outputs(waits, &devices);
    // A restored guest's RAM already holds its tables and kernel.
    let entry = match restoring {
        None => {
            let rsdp = write_acpi_tables(config, &memory, &devices)?;
            Some(load_kernel(config, &memory, &devices, rsdp)?)
        }
        Some(_) => None,
    };
    let vcpus = create_vcpus(&vm, config, entry.as_ref())?;
    if let Some((state, _)) = &restoring {
        vm.restore_state(&state.vm)?;
        for (vcpu, saved) in vcpus.iter().zip(&state.vcpus) {
            vcpu.restore_state(saved)?;
        }
    }
    let buses = std::mem::take(&mut devices.buses);
    let posted = posted_setup::posted_writes(config, &vm, &vcpus[0], &buses)?;
    let (wake_subscriber, wake) = StopWake::new().map_err(MachineError::EventLoop)?;
    let state = Arc::new(threads::StopState::new(wake, control.shared()));
    let access = DeviceAccess {
        buses: Arc::new(buses),
        posted: Arc::new(posted.writes),
        recorder: recorder.clone(),
        stops: Some(state.clone()),
    };
    let wake = (wake_subscriber, &state);
    let timer = posted.drain_timer;
    let events = event_loop(config, &mut devices, &access, wake, (timer, &held))?;
    let source = snapshot_source(config, &vm, &memory, &devices);
    if let Some((state, resume)) = &restoring {
        // After the event loop's set-up: the RTC's restore re-arms its timer through it.
        snapshot::restore_devices(state, &source.machine, &devices.states)?;
        // A doorbell rung just before the pause may not have been served: its eventfd
        // stayed with the old process. Every queue with work is served once now.
        for wiring in &devices.virtio {
            wiring.service.ring(&access, None);
        }
        if !resume {
            control.start_paused();
            vcpus.iter().for_each(|vcpu| vcpu.run_flag().set());
        }
    }
    control.shared().set_snapshot_source(Arc::new(source));
    run_loop::install_kick_handler().map_err(MachineError::KickSignal)?;
    let shared = threads::Shared {
        access: access.clone(),
        state,
        control: control.shared(),
        time_exits: config.run.time_exits,
        fallback_ram: config.run.emulation_fallback.then(|| memory.clone()),
        filters: Arc::new(Filters::for_machine(
            config.run.seccomp,
            config.devices.vsock.is_some(),
        )?),
    };
    // The event-loop thread drains the ring once more after joining the vCPUs: what a
    // guest posted after its last exit still reaches its device, on every stop path.
    let run = threads::run(vcpus, &shared, events, config)?;
    finish_outputs(disk_syncs, &held, &access);
    let wall = started.elapsed();
    if let (Some(recorder), Some(path)) = (&recorder, &config.run.record) {
        recorder.finish().map_err(|source| MachineError::Trace {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report(
        config,
        run,
        &devices,
        &access,
        &captures,
        posted.coalescing,
        wall,
    ))
}

/// What a snapshot of this machine reads besides its vCPUs.
fn snapshot_source<C: Clock>(
    config: &MachineConfig,
    vm: &Vm,
    memory: &GuestMemoryMmap,
    devices: &Devices<C>,
) -> SnapshotSource {
    let entries = devices.inventory.entries();
    SnapshotSource {
        vm: vm.states(),
        memory: memory.clone(),
        devices: devices.states.clone(),
        machine: SavedMachine {
            ram_bytes: config.memory.ram_bytes(),
            cpus: config.vcpus.count,
            devices: entries.iter().map(|entry| entry.id.clone()).collect(),
            disk_bytes: snapshot::disk_sizes(config),
        },
    }
}

/// What every stop ends with, whatever stopped the VM (a power-off, a crash, a signal):
/// the disk's data reaches the image's storage (as a guest's flush would have made it)
/// and COM1's and the console's output leaves hushvm's buffers, the bytes the devices
/// hold for a slow destination included (for a grace period). A failure is only
/// reported: the run's outcome stands.
fn finish_outputs(
    disk_syncs: Vec<(PathBuf, std::fs::File)>,
    held: &[HeldOutput],
    access: &DeviceAccess,
) {
    backends::release_held(held, access);
    for (path, file) in disk_syncs {
        if let Err(error) = file.sync_data() {
            eprintln!(
                "hushvm: warning: --disk {}: cannot sync the image: {error}",
                path.display()
            );
        }
    }
    // The devices flush after each write; standard output's own buffer is flushed here.
    let _ = io::Write::flush(&mut io::stdout());
}

/// Gathers what the run measured.
fn report<C: Clock>(
    config: &MachineConfig,
    run: threads::RunOutcome,
    devices: &Devices<C>,
    access: &DeviceAccess,
    captures: &backends::Captures,
    coalescing: Coalescing,
    wall: Duration,
) -> RunReport {
    let mut profile = ExitProfile::default();
    let mut kvm_stats = BTreeMap::new();
    for outcome in &run.vcpus {
        profile.merge(&outcome.report.profile);
        for (name, value) in &outcome.stats {
            *kvm_stats.entry(name.clone()).or_insert(0) += value;
        }
    }
    profile.posted_writes = access.posted.applied();
    RunReport {
        stop: run.stop,
        registers: run.registers,
        profile,
        kvm_stats,
        wall,
        coalescing,
        cpus: config.vcpus.count,
        serial: captures.serial.take(),
        virtio_console: captures.console.take(),
        devices: run_report::DeviceReport::all(&devices.inventory),
        virtio_notifications: devices.inventory.total("notifications"),
        rtc: devices.rtc.locked().state(),
    }
}
