//! Snapshots of a running machine: [`create`] on a paused one, and the restore half that
//! [`super::restore_controlled`] runs, building the machine through the same code as a
//! live run (`devices::build`), then putting the saved state in.
//!
//! The state file holds the machine's shape ([`SavedMachine`], checked against the
//! configuration of the restore), the VM's and each vCPU's KVM state, and each device's
//! saved state by inventory id. The coalesced ring is drained by the pause before any of
//! it is read, so no posted write is lost or applied twice; the wiring (ioeventfds,
//! irqfds, coalesced zones, the RTC's timer) is rebuilt by the restore's own build, and
//! the RTC re-arms its timer from its restored state.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use crate::devices::persist::{SavedState, StateError};
use crate::kvm::{KvmError, VcpuState, VmState, VmStates};
use crate::snapshot::{file, memory, MemoryWritten, SnapshotError, SnapshotPaths};

use super::device_table::DeviceStates;
use super::{ControlError, MachineConfig, VmControl};

/// A snapshot could not be taken or restored.
#[derive(Debug, Error)]
pub enum MachineSnapshotError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Files(#[from] SnapshotError),
    #[error("device {id}")]
    Device {
        id: String,
        #[source]
        source: StateError,
    },
    #[error("the snapshot's {what} is {saved}; this machine's is {configured}")]
    Mismatch {
        what: &'static str,
        saved: String,
        configured: String,
    },
    #[error("the snapshot holds no state for device {0}")]
    MissingDevice(String),
}

/// The machine's shape: what a restore's configuration must give again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMachine {
    pub ram_bytes: u64,
    pub cpus: u8,
    /// The inventory's device ids, in build order.
    pub devices: Vec<String>,
    /// Each disk image's size, in `--disk` order (0: unreadable).
    pub disk_bytes: Vec<u64>,
}

/// The sizes of the configured disks' images now.
pub(super) fn disk_sizes(config: &MachineConfig) -> Vec<u64> {
    config
        .devices
        .disks
        .iter()
        .map(|disk| std::fs::metadata(&disk.path).map_or(0, |metadata| metadata.len()))
        .collect()
}

impl SavedMachine {
    /// Checks that `other` (the restore's) is this one.
    fn check(&self, other: &SavedMachine) -> Result<(), MachineSnapshotError> {
        let mismatch = |what, saved: String, configured: String| {
            Err(MachineSnapshotError::Mismatch {
                what,
                saved,
                configured,
            })
        };
        if self.ram_bytes != other.ram_bytes {
            return mismatch(
                "memory size",
                self.ram_bytes.to_string(),
                other.ram_bytes.to_string(),
            );
        }
        if self.cpus != other.cpus {
            return mismatch("vCPU count", self.cpus.to_string(), other.cpus.to_string());
        }
        if self.disk_bytes != other.disk_bytes {
            let sizes = |sizes: &[u64]| {
                let text: Vec<String> = sizes.iter().map(u64::to_string).collect();
                format!("[{}] bytes", text.join(", "))
            };
            return mismatch(
                "disk image sizes",
                sizes(&self.disk_bytes),
                sizes(&other.disk_bytes),
            );
        }
        if self.devices != other.devices {
            return mismatch(
                "device list",
                self.devices.join(","),
                other.devices.join(","),
            );
        }
        Ok(())
    }
}

/// What the state file's payload holds.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    pub machine: SavedMachine,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    /// Each device's state by id (`devices::Devices::states`).
    pub devices: Vec<(String, SavedState)>,
}

/// What a snapshot of the running machine reads besides its vCPUs.
pub struct SnapshotSource {
    pub vm: VmStates,
    pub memory: GuestMemoryMmap,
    pub devices: DeviceStates,
    pub machine: SavedMachine,
}

/// What [`create`] wrote and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    pub state_bytes: u64,
    pub memory: MemoryWritten,
    /// From the call to both files written and synced.
    pub took: Duration,
}

