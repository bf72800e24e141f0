//! Parsed and validated options: sizes, serial destinations. No KVM here.

use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

use crate::layout::{LayoutError, MemoryLayout};

/// A bad option value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid size {0:?}: expected a number with an optional K, M or G suffix (default M), e.g. 64M")]
    BadSize(String),
    #[error("--mem {value}: {source}")]
    Memory {
        value: String,
        #[source]
        source: LayoutError,
    },
    #[error("invalid serial destination {0:?}: expected stdio, none or file:PATH")]
    BadSerial(String),
    #[error("invalid timeout {0:?}: expected a positive number of seconds")]
    BadTimeout(String),
    #[error("invalid doorbell {0:?}: expected exit, len0, len4 or pio")]
    BadDoorbell(String),
    #[error("invalid virtio transport {0:?}: expected pci or mmio")]
    BadTransport(String),
    #[error("invalid --disk option {0:?}: expected PATH[,readonly][,id=ID][,transport=pci|mmio]")]
    BadDiskOption(String),
    #[error("invalid device id {0:?}: expected 1 to 20 letters, digits, '-' or '_'")]
    BadDeviceId(String),
    #[error("two devices have the id {0:?}; give each disk its own id=")]
    DuplicateDeviceId(String),
    #[error("more virtio-mmio devices than the {0} windows with a line of their own; put one on PCI (transport=pci)")]
    TooManyMmioDevices(u8),
}

/// Parses a size the way QEMU's `-m` does: a plain number is MiB; K, M, G (or KiB, MiB,
/// GiB) suffixes are binary.
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(text.to_string());
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(split);
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "K" | "KB" | "KIB" => 10,
        "" | "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(bad()),
    };
    number.checked_mul(1 << shift).ok_or_else(bad)
}

/// Parses and checks `--mem`.
pub fn parse_memory(text: &str) -> Result<MemoryLayout, ConfigError> {
    MemoryLayout::new(parse_size(text)?).map_err(|source| ConfigError::Memory {
        value: text.to_string(),
        source,
    })
}

/// Parses `--timeout` seconds.
pub fn parse_timeout(text: &str) -> Result<std::time::Duration, ConfigError> {
    text.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0 && *secs < 1e9)
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| ConfigError::BadTimeout(text.to_string()))
}

/// How a virtqueue doorbell (a write to QueueNotify) reaches the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Doorbell {
    /// An ordinary MMIO exit, handled on the vCPU thread (`--no-ioeventfd`).
    Exit,
    /// A length-0 ioeventfd: KVM's fast-MMIO path, no access length or data matched.
    #[default]
    Len0,
    /// One 4-byte ioeventfd per queue, matching the queue index written.
    Len4,
    /// A write of the queue index to the device's I/O port, through a length-0 PIO
    /// ioeventfd (hushvm's own extension, for the "as fast as PIO" comparison).
    Pio,
}

impl FromStr for Doorbell {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "exit" => Ok(Doorbell::Exit),
            "len0" => Ok(Doorbell::Len0),
            "len4" => Ok(Doorbell::Len4),
            "pio" => Ok(Doorbell::Pio),
            _ => Err(ConfigError::BadDoorbell(text.to_string())),
        }
    }
}

/// Where the virtio devices sit (`--virtio-transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VirtioTransport {
    /// virtio-mmio slots in the 32-bit hole (the test guests' transport).
    #[default]
    Mmio,
    /// virtio-pci (modern) functions on PCI bus 0, with MSI-X.
    Pci,
}

impl FromStr for VirtioTransport {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "mmio" => Ok(VirtioTransport::Mmio),
            "pci" => Ok(VirtioTransport::Pci),
            _ => Err(ConfigError::BadTransport(text.to_string())),
        }
    }
}

/// `--disk PATH[,readonly][,id=ID][,transport=pci|mmio]`, repeatable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Refuse the guest's writes (and open the file read-only).
    pub readonly: bool,
    /// The device's id (default `blkN`, N its position among the disks).
    pub id: Option<String>,
    /// Where it sits (default: `--virtio-transport`).
    pub transport: Option<VirtioTransport>,
}

impl DiskConfig {
    /// A writable disk with the default id and transport.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }

    /// Takes one trailing option; false if `option` is not one.
    fn take_option(&mut self, option: &str) -> Result<bool, ConfigError> {
        if option == "readonly" {
            self.readonly = true;
        } else if let Some(id) = option.strip_prefix("id=") {
            check_device_id(id)?;
            self.id = Some(id.to_string());
        } else if let Some(transport) = option.strip_prefix("transport=") {
            self.transport = Some(transport.parse()?);
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}

impl FromStr for DiskConfig {
    type Err = ConfigError;

    /// Options come last; a path may hold commas (`/x/a,b.img,readonly`), but then at
    /// least one option must follow it, as before options other than `readonly` existed.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut disk = DiskConfig::default();
        let mut path = text;
        let mut options = 0;
        while let Some((rest, option)) = path.rsplit_once(',') {
            if !disk.take_option(option)? {
                if options == 0 {
                    return Err(ConfigError::BadDiskOption(option.to_string()));
                }
                break;
            }
            options += 1;
            path = rest;
        }
        if path.is_empty() {
            return Err(ConfigError::BadDiskOption(text.to_string()));
        }
        disk.path = PathBuf::from(path);
        Ok(disk)
    }
}

/// A device id: what reports, traces and (later) the API name a device by.
pub fn check_device_id(id: &str) -> Result<(), ConfigError> {
    let valid = (1..=20).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match valid {
        true => Ok(()),
        false => Err(ConfigError::BadDeviceId(id.to_string())),
    }
}

/// The disks' ids, defaults filled in (`blkN`); refuses two equal ids and an id that
/// another device of the machine has (`reserved`).
pub fn disk_ids(disks: &[DiskConfig], reserved: &[&str]) -> Result<Vec<String>, ConfigError> {
    let ids: Vec<String> = disks
        .iter()
        .enumerate()
        .map(|(n, disk)| disk.id.clone().unwrap_or_else(|| format!("blk{n}")))
        .collect();
    for (n, id) in ids.iter().enumerate() {
        if ids[..n].contains(id) || reserved.contains(&id.as_str()) {
            return Err(ConfigError::DuplicateDeviceId(id.clone()));
        }
    }
    Ok(ids)
}

/// Where COM1's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    /// hushvm's standard output.
    Stdio,
    /// Nowhere.
    None,
    /// A file, created or truncated.
    File(PathBuf),
    /// A buffer the caller reads after the run (benchmarks and tests).
    Capture,
}

