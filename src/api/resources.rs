//! The microVM as configured before InstanceStart, and the [`MachineConfig`] it becomes.

use std::path::{Path, PathBuf};

use crate::config::{DiskConfig, SerialMode, VirtioTransport};
use crate::cpuid::CpuModel;
use crate::layout::MemoryLayout;
use crate::loader::{self, KernelFormat};
use crate::machine::{
    BootConfig, Cures, DeviceConfig, Kernel, MachineConfig, RunOptions, VcpuConfig,
};
use crate::seccomp::SeccompAction;

use super::types::{
    BootSource, Drive, EntropyDevice, FullVmConfiguration, MachineConfiguration,
    MachineConfigurationUpdate, NetworkInterface, SerialDevice, Vsock,
};
use super::ApiError;

/// Firecracker's kernel command line when `boot_args` is not given.
pub const DEFAULT_BOOT_ARGS: &str =
    "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

/// Everything the pre-boot calls set.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub machine: MachineConfiguration,
    pub boot_source: Option<BootSource>,
    pub drives: Vec<Drive>,
    pub network_interfaces: Vec<NetworkInterface>,
    pub vsock: Option<Vsock>,
    pub entropy: Option<EntropyDevice>,
    pub serial: Option<SerialDevice>,
    /// `--no-seccomp`.
    pub seccomp: SeccompAction,
}

fn must_exist(what: &'static str, path: &str) -> Result<(), ApiError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| ApiError::File {
            what,
            path: path.to_string(),
            source,
        })
}

fn unsupported(what: &str) -> ApiError {
    ApiError::Unsupported(what.to_string())
}

/// Refuses the machine-config values hushvm cannot honour.
fn check_machine(config: &MachineConfiguration) -> Result<(), ApiError> {
    if !(1..=32).contains(&config.vcpu_count) {
        return Err(ApiError::Invalid(format!(
            "vcpu_count {}: expected 1 to 32",
            config.vcpu_count
        )));
    }
    MemoryLayout::new(config.mem_size_mib.saturating_mul(1 << 20))
        .map_err(|error| ApiError::Invalid(format!("mem_size_mib: {error}")))?;
    if config.smt {
        return Err(unsupported("smt"));
    }
    if config.cpu_template.as_deref().is_some_and(|t| t != "None") {
        return Err(unsupported("cpu_template (CPU templates)"));
    }
    if config.track_dirty_pages {
        return Err(unsupported("track_dirty_pages (snapshots)"));
    }
    if config.huge_pages != "None" {
        return Err(unsupported("huge_pages"));
    }
    Ok(())
}

impl Resources {
    pub fn set_machine(&mut self, config: MachineConfiguration) -> Result<(), ApiError> {
        check_machine(&config)?;
        self.machine = config;
        Ok(())
    }

    pub fn update_machine(&mut self, update: MachineConfigurationUpdate) -> Result<(), ApiError> {
        let mut config = self.machine.clone();
        config.vcpu_count = update.vcpu_count.unwrap_or(config.vcpu_count);
        config.mem_size_mib = update.mem_size_mib.unwrap_or(config.mem_size_mib);
        config.smt = update.smt.unwrap_or(config.smt);
        config.cpu_template = update.cpu_template.or(config.cpu_template);
        config.track_dirty_pages = update.track_dirty_pages.unwrap_or(config.track_dirty_pages);
        config.huge_pages = update.huge_pages.unwrap_or(config.huge_pages);
        self.set_machine(config)
    }

    pub fn set_boot_source(&mut self, source: BootSource) -> Result<(), ApiError> {
        must_exist("kernel", &source.kernel_image_path)?;
        if let Some(initrd) = &source.initrd_path {
            must_exist("initrd", initrd)?;
        }
        self.boot_source = Some(source);
        Ok(())
    }

