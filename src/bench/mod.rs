//! Benchmarks: a workload (a test guest and what it counts) run under each variant in
//! fresh VMs, interleaved, in one invocation.
//!
//! Every variant boots the guest twice per repetition: with N iterations and with none.
//! The difference removes VM setup and boot, which are the same in both; medians over
//! repetitions remove host noise. An iteration is one loop pass for `rtc`, one interrupt
//! for `eoi` and `tick`, one request for `doorbell`, one 4 KiB block written and read
//! back (two requests) for `blk`, and one round of 4096 bytes out and back for `strio`.

pub mod api;
pub mod pause;
mod report;
pub mod snapshot;
pub mod vsock;
mod workloads;

use std::collections::BTreeMap;

use thiserror::Error;

use crate::config::{DiskConfig, Doorbell, SerialMode, VirtioTransport};
use crate::guests;
use crate::machine::{self, Kernel, MachineConfig, MachineError, RunReport};
use crate::seccomp::SeccompAction;

pub use pause::{run_pausing, Pacing, PauseReport, PausedRun};
pub use report::{BenchReport, VariantResult};
pub use workloads::{workload, WORKLOADS};

/// A configuration under test.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// Its name in reports and `--variant`.
    pub name: &'static str,
    /// Coalesced PIO on.
    pub coalesce: bool,
    /// PV EOI advertised.
    pub pv_eoi: bool,
    /// Added to the guest's command line.
    pub cmdline: &'static str,
    /// How virtqueue doorbells arrive.
    pub doorbell: Doorbell,
    /// The event loop polls the virtqueues while it is busy.
    pub queue_poll: bool,
    /// The virtio devices offer VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// Where the virtio devices sit, if this variant fixes it (a reference measured on
    /// the other transport); `None`: `--transport`.
    pub transport: Option<VirtioTransport>,
}

/// A guest and how to drive it.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// `hushvm bench NAME`.
    pub name: &'static str,
    /// The built-in guest.
    pub guest: &'static str,
    /// The command-line key that sets the iteration count.
    pub count_key: &'static str,
    /// Iterations when `--iterations` is not given.
    pub default_iterations: u64,
    /// The prefix of the guest's result line (`rtc:`, `eoi:`, `tick:`).
    pub result_prefix: &'static str,
    /// Variants, in report order.
    pub variants: &'static [Variant],
    /// A virtio-rng device.
    pub rng: bool,
    /// A virtio-blk disk of this many bytes (0: none), a fresh sparse scratch file.
    pub disk_bytes: u64,
    /// The variants with `--transport pci`, if the guest drives virtio-pci too
    /// (`transport=pci` on its command line).
    pub pci_variants: Option<&'static [Variant]>,
    /// A virtio-net device on `--tap`.
    pub net: bool,
}

/// Options of `hushvm bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Iterations per measured run (the workload's default if `None`).
    pub iterations: Option<u64>,
    /// Repetitions; medians are reported.
    pub repeat: u32,
    /// Run only this variant.
    pub variant: Option<String>,
    /// Time each exit (the profiler's clock).
    pub time_exits: bool,
    /// Where the virtio devices sit; with PCI the guest is told `transport=pci`.
    pub transport: VirtioTransport,
    /// The seccomp filters' action.
    pub seccomp: SeccompAction,
    /// The tap a network workload's device uses (an existing one, up, in the namespace
    /// hushvm runs in).
    pub tap: Option<String>,
}

