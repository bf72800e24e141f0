//! What virtio-pci keeps under the transport core's register lock beside the common
//! registers, and its interrupt delivery: MSI-X vectors, or INTx as a level (the ISR).

use std::sync::Arc;

use super::common::Vectors;
use super::{ISR_CONFIG, ISR_QUEUE, VIRTIO_MSI_NO_VECTOR};
use crate::devices::pci::config::{ConfigSpace, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE};
use crate::devices::pci::msix::MsixState;
use crate::devices::virtio::transport::{Cause, CommonRegisters, Delivery};
use crate::irq::InterruptLine;

/// What virtio-pci keeps beside the common registers, under the same register lock:
/// configuration space, MSI-X, INTx, and the vector numbers; and how it interrupts.
pub struct PciState {
    pub(super) config: ConfigSpace,
    pub(super) msix: MsixState,
    pub(super) msix_capability: u16,
    pub(super) pci_cfg_capability: u16,
    pub(super) intx: Arc<dyn InterruptLine>,
    pub(super) vectors: Vectors,
}

impl PciState {
    pub(super) fn intx_active(&self) -> bool {
        !self.msix.enabled() && self.config.command() & COMMAND_INTX_DISABLE == 0
    }

    /// The configuration space.
    pub fn config_space(&self) -> &ConfigSpace {
        &self.config
    }

    /// The MSI-X state.
    pub fn msix(&self) -> &MsixState {
        &self.msix
    }

    /// The MSI-X capability's offset in configuration space.
    pub fn msix_capability(&self) -> u16 {
        self.msix_capability
    }

    /// The vector numbers the driver programmed.
    pub fn vectors(&self) -> &Vectors {
        &self.vectors
    }
}

impl Delivery for PciState {
    /// Without bus mastering the function may neither touch memory nor send MSIs.
    fn may_serve(&self) -> bool {
        self.config.command() & COMMAND_BUS_MASTER != 0
    }

    fn raise(&mut self, common: &mut CommonRegisters, cause: Cause) {
        let bit = match cause {
            Cause::Queues(_) => ISR_QUEUE,
            Cause::Config => ISR_CONFIG,
        };
        if self.msix.enabled() {
            // With MSI-X only configuration changes set the ISR (virtio 1.2 4.1.4.5.1).
            let vectors: Vec<u16> = match cause {
                Cause::Queues(used) => (0..self.vectors.queues.len().min(64))
                    .filter(|queue| used & (1 << queue) != 0)
                    .map(|queue| self.vectors.queues[queue])
                    .collect(),
                Cause::Config => {
                    common.raise_status(bit);
                    vec![self.vectors.config]
                }
            };
            for vector in vectors {
                if vector != VIRTIO_MSI_NO_VECTOR {
                    self.msix.notify(vector);
                }
            }
            return;
        }
        let rising = common.raise_status(bit) == 0;
        self.config.set_interrupt_status(true);
        if rising && self.intx_active() {
            self.intx.pulse();
        }
    }

    fn reset(&mut self) {
        // A device reset lowers any interrupt it had raised.
        self.config.set_interrupt_status(false);
        self.vectors.reset();
    }
}
