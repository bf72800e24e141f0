//! What a machine is made of, as data, in the groups a reader looks for: memory, vCPUs,
//! boot, devices, the cures being measured, and how the run is watched.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{DiskConfig, Doorbell, SerialMode, VirtioTransport, VsockConfig};
use crate::cpuid::CpuModel;
use crate::layout::MemoryLayout;
use crate::loader::Module;
use crate::seccomp::SeccompAction;

/// The event loop's polling window after each event (QEMU's IOThreads poll up to 32 us by
/// default; doorbell round trips on the development host need a little more).
pub const DEFAULT_EVENT_POLL: Duration = Duration::from_micros(100);

/// The bounded drain's period: a posted write to a bounded zone (a console byte) takes
/// effect within it even when the guest makes no exit. The drain runs only while the
/// guest writes such a zone (`coalesced::bounded`); a latch's write (and a reset posted
/// to 0xcf9) is applied within it only while the drain runs, else at the next exit.
pub const DEFAULT_POSTED_DRAIN: Duration = Duration::from_millis(1);

/// A kernel image and the name the guest's command line gives it.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The file name (a Multiboot kernel's command line starts with it, as under QEMU).
    pub name: String,
    /// The image, in any format the loader recognises.
    pub image: Vec<u8>,
}

/// The vCPUs.
#[derive(Debug, Clone)]
pub struct VcpuConfig {
    /// How many; vCPU 0 boots, the others wait for INIT/SIPI.
    pub count: u8,
    /// The CPUID features shown or hidden (`--cpu host,-xsave,...`).
    pub model: CpuModel,
}

/// What boots, and with what.
#[derive(Debug, Clone)]
pub struct BootConfig {
    pub kernel: Kernel,
    /// The user's command line.
    pub cmdline: String,
    /// Multiboot modules.
    pub modules: Vec<Module>,
    /// A Linux initial RAM disk.
    pub initrd: Option<Vec<u8>>,
}

/// The devices beyond the fixed PC ones.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Where COM1 goes (and, for stdio, where its input comes from).
    pub serial: SerialMode,
    /// virtio-blk disks, in `--disk` order.
    pub disks: Vec<DiskConfig>,
    /// A virtio-rng device.
    pub rng: bool,
    /// Where it sits (None: `transport`).
    pub rng_transport: Option<VirtioTransport>,
    /// Where the virtio-console sits (None: `transport`).
    pub console_transport: Option<VirtioTransport>,
    /// A virtio-console device, and where its output goes.
    pub virtio_console: Option<SerialMode>,
    /// A virtio-vsock device (`--vsock`, or Firecracker's `PUT /vsock`).
    pub vsock: Option<VsockConfig>,
    /// virtio-net devices on taps, in `--net` order (on `transport`).
    pub net: Vec<crate::net::config::NetConfig>,
    /// virtio-mmio or virtio-pci, for each virtio device that does not say.
    pub transport: VirtioTransport,
}

/// The seed techniques, each switchable so that every claim is an A/B measurement.
#[derive(Debug, Clone, Copy)]
pub struct Cures {
    /// Post writes to declared registers in the coalesced ring (seeds 000/001).
    pub coalesce: bool,
    /// Advertise KVM_FEATURE_PV_EOI in CPUID leaf 0x40000001 (seed 002).
    pub pv_eoi: bool,
    /// How virtqueue doorbells reach the devices (seed 003).
    pub doorbell: Doorbell,
    /// Offer VIRTIO_RING_F_EVENT_IDX on every virtio device: doorbells and interrupts
    /// only past the other side's published index.
    pub event_idx: bool,
    /// How long the event loop keeps polling after an event before it sleeps.
    pub event_poll: Duration,
    /// While it polls, the event loop also looks at the virtqueues' available indices.
    pub queue_poll: bool,
    /// At most how long a posted write to a bounded zone waits in the ring (`None`: such
    /// zones are never posted).
    pub posted_drain: Option<Duration>,
}

impl Default for Cures {
    fn default() -> Self {
        Self {
            coalesce: true,
            pv_eoi: true,
            doorbell: Doorbell::default(),
            event_idx: true,
            event_poll: DEFAULT_EVENT_POLL,
            queue_poll: true,
            posted_drain: Some(DEFAULT_POSTED_DRAIN),
        }
    }
}

/// How the run is bounded and watched.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Time every exit (the profiler's clock); counting is always on.
    pub time_exits: bool,
    /// Record every exit to this trace file.
    pub record: Option<PathBuf>,
    /// What the threads' seccomp filters do with a syscall outside their lists.
    pub seccomp: SeccompAction,
    /// Complete the few instructions KVM's emulator fails on (`crate::insn`) instead of
    /// stopping the VM there.
    pub emulation_fallback: bool,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub memory: MemoryLayout,
    pub vcpus: VcpuConfig,
    pub boot: BootConfig,
    pub devices: DeviceConfig,
    pub cures: Cures,
    pub run: RunOptions,
}

impl MachineConfig {
    /// A configuration with the defaults of `hushvm run`: 64 MiB, one vCPU, COM1 on
    /// standard output, every cure on.
    pub fn new(kernel: Kernel) -> Self {
        Self {
            memory: MemoryLayout::new(64 << 20).expect("64 MiB is a valid layout"),
            vcpus: VcpuConfig {
                count: 1,
                model: CpuModel::host(),
            },
            boot: BootConfig {
                kernel,
                cmdline: String::new(),
                modules: Vec::new(),
                initrd: None,
            },
            devices: DeviceConfig {
                serial: SerialMode::Stdio,
                disks: Vec::new(),
                rng: false,
                rng_transport: None,
                console_transport: None,
                virtio_console: None,
                vsock: None,
                net: Vec::new(),
                transport: VirtioTransport::Mmio,
            },
            cures: Cures::default(),
            run: RunOptions {
                timeout: None,
                time_exits: true,
                record: None,
                seccomp: SeccompAction::Kill,
                emulation_fallback: true,
            },
        }
    }
}