/// The bench could not run.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error(
        "unknown workload {0:?}; workloads: rtc, eoi, tick, doorbell, blk, strio, console, pci, pause, vsock, snapshot, api, net"
    )]
    UnknownWorkload(String),
    #[error(
        "the {0} workload's guest drives virtio-mmio only; --transport pci is for doorbell and net"
    )]
    NoPciTransport(&'static str),
    #[error("unknown variant {name:?}; variants: {known}")]
    UnknownVariant { name: String, known: String },
    #[error("the {0} guest is missing from this build")]
    MissingGuest(&'static str),
    #[error("the {0} workload needs --tap NAME (an existing tap; see tests/net.rs)")]
    NoTap(&'static str),
    #[error("--tap")]
    Tap(#[source] crate::net::config::NetConfigError),
    #[error("cannot create the scratch disk")]
    Scratch(#[source] std::io::Error),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("the bench's host program failed")]
    Host(#[source] std::io::Error),
}

/// The `key=value` numbers on the guest's result line.
pub fn guest_fields(serial: &[u8], prefix: &str) -> BTreeMap<String, u64> {
    let text = String::from_utf8_lossy(serial);
    let Some(line) = text.lines().find(|l| l.starts_with(prefix)) else {
        return BTreeMap::new();
    };
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .filter_map(|(key, value)| Some((key.to_string(), value.parse().ok()?)))
        .collect()
}

/// A scratch disk image, removed when dropped.
struct ScratchDisk(std::path::PathBuf);

impl ScratchDisk {
    fn create(bytes: u64) -> Result<Self, BenchError> {
        let path = std::env::temp_dir().join(format!("hushvm-bench-{}.img", std::process::id()));
        let file = std::fs::File::create(&path).map_err(BenchError::Scratch)?;
        file.set_len(bytes).map_err(BenchError::Scratch)?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run_once(
    workload: &Workload,
    variant: &Variant,
    iterations: u64,
    options: &BenchOptions,
    disk: Option<&ScratchDisk>,
) -> Result<RunReport, BenchError> {
    let image = guests::image(workload.guest).ok_or(BenchError::MissingGuest(workload.guest))?;
    let mut config = MachineConfig::new(Kernel {
        name: format!("{}.elf", workload.guest),
        image: image.to_vec(),
    });
    config.boot.cmdline = format!("{}={iterations} {}", workload.count_key, variant.cmdline);
    let transport = variant.transport.unwrap_or(options.transport);
    config.devices.transport = transport;
    if transport == VirtioTransport::Pci {
        config.boot.cmdline.push_str(" transport=pci");
    }
    config.devices.serial = SerialMode::Capture;
    config.cures.coalesce = variant.coalesce;
    config.cures.pv_eoi = variant.pv_eoi;
    config.cures.doorbell = variant.doorbell;
    config.cures.queue_poll = variant.queue_poll;
    config.cures.event_idx = variant.event_idx;
    if workload.net {
        let tap = options
            .tap
            .as_ref()
            .ok_or(BenchError::NoTap(workload.name))?;
        config.devices.net = crate::net::config::parse_net_options(&[format!("tap={tap}")])
            .map_err(BenchError::Tap)?;
    }
    config.devices.rng = workload.rng;
    config.devices.disks = disk
        .map(|disk| DiskConfig::new(&disk.0))
        .into_iter()
        .collect();
    config.run.time_exits = options.time_exits;
    config.run.seccomp = options.seccomp;
    Ok(machine::run(&config)?)
}

fn select<'a>(
    variants: &'a [Variant],
    name: &Option<String>,
) -> Result<Vec<&'a Variant>, BenchError> {
    match name {
        None => Ok(variants.iter().collect()),
        Some(name) => variants
            .iter()
            .find(|v| v.name == name)
            .map(|v| vec![v])
            .ok_or_else(|| BenchError::UnknownVariant {
                name: name.clone(),
                known: variants
                    .iter()
                    .map(|v| v.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
    }
}

/// Runs `workload` under its variants.
pub fn run(workload: &Workload, options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let variants = match (options.transport, workload.pci_variants) {
        (VirtioTransport::Mmio, _) => workload.variants,
        (VirtioTransport::Pci, Some(variants)) => variants,
        (VirtioTransport::Pci, None) => return Err(BenchError::NoPciTransport(workload.name)),
    };
    let selected = select(variants, &options.variant)?;
    let iterations = options
        .iterations
        .unwrap_or(workload.default_iterations)
        .max(1);
    let repeat = options.repeat.max(1);
    let mut samples: Vec<report::Samples> = selected
        .iter()
        .map(|_| report::Samples::default())
        .collect();
    let disk = (workload.disk_bytes > 0)
        .then(|| ScratchDisk::create(workload.disk_bytes))
        .transpose()?;
    for _ in 0..repeat {
        for (variant, samples) in selected.iter().zip(samples.iter_mut()) {
            let full = run_once(workload, variant, iterations, options, disk.as_ref())?;
            let empty = run_once(workload, variant, 0, options, disk.as_ref())?;
            samples.add(workload, iterations, full, empty);
        }
    }
    let variants = selected
        .iter()
        .zip(samples)
        .map(|(variant, samples)| samples.summarise(workload, variant, iterations))
        .collect();
    Ok(BenchReport {
        workload: workload.name,
        iterations,
        repeat,
        variants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_result_fields_are_parsed() {
        let fields = guest_fields(
            b"x\nrtc: iterations=5 tsc=1234 errors=0 mode=xapic\n",
            "rtc:",
        );
        assert_eq!(fields.get("tsc"), Some(&1234));
        assert_eq!(fields.get("iterations"), Some(&5));
        assert_eq!(fields.get("mode"), None, "not a number");
        assert!(guest_fields(b"", "rtc:").is_empty());
    }

    #[test]
    fn every_workload_has_a_built_guest_and_unique_variants() {
        for workload in WORKLOADS {
            assert!(guests::image(workload.guest).is_some(), "{}", workload.name);
            let mut names: Vec<_> = workload.variants.iter().map(|v| v.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), workload.variants.len(), "{}", workload.name);
        }
        assert!(matches!(
            select(workload("eoi").unwrap().variants, &Some("turbo".into())),
            Err(BenchError::UnknownVariant { .. })
        ));
    }

    #[test]
    fn only_a_workload_whose_guest_drives_virtio_pci_takes_the_pci_transport() {
        let options = BenchOptions {
            iterations: Some(1),
            repeat: 1,
            variant: None,
            time_exits: false,
            transport: VirtioTransport::Pci,
            seccomp: SeccompAction::Off,
            tap: None,
        };
        // Refused before any VM is made.
        assert!(matches!(
            run(workload("blk").unwrap(), &options),
            Err(BenchError::NoPciTransport("blk"))
        ));
        let takes_pci: Vec<_> = WORKLOADS
            .iter()
            .filter(|w| w.pci_variants.is_some())
            .map(|w| w.name)
            .collect();
        assert_eq!(takes_pci, ["doorbell", "net"]);
    }
}
