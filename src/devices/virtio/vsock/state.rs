//! virtio-vsock's own saved state: its guest CID. Connections are not saved: host
//! programs cannot be carried across a snapshot, so a restore drops them all and tells
//! the guest with a TRANSPORT_RESET event, as Firecracker does.

use serde::{Deserialize, Serialize};

use super::Vsock;
use crate::devices::persist::StateError;
use crate::devices::virtio::state::DeviceState;

/// What a [`Vsock`] saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVsock {
    pub guest_cid: u64,
}

impl DeviceState for Vsock {
    type Saved = SavedVsock;

    fn save_device(&self) -> SavedVsock {
        SavedVsock {
            guest_cid: self.guest_cid,
        }
    }

    fn check_device(&self, kind: &'static str, saved: &SavedVsock) -> Result<(), StateError> {
        match saved.guest_cid == self.guest_cid {
            true => Ok(()),
            false => Err(StateError::invalid(
                kind,
                format!(
                    "guest CID {}, this device's is {}",
                    saved.guest_cid, self.guest_cid
                ),
            )),
        }
    }

    fn restore_device(&self, _: &SavedVsock) {
        self.reset_connections();
    }
}