impl FromStr for SerialMode {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "stdio" => Ok(SerialMode::Stdio),
            "none" => Ok(SerialMode::None),
            _ => match text.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SerialMode::File(PathBuf::from(path))),
                _ => Err(ConfigError::BadSerial(text.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_qemu() {
        assert_eq!(parse_size("64"), Ok(64 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096k"), Ok(4 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        for bad in ["", "M", "-1M", "1.5G", "12Q", "99999999999999999999G"] {
            assert!(
                matches!(parse_size(bad), Err(ConfigError::BadSize(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn memory_limits_are_enforced() {
        assert_eq!(parse_memory("64M").unwrap().ram_bytes(), 64 << 20);
        assert_eq!(parse_memory("5G").unwrap().ram_top(), 6 << 30);
        assert!(matches!(
            parse_memory("1M"),
            Err(ConfigError::Memory {
                source: LayoutError::TooSmall { .. },
                ..
            })
        ));
        assert!(matches!(
            parse_memory("512G"),
            Err(ConfigError::Memory {
                source: LayoutError::TooLarge { .. },
                ..
            })
        ));
        assert!(matches!(
            parse_memory("4097K"),
            Err(ConfigError::Memory {
                source: LayoutError::NotPageAligned { .. },
                ..
            })
        ));
    }

    #[test]
    fn serial_modes_parse() {
        assert_eq!("stdio".parse(), Ok(SerialMode::Stdio));
        assert_eq!("none".parse(), Ok(SerialMode::None));
        assert_eq!("file:/tmp/x".parse(), Ok(SerialMode::File("/tmp/x".into())));
        assert!("file:".parse::<SerialMode>().is_err());
        assert!("tcp:1".parse::<SerialMode>().is_err());
    }

    #[test]
    fn disks_and_doorbells_parse() {
        assert_eq!("a.img".parse(), Ok(DiskConfig::new("a.img")));
        assert_eq!(
            "/x/a,b.img,readonly".parse(),
            Ok(DiskConfig {
                readonly: true,
                ..DiskConfig::new("/x/a,b.img")
            })
        );
        assert!("a.img,rw".parse::<DiskConfig>().is_err());
        assert!(",readonly".parse::<DiskConfig>().is_err());
        assert_eq!("len4".parse(), Ok(Doorbell::Len4));
        assert!("fast".parse::<Doorbell>().is_err());
    }

    #[test]
    fn disk_options_take_an_id_and_a_transport_in_any_order() {
        assert_eq!(
            "/x/a,b.img,transport=mmio,id=root,readonly".parse(),
            Ok(DiskConfig {
                path: "/x/a,b.img".into(),
                readonly: true,
                id: Some("root".into()),
                transport: Some(VirtioTransport::Mmio),
            })
        );
        assert_eq!(
            "a.img,transport=usb".parse::<DiskConfig>(),
            Err(ConfigError::BadTransport("usb".into()))
        );
        assert_eq!(
            "a.img,id=".parse::<DiskConfig>(),
            Err(ConfigError::BadDeviceId(String::new()))
        );
        assert_eq!(
            "a.img,id=a/b".parse::<DiskConfig>(),
            Err(ConfigError::BadDeviceId("a/b".into()))
        );
        assert_eq!(
            "a.img,id=x,colour=red".parse::<DiskConfig>(),
            Err(ConfigError::BadDiskOption("colour=red".into()))
        );
    }

    #[test]
    fn disk_ids_default_to_their_position_and_never_repeat() {
        let named = |id: &str| DiskConfig {
            id: Some(id.into()),
            ..DiskConfig::new("a.img")
        };
        let disks = [DiskConfig::new("a"), named("data"), DiskConfig::new("c")];
        assert_eq!(
            disk_ids(&disks, &["rng0"]).unwrap(),
            ["blk0", "data", "blk2"]
        );
        assert_eq!(
            disk_ids(&[named("blk1"), DiskConfig::new("b")], &[]),
            Err(ConfigError::DuplicateDeviceId("blk1".into()))
        );
        assert_eq!(
            disk_ids(&[named("com1")], &["com1"]),
            Err(ConfigError::DuplicateDeviceId("com1".into()))
        );
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(
            parse_timeout("1.5"),
            Ok(std::time::Duration::from_millis(1500))
        );
        for bad in ["0", "-1", "nan", "inf", "x"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
