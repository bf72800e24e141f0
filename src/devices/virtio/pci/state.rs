//! virtio-pci's saved state: the transport core's, plus the function's configuration
//! space (BAR 0 where the guest put it, the command register, the capabilities' writable
//! bytes), its MSI-X table and pending bits, and the vector each queue and configuration
//! changes raise.
//!
//! Restoring gives back the BAR moves, from where the fresh function's BAR was to where
//! the saved one is: the machine moves BAR 0's bus range and doorbells as it does for a
//! guest's move. The MSI sink is told each vector's route again.

use serde::{Deserialize, Serialize};

use super::{PciState, VirtioPciTransport};
use crate::devices::pci::config::{BarChange, SavedConfigSpace};
use crate::devices::pci::msix::SavedMsix;
use crate::devices::persist::{envelope, open_as, SavedState, StateError};
use crate::devices::virtio::state::DeviceState;
use crate::devices::virtio::transport::{PersistDelivery, SavedCore};
use crate::devices::virtio::VirtioDevice;

/// The envelope's kind and version for a virtio-pci function.
pub const KIND: &str = "virtio-pci";
pub const VERSION: u32 = 1;

/// What virtio-pci keeps beside the common registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPciFunction {
    pub config: SavedConfigSpace,
    pub msix: SavedMsix,
    /// Each queue's MSI-X vector (or VIRTIO_MSI_NO_VECTOR).
    pub queue_vectors: Vec<u16>,
    pub config_vector: u16,
}

impl PersistDelivery for PciState {
    type Saved = SavedPciFunction;
    type Restored = Vec<BarChange>;

    fn save_delivery(&self) -> SavedPciFunction {
        SavedPciFunction {
            config: self.config.save_state(),
            msix: self.msix.save_state(),
            queue_vectors: self.vectors.queues.clone(),
            config_vector: self.vectors.config,
        }
    }

    fn check_delivery(
        &self,
        kind: &'static str,
        saved: &SavedPciFunction,
    ) -> Result<(), StateError> {
        self.config.check_state(&saved.config)?;
        self.msix.check_state(&saved.msix)?;
        let queues = self.vectors.queues.len();
        if saved.queue_vectors.len() != queues {
            let reason = format!(
                "{} queue vectors for {queues} queues",
                saved.queue_vectors.len()
            );
            return Err(StateError::invalid(kind, reason));
        }
        Ok(())
    }

    /// A vector past the table cannot be saved (the driver's write reads back as
    /// NO_VECTOR) and, restored, raises nothing: MSI-X ignores vectors it does not have.
    fn restore_delivery(
        &mut self,
        _kind: &'static str,
        saved: &SavedPciFunction,
    ) -> Result<Vec<BarChange>, StateError> {
        let moves = self.config.restore_state(&saved.config)?;
        self.msix.restore_state(&saved.msix)?;
        self.vectors.queues.copy_from_slice(&saved.queue_vectors);
        self.vectors.config = saved.config_vector;
        Ok(moves)
    }
}

impl<D: VirtioDevice + DeviceState> VirtioPciTransport<D> {
    /// The function's state now.
    pub fn save_state(&self) -> SavedCore<D, PciState> {
        self.core.save_state()
    }

    /// Takes `state` (checked whole first: on an error nothing changes); returns the BAR
    /// moves for the machine to make.
    pub fn restore_state(
        &self,
        state: &SavedCore<D, PciState>,
    ) -> Result<Vec<BarChange>, StateError> {
        self.core.restore_state(KIND, state)
    }

    /// [`VirtioPciTransport::save_state`] in its envelope.
    pub fn save_saved(&self) -> Result<SavedState, StateError> {
        envelope(KIND, VERSION, &self.save_state())
    }

    /// [`VirtioPciTransport::restore_state`] from its envelope.
    pub fn restore_saved(&self, saved: &SavedState) -> Result<Vec<BarChange>, StateError> {
        self.restore_state(&open_as(KIND, VERSION, saved)?)
    }
}