    /// Adds a drive, or replaces the one with the same id.
    pub fn set_drive(&mut self, drive: Drive) -> Result<(), ApiError> {
        if drive.socket.is_some() {
            return Err(unsupported("socket (vhost-user-block)"));
        }
        if drive.io_engine.as_deref().is_some_and(|e| e != "Sync") {
            return Err(unsupported("io_engine Async"));
        }
        let path = drive
            .path_on_host
            .as_deref()
            .ok_or_else(|| ApiError::Invalid("path_on_host is required".into()))?;
        must_exist("drive", path)?;
        if crate::machine::FIXED_IDS.contains(&drive.drive_id.as_str()) {
            return Err(ApiError::Invalid(format!(
                "drive_id {}: another device of the machine has that id",
                drive.drive_id
            )));
        }
        let others = self.drives.iter().filter(|d| d.drive_id != drive.drive_id);
        if drive.is_root_device && others.clone().any(|d| d.is_root_device) {
            return Err(ApiError::Invalid(
                "a root block device already exists".into(),
            ));
        }
        if others.clone().any(|d| d.path_on_host == drive.path_on_host) {
            return Err(ApiError::Invalid(format!(
                "the drive's path_on_host {path} is already used by another drive"
            )));
        }
        self.drives.retain(|d| d.drive_id != drive.drive_id);
        self.drives.push(drive);
        Ok(())
    }

    pub fn set_network_interface(&mut self, iface: NetworkInterface) -> Result<(), ApiError> {
        let others = self
            .network_interfaces
            .iter()
            .filter(|i| i.iface_id != iface.iface_id);
        if others
            .clone()
            .any(|i| i.host_dev_name == iface.host_dev_name)
        {
            return Err(ApiError::Invalid(format!(
                "the host device {} is already used by another interface",
                iface.host_dev_name
            )));
        }
        if let Some(mac) = &iface.guest_mac {
            if others.clone().any(|i| i.guest_mac.as_ref() == Some(mac)) {
                return Err(ApiError::Invalid(format!(
                    "the guest MAC address {mac} is already in use"
                )));
            }
        }
        self.network_interfaces
            .retain(|i| i.iface_id != iface.iface_id);
        self.network_interfaces.push(iface);
        Ok(())
    }

    pub fn set_vsock(&mut self, vsock: Vsock) -> Result<(), ApiError> {
        if vsock.guest_cid < 3 {
            return Err(ApiError::Invalid(format!(
                "guest_cid {}: 0 to 2 are reserved",
                vsock.guest_cid
            )));
        }
        self.vsock = Some(vsock);
        Ok(())
    }

    pub fn set_serial(&mut self, serial: SerialDevice) -> Result<(), ApiError> {
        if serial.serial_out_path.is_empty() {
            return Err(ApiError::Invalid("serial_out_path is empty".into()));
        }
        self.serial = Some(serial);
        Ok(())
    }

    /// Applies a `--config-file`'s sections (the logger and metrics are the caller's).
    pub fn apply_file(&mut self, file: FullVmConfiguration) -> Result<(), ApiError> {
        let refused = [
            ("balloon", file.balloon.is_some()),
            ("mmds-config", file.mmds_config.is_some()),
            ("cpu-config", file.cpu_config.is_some()),
            ("pmem", file.pmem.is_some()),
            ("memory-hotplug", file.memory_hotplug.is_some()),
        ];
        if let Some((name, _)) = refused.iter().find(|(_, present)| *present) {
            return Err(unsupported(name));
        }
        if let Some(machine) = file.machine_config {
            self.set_machine(machine)?;
        }
        if let Some(source) = file.boot_source {
            self.set_boot_source(source)?;
        }
        for drive in file.drives {
            self.set_drive(drive)?;
        }
        for iface in file.network_interfaces {
            self.set_network_interface(iface)?;
        }
        if let Some(vsock) = file.vsock {
            self.set_vsock(vsock)?;
        }
        self.entropy = file.entropy.or(self.entropy.take());
        if let Some(serial) = file.serial {
            self.set_serial(serial)?;
        }
        Ok(())
    }

