//! A PC-like machine: RAM, the in-kernel irqchip, the legacy devices at their PC
//! addresses, a Multiboot kernel, one vCPU thread, and what it all reports at the end.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::bus::{AddressSpace, BusError, IoBuses};
use crate::coalesced::PostedWrites;
use crate::config::SerialMode;
use crate::devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT};
use crate::devices::fw_cfg::{FwCfg, FW_CFG_PORT, FW_CFG_PORT_COUNT};
use crate::devices::i8042::{I8042, I8042_PORT, I8042_PORT_COUNT};
use crate::devices::post_code::{PostCode, POST_CODE_PORT};
use crate::devices::rtc::{Rtc, RtcState, SystemClock};
use crate::devices::serial::{SerialPort, SERIAL_PORT_COUNT};
use crate::kvm::{Hypervisor, KvmError, Vm};
use crate::loader::{self, LoaderError, Module};
use crate::vcpu::{self, VcpuReport};

const COM1: u16 = 0x3f8;
const RTC_PORT: u16 = 0x70;
const RTC_PORT_COUNT: u16 = 2;

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
    /// The kernel.
    pub kernel: Kernel,
    /// The user's command line (after the kernel's name).
    pub cmdline: String,
    /// Multiboot modules.
    pub modules: Vec<Module>,
    /// Where COM1 goes.
    pub serial: SerialMode,
    /// Post writes to declared registers in the coalesced ring.
    pub coalesce: bool,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Time every exit (the profiler's clock); counting is always on.
    pub time_exits: bool,
}

