//! virtio-console's own saved state: host input taken and not yet delivered into the
//! driver's receive buffers.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::{Console, MAX_PENDING_INPUT};
use crate::devices::persist::{check_len, StateError};
use crate::devices::virtio::state::DeviceState;
use crate::sync::LockExt;

/// What a [`Console`] saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConsole {
    /// Input waiting for receive buffers, oldest first.
    pub input: Vec<u8>,
}

impl<W: Write + Send> DeviceState for Console<W> {
    type Saved = SavedConsole;

    fn save_device(&self) -> SavedConsole {
        SavedConsole {
            input: self.input.locked().iter().copied().collect(),
        }
    }

    fn check_device(&self, kind: &'static str, saved: &SavedConsole) -> Result<(), StateError> {
        check_len(kind, "console input", saved.input.len(), MAX_PENDING_INPUT)
    }

    fn restore_device(&self, saved: &SavedConsole) {
        *self.input.locked() = saved.input.iter().copied().collect();
    }
}
