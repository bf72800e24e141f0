//! `--vsock cid=N,uds=PATH[,id=ID][,transport=pci|mmio]`, and the same device as
//! Firecracker's `PUT /vsock` body describes it (`guest_cid`, `uds_path`, `vsock_id`).

use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::{check_device_id, ConfigError, VirtioTransport};

/// The first CID a guest may take (0 to 2 are the hypervisor's, the local and the
/// host's).
pub const FIRST_GUEST_CID: u64 = 3;

/// A virtio-vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's CID.
    pub guest_cid: u64,
    /// The host side: a Unix socket listening here; host listeners for guest
    /// connections to port P at `<uds_path>_<P>`.
    pub uds_path: PathBuf,
    /// Firecracker's (deprecated) id; the device is `vsock0` unless it names another.
    #[serde(default)]
    pub vsock_id: Option<String>,
    /// Where it sits (default: `--virtio-transport`); not a Firecracker field.
    #[serde(skip)]
    pub transport: Option<VirtioTransport>,
}

impl VsockConfig {
    /// Checks what neither parser checks: the CID's range and the id.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.guest_cid < FIRST_GUEST_CID || self.guest_cid > u64::from(u32::MAX) {
            return Err(ConfigError::BadVsockCid(self.guest_cid));
        }
        if self.uds_path.as_os_str().is_empty() {
            return Err(ConfigError::BadVsockOption("uds= is empty".into()));
        }
        if let Some(id) = &self.vsock_id {
            check_device_id(id)?;
        }
        Ok(())
    }

    /// The device's id.
    pub fn id(&self) -> String {
        self.vsock_id.clone().unwrap_or_else(|| "vsock0".into())
    }
}

impl FromStr for VsockConfig {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |what: &str| ConfigError::BadVsockOption(what.to_string());
        let (mut cid, mut uds, mut id, mut transport) = (None, None, None, None);
        for option in text.split(',') {
            let (key, value) = option.split_once('=').ok_or_else(|| bad(option))?;
            match key {
                "cid" => cid = Some(value.parse::<u64>().map_err(|_| bad(option))?),
                "uds" => uds = Some(PathBuf::from(value)),
                "id" => id = Some(value.to_string()),
                "transport" => transport = Some(value.parse()?),
                _ => return Err(bad(option)),
            }
        }
        let config = Self {
            guest_cid: cid.ok_or_else(|| bad("cid= missing"))?,
            uds_path: uds.ok_or_else(|| bad("uds= missing"))?,
            vsock_id: id,
            transport,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_parses_with_clear_errors() {
        let config: VsockConfig = "cid=3,uds=/tmp/v.sock".parse().unwrap();
        assert_eq!(config.guest_cid, 3);
        assert_eq!(config.uds_path, PathBuf::from("/tmp/v.sock"));
        assert_eq!(config.id(), "vsock0");
        let config: VsockConfig = "uds=/x,cid=9,id=agent,transport=mmio".parse().unwrap();
        assert_eq!(config.id(), "agent");
        assert_eq!(config.transport, Some(VirtioTransport::Mmio));
        let error = |text: &str| text.parse::<VsockConfig>().unwrap_err();
        assert_eq!(error("cid=2,uds=/x"), ConfigError::BadVsockCid(2));
        assert_eq!(
            error("cid=4294967296,uds=/x"),
            ConfigError::BadVsockCid(1 << 32)
        );
        assert!(matches!(error("uds=/x"), ConfigError::BadVsockOption(_)));
        assert!(matches!(error("cid=3"), ConfigError::BadVsockOption(_)));
        assert!(matches!(
            error("cid=x,uds=/x"),
            ConfigError::BadVsockOption(_)
        ));
        assert!(matches!(
            error("cid=3,uds=/x,port=1"),
            ConfigError::BadVsockOption(_)
        ));
        assert!(matches!(
            error("cid=3,uds="),
            ConfigError::BadVsockOption(_)
        ));
        assert!(matches!(
            error("cid=3,uds=/x,id=a b"),
            ConfigError::BadDeviceId(_)
        ));
    }

    #[test]
    fn firecrackers_put_vsock_body_fills_it() {
        let body = r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock", "vsock_id": "vsock0"}"#;
        let config: VsockConfig = serde_json::from_str(body).unwrap();
        assert_eq!(config.guest_cid, 3);
        config.validate().unwrap();
        let body = r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock", "extra": 1}"#;
        assert!(serde_json::from_str::<VsockConfig>(body).is_err());
        let body = r#"{"guest_cid": "3", "uds_path": "/tmp/v.sock"}"#;
        assert!(serde_json::from_str::<VsockConfig>(body).is_err());
    }
}
