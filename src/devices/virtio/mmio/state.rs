//! virtio-mmio's saved state: the transport core's ([`SavedTransport`]); the interrupt
//! line is the machine's wiring and keeps nothing.

use serde::{Deserialize, Serialize};

use super::{MmioInterrupt, MmioTransport};
use crate::devices::persist::{open, Persist, SavedState, StateError};
use crate::devices::virtio::state::DeviceState;
use crate::devices::virtio::transport::{PersistDelivery, SavedCore};
use crate::devices::virtio::VirtioDevice;

/// What virtio-mmio keeps beside the common registers: nothing (its configuration
/// generation is always 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMmioInterrupt {}

impl PersistDelivery for MmioInterrupt {
    type Saved = SavedMmioInterrupt;
    type Restored = ();

    fn save_delivery(&self) -> SavedMmioInterrupt {
        SavedMmioInterrupt {}
    }

    fn check_delivery(&self, _: &'static str, _: &SavedMmioInterrupt) -> Result<(), StateError> {
        Ok(())
    }

    fn restore_delivery(
        &mut self,
        _: &'static str,
        _: &SavedMmioInterrupt,
    ) -> Result<(), StateError> {
        Ok(())
    }
}

impl<D: VirtioDevice + DeviceState> Persist for MmioTransport<D> {
    const KIND: &'static str = "virtio-mmio";
    const VERSION: u32 = 1;
    type State = SavedCore<D, MmioInterrupt>;

    fn save(&self) -> Self::State {
        self.core.save_state()
    }

    /// The line is not pulsed again: the interrupt controller's state is restored on
    /// its own. See the transport core's notes on the first doorbell after a restore.
    fn restore(&mut self, state: &Self::State) -> Result<(), StateError> {
        self.core.restore_state(Self::KIND, state)
    }
}

impl<D: VirtioDevice + DeviceState> MmioTransport<D> {
    /// [`Persist::restore`] from its envelope, through a shared transport (the machine
    /// holds it in an `Arc`; the core locks its own parts).
    pub fn restore_shared(&self, saved: &SavedState) -> Result<(), StateError> {
        let state = open::<Self>(saved)?;
        self.core.restore_state(Self::KIND, &state)
    }
}

#[cfg(test)]
mod tests;