    /// The machine InstanceStart boots.
    pub fn machine_config(&self) -> Result<MachineConfig, ApiError> {
        let source = self
            .boot_source
            .as_ref()
            .ok_or_else(|| ApiError::Invalid("no kernel: PUT /boot-source first".into()))?;
        let net = self
            .network_interfaces
            .iter()
            .map(|iface| {
                let mac = iface
                    .guest_mac
                    .as_deref()
                    .map(str::parse::<crate::net::config::MacAddr>)
                    .transpose()
                    .map_err(|()| {
                        ApiError::Invalid(format!(
                            "{}: guest_mac {:?} is not a MAC address",
                            iface.iface_id, iface.guest_mac
                        ))
                    })?;
                Ok(crate::net::config::NetConfig {
                    tap: iface.host_dev_name.clone(),
                    mac,
                    queue_pairs: 1,
                    rx_limit: iface.rx_rate_limiter.unwrap_or_default(),
                    tx_limit: iface.tx_rate_limiter.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let read = |what, path: &str| {
            loader::read_file(Path::new(path)).map_err(|error| {
                ApiError::Invalid(format!("cannot load the {what} {path}: {error}"))
            })
        };
        let image = read("kernel", &source.kernel_image_path)?;
        let linux = !matches!(loader::detect(&image), Ok(KernelFormat::Multiboot) | Err(_));
        let initrd = source
            .initrd_path
            .as_deref()
            .map(|path| read("initrd", path))
            .transpose()?;
        let mut cmdline = source
            .boot_args
            .clone()
            .unwrap_or_else(|| DEFAULT_BOOT_ARGS.to_string());
        // As in Firecracker, the root device comes first (the guest's vda).
        let mut drives: Vec<&Drive> = self.drives.iter().filter(|d| d.is_root_device).collect();
        drives.extend(self.drives.iter().filter(|d| !d.is_root_device));
        if let Some(root) = drives.first().filter(|d| d.is_root_device && linux) {
            let device = match &root.partuuid {
                Some(uuid) => format!("PARTUUID={uuid}"),
                None => "/dev/vda".to_string(),
            };
            let mode = if root.is_read_only == Some(true) {
                "ro"
            } else {
                "rw"
            };
            cmdline.push_str(&format!(" root={device} {mode}"));
        }
        let memory = MemoryLayout::new(self.machine.mem_size_mib << 20)
            .map_err(|error| ApiError::Invalid(format!("mem_size_mib: {error}")))?;
        let name = Path::new(&source.kernel_image_path)
            .file_name()
            .map_or_else(
                || source.kernel_image_path.clone(),
                |n| n.to_string_lossy().into_owned(),
            );
        Ok(MachineConfig {
            memory,
            vcpus: VcpuConfig {
                count: self.machine.vcpu_count,
                model: CpuModel::host(),
            },
            boot: BootConfig {
                kernel: Kernel { name, image },
                cmdline,
                modules: Vec::new(),
                initrd,
            },
            devices: DeviceConfig {
                serial: match &self.serial {
                    Some(serial) => SerialMode::File(PathBuf::from(&serial.serial_out_path)),
                    None => SerialMode::Stdio,
                },
                disks: drives
                    .iter()
                    .map(|d| DiskConfig {
                        path: PathBuf::from(d.path_on_host.clone().unwrap_or_default()),
                        readonly: d.is_read_only == Some(true),
                        id: Some(d.drive_id.clone()),
                        transport: None,
                    })
                    .collect(),
                rng: self.entropy.is_some(),
                rng_transport: None,
                console_transport: None,
                virtio_console: None,
                net,
                vsock: self.vsock.as_ref().map(|vsock| crate::config::VsockConfig {
                    guest_cid: u64::from(vsock.guest_cid),
                    uds_path: PathBuf::from(&vsock.uds_path),
                    vsock_id: vsock.vsock_id.clone(),
                    transport: None,
                }),
                transport: if linux {
                    VirtioTransport::Pci
                } else {
                    VirtioTransport::Mmio
                },
            },
            cures: Cures::default(),
            run: RunOptions {
                timeout: None,
                time_exits: true,
                record: None,
                seccomp: self.seccomp,
                emulation_fallback: true,
            },
        })
    }

    /// `GET /vm/config` (without the logger and metrics, which the caller adds).
    pub fn full_config(&self) -> FullVmConfiguration {
        FullVmConfiguration {
            boot_source: self.boot_source.clone(),
            drives: self.drives.clone(),
            machine_config: Some(self.machine.clone()),
            network_interfaces: self.network_interfaces.clone(),
            vsock: self.vsock.clone(),
            entropy: self.entropy.clone(),
            serial: self.serial.clone(),
            ..FullVmConfiguration::default()
        }
    }
}