/// Writes a snapshot of the paused machine `control` runs (Firecracker's
/// `PUT /snapshot/create` with `snapshot_type` Full): its state to `paths.state`, its RAM
/// to `paths.memory`. A running VM is refused; on any error the files that were there
/// are as they were. The machine stays paused.
pub fn create(control: &VmControl, paths: &SnapshotPaths) -> Result<Created, MachineSnapshotError> {
    let started = Instant::now();
    let (source, vcpus) = control.save_vcpus()?;
    let vcpus = vcpus.into_iter().collect::<Result<Vec<_>, _>>()?;
    let devices = source
        .devices
        .iter()
        .map(|(id, handle)| {
            handle
                .save()
                .map(|saved| (id.clone(), saved))
                .map_err(|source| MachineSnapshotError::Device {
                    id: id.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let state = SnapshotState {
        machine: source.machine.clone(),
        vm: source.vm.save()?,
        vcpus,
        devices,
    };
    let memory = write_memory_replacing(&source.memory, &paths.memory)?;
    let state_bytes = file::write(&paths.state, &state)?;
    Ok(Created {
        state_bytes,
        memory,
        took: started.elapsed(),
    })
}

/// Runs `config`, pauses it `after` its start, writes a snapshot to `paths` and stops
/// it (`hushvm run --snapshot-dir DIR --snapshot-after SECS`). The report's stop is
/// [`crate::run_loop::VmStop::Requested`]; a guest that stops first is an error.
pub fn run_and_snapshot(
    config: &MachineConfig,
    after: Duration,
    paths: &SnapshotPaths,
) -> Result<(super::RunReport, Created), super::MachineError> {
    let control = VmControl::new();
    std::thread::scope(|scope| {
        let machine = scope.spawn(|| super::run_controlled(config, &control));
        std::thread::sleep(after);
        let created = control
            .pause()
            .map_err(MachineSnapshotError::from)
            .and_then(|_| create(&control, paths));
        let _ = control.stop();
        let report = machine
            .join()
            .map_err(|_| super::MachineError::ThreadPanicked)??;
        Ok((report, created?))
    })
}

/// [`memory::write`] into a temporary file renamed over `path` once complete.
fn write_memory_replacing(
    guest: &GuestMemoryMmap,
    path: &Path,
) -> Result<MemoryWritten, SnapshotError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    let temporary = path.with_file_name(name);
    let written = memory::write(guest, &temporary).and_then(|written| {
        std::fs::rename(&temporary, path).map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(written)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// The state file of a restore, read and checked before anything is built.
pub(super) fn read_state(
    config: &MachineConfig,
    paths: &SnapshotPaths,
) -> Result<SnapshotState, MachineSnapshotError> {
    let state: SnapshotState = file::read(&paths.state)?;
    // The device list is checked once the machine is built from the configuration.
    state.machine.check(&SavedMachine {
        ram_bytes: config.memory.ram_bytes(),
        cpus: config.vcpus.count,
        devices: state.machine.devices.clone(),
        disk_bytes: disk_sizes(config),
    })?;
    if state.vcpus.len() != usize::from(state.machine.cpus) {
        return Err(MachineSnapshotError::Mismatch {
            what: "vCPU state count",
            saved: state.vcpus.len().to_string(),
            configured: state.machine.cpus.to_string(),
        });
    }
    Ok(state)
}

/// Checks the built machine against the snapshot's, then restores every device's state:
/// all are checked (each restore checks its state before it changes anything) in one
/// pass, in the build's order.
pub(super) fn restore_devices(
    state: &SnapshotState,
    built: &SavedMachine,
    devices: &[(
        String,
        std::sync::Arc<dyn super::device_table::DeviceStateHandle>,
    )],
) -> Result<(), MachineSnapshotError> {
    state.machine.check(built)?;
    for (id, handle) in devices {
        let saved = state
            .devices
            .iter()
            .find(|(saved_id, _)| saved_id == id)
            .map(|(_, saved)| saved)
            .ok_or_else(|| MachineSnapshotError::MissingDevice(id.clone()))?;
        handle
            .restore(saved)
            .map_err(|source| MachineSnapshotError::Device {
                id: id.clone(),
                source,
            })?;
    }
    Ok(())
}