impl MachineConfig {
    /// A configuration with the defaults of `hushvm run`.
    pub fn new(kernel: Kernel) -> Self {
        Self {
            memory: 64 << 20,
            kernel,
            cmdline: String::new(),
            modules: Vec::new(),
            serial: SerialMode::Stdio,
            coalesce: true,
            timeout: None,
            time_exits: true,
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
    #[error("cannot open the serial output file {}: {source}", path.display())]
    SerialFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the vCPU thread: {0}")]
    Thread(String),
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

/// How a run ended and what it measured.
#[derive(Debug)]
pub struct RunReport {
    /// The vCPU's report: why it stopped, and its exit profile.
    pub vcpu: VcpuReport,
    /// KVM's own counters for the run.
    pub kvm_stats: BTreeMap<String, u64>,
    /// From the start of setup to the stop.
    pub wall: Duration,
    /// COM1 output, with [`SerialMode::Capture`].
    pub serial: Vec<u8>,
    /// The RTC at the end.
    pub rtc: RtcState,
    /// Posted writes.
    pub coalescing: Coalescing,
}

/// A byte buffer shared between the UART and the caller.
#[derive(Debug, Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
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

/// The legacy devices and where they sit.
struct Devices {
    buses: IoBuses,
    rtc: Arc<Mutex<Rtc<SystemClock>>>,
}

fn build_devices(
    config: &MachineConfig,
    serial_out: Box<dyn Write + Send>,
) -> Result<Devices, MachineError> {
    let mut buses = IoBuses::default();
    let mut rtc = Rtc::new(SystemClock);
    rtc.set_memory_size(config.memory);
    let rtc = Arc::new(Mutex::new(rtc));
    let pio = &mut buses.pio;
    pio.insert("rtc", RTC_PORT, RTC_PORT_COUNT, rtc.clone())?;
    pio.insert(
        "com1",
        COM1,
        SERIAL_PORT_COUNT,
        Arc::new(Mutex::new(SerialPort::new(serial_out))),
    )?;
    pio.insert(
        "isa-debug-exit",
        DEBUG_EXIT_PORT,
        DEBUG_EXIT_PORT_COUNT,
        Arc::new(Mutex::new(DebugExit)),
    )?;
    pio.insert(
        "i8042",
        I8042_PORT,
        I8042_PORT_COUNT,
        Arc::new(Mutex::new(I8042::default())),
    )?;
    pio.insert(
        "post-code",
        POST_CODE_PORT,
        1,
        Arc::new(Mutex::new(PostCode::default())),
    )?;
    pio.insert(
        "fw_cfg",
        FW_CFG_PORT,
        FW_CFG_PORT_COUNT,
        Arc::new(Mutex::new(FwCfg::new(config.memory, 1))),
    )?;
    Ok(Devices { buses, rtc })
}

/// Registers every declared posted register with KVM, or says why not.
fn enable_posted_writes(
    vm: &Vm,
    vcpu: &crate::kvm::Vcpu,
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

fn stats_delta(
    before: &BTreeMap<String, u64>,
    after: BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .into_iter()
        .map(|(name, value)| {
            let start = before.get(&name).copied().unwrap_or(0);
            (name, value.saturating_sub(start))
        })
        .collect()
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
    let cmdline = loader::kernel_cmdline(&config.kernel.name, &config.cmdline);
    let boot = loader::load(&memory, &config.kernel.image, &cmdline, &config.modules)?;

    let hypervisor = Hypervisor::open()?;
    let vm = Vm::new(&hypervisor, &memory)?;
    let capture = SharedBuffer::default();
    let devices = build_devices(config, serial_output(&config.serial, &capture)?)?;
    let vcpu = vm.create_vcpu(0)?;
    vcpu.enter_protected_mode(
        boot.entry,
        loader::multiboot::BOOTLOADER_MAGIC,
        boot.info_addr,
    )?;
    let (posted, coalescing) = if config.coalesce {
        enable_posted_writes(&vm, &vcpu, &devices.buses)?
    } else {
        (PostedWrites::disabled(), Coalescing::Off)
    };
    if coalescing == Coalescing::Unsupported {
        eprintln!("hushvm: warning: KVM cannot post port writes (no KVM_CAP_COALESCED_PIO); running without coalescing");
    }
    let stats = vcpu.stats().ok();
    let stats_before = stats
        .as_ref()
        .and_then(|s| s.read().ok())
        .unwrap_or_default();

    let buses = Arc::new(devices.buses);
    let posted = Arc::new(posted);
    let stop = Arc::new(AtomicBool::new(false));
    let time_exits = config.time_exits;
    let run_vcpu = {
        let (buses, posted, stop) = (buses.clone(), posted.clone(), stop.clone());
        move || {
            let mut vcpu = vcpu;
            let report = vcpu::run(&mut vcpu, &buses, &posted, &stop, time_exits);
            let stats_after = stats
                .as_ref()
                .and_then(|s| s.read().ok())
                .unwrap_or_default();
            (report, stats_after)
        }
    };
    let (report, stats_after) = match config.timeout {
        // Without a timeout nothing needs to watch the vCPU, so it runs on this thread: a
        // second thread in the process makes every exit measurably dearer on hosts where
        // KVM_RUN switches address spaces (docs/RESULTS.md).
        None => run_vcpu(),
        Some(limit) => run_with_watchdog(run_vcpu, &stop, limit)?,
    };
    let wall = started.elapsed();
    let rtc = devices
        .rtc
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .state();
    let serial = std::mem::take(&mut *capture.0.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(RunReport {
        vcpu: report,
        kvm_stats: stats_delta(&stats_before, stats_after),
        wall,
        serial,
        rtc,
        coalescing,
    })
}

/// Runs `body` (the vCPU loop) on its own thread and waits for it; past `limit`, raises
/// the stop flag and kicks the thread out of `KVM_RUN` until it notices (a kick can land
/// just before it enters the guest).
fn run_with_watchdog<T: Send + 'static>(
    body: impl FnOnce() -> T + Send + 'static,
    stop: &AtomicBool,
    limit: Duration,
) -> Result<T, MachineError> {
    vcpu::install_kick_handler().map_err(MachineError::Thread)?;
    let (done_tx, done_rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name("vcpu0".into())
        .spawn(move || {
            let result = body();
            let _ = done_tx.send(());
            result
        })
        .map_err(|e| MachineError::Thread(e.to_string()))?;
    if done_rx.recv_timeout(limit).is_err() {
        stop.store(true, Ordering::Release);
        while let Err(mpsc::RecvTimeoutError::Timeout) =
            done_rx.recv_timeout(Duration::from_millis(10))
        {
            vcpu::kick(&thread);
        }
    }
    thread
        .join()
        .map_err(|_| MachineError::Thread("the vCPU thread panicked".into()))
}
