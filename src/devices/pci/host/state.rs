//! The root bus's saved state: the host bridge's configuration space, and
//! configuration mechanism #1's address latch with the reset register it holds. The
//! root's table of functions is the machine's build; each function saves its own.

use serde::{Deserialize, Serialize};

use super::{HostBridge, PciConfigIo, ADDRESS_BITS};
use crate::devices::acpi_pm::SavedResetControl;
use crate::devices::pci::config::SavedConfigSpace;
use crate::devices::persist::{check_bits, Persist, StateError};

impl Persist for HostBridge {
    const KIND: &'static str = "pci-host-bridge";
    const VERSION: u32 = 1;
    type State = SavedConfigSpace;

    fn save(&self) -> SavedConfigSpace {
        self.config.save_state()
    }

    /// The bridge has no BARs, so nothing moves.
    fn restore(&mut self, state: &SavedConfigSpace) -> Result<(), StateError> {
        self.config.restore_state(state).map(drop)
    }
}

/// What [`PciConfigIo`] saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPciConfigIo {
    /// The configuration-address register at 0xcf8.
    pub address: u32,
    /// The reset-control register at 0xcf9.
    pub reset: SavedResetControl,
}

impl Persist for PciConfigIo {
    const KIND: &'static str = "pci-config-io";
    const VERSION: u32 = 1;
    type State = SavedPciConfigIo;

    fn save(&self) -> SavedPciConfigIo {
        SavedPciConfigIo {
            address: self.address,
            reset: self.reset.save(),
        }
    }

    fn restore(&mut self, state: &SavedPciConfigIo) -> Result<(), StateError> {
        let allowed = u64::from(ADDRESS_BITS);
        check_bits(Self::KIND, "address", u64::from(state.address), allowed)?;
        // Checked before anything changes: a bad reset value leaves the latch as it was.
        let mut reset = crate::devices::acpi_pm::ResetControl::default();
        reset.restore(&state.reset)?;
        self.address = state.address;
        self.reset = reset;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{BarObserver, PciRoot};
    use super::*;
    use crate::bus::StopRequest;
    use crate::devices::acpi_pm::ResetControl;
    use crate::devices::pci::config::BarChange;
    use crate::devices::persist::testing::{restores_identically, run, Step};

    struct NoMoves;

    impl BarObserver for NoMoves {
        fn bar_changed(&self, _function: u8, _change: BarChange) {}
    }

    /// Ports 0xcf8-0xcff over a root with only its host bridge.
    fn ports() -> (PciConfigIo, Arc<PciRoot>) {
        let root = Arc::new(PciRoot::new(Arc::new(NoMoves)));
        (
            PciConfigIo::new(root.clone(), ResetControl::default()),
            root,
        )
    }

    fn select(register: u32) -> Step {
        Step::Write(0, (0x8000_0000 | register).to_le_bytes().to_vec())
    }

    #[test]
    fn the_latched_address_and_the_reset_register_survive() {
        let (mut original, _) = ports();
        run(&mut original, &[Step::Write(1, vec![0x02]), select(0x04)]);
        let (mut fresh, _) = ports();
        let steps = [
            Step::Read(0, 4),
            Step::Read(4, 4),
            Step::Read(1, 1),
            Step::Write(1, vec![0x06]),
        ];
        let replies = restores_identically(&mut original, &mut fresh, &steps);
        assert_eq!(replies[0].0, 0x8000_0004u32.to_le_bytes());
        assert_eq!(
            replies[1].0,
            [0, 0, 0, 0],
            "the bridge's command and status"
        );
        assert_eq!(replies[2].0, [0x02]);
        assert_eq!(replies[3].1, Some(StopRequest::Reset));
        let refused = fresh.restore(&SavedPciConfigIo {
            address: 0x8000_0003,
            reset: SavedResetControl { value: 0 },
        });
        assert!(matches!(refused, Err(StateError::Invalid { .. })));
    }

    #[test]
    fn the_roots_host_bridge_is_the_one_configuration_accesses_reach() {
        let (mut original, root) = ports();
        run(
            &mut original,
            &[select(0x04), Step::Write(4, vec![0x02, 0x00])],
        );
        let saved = root.host_bridge().lock().unwrap().save();
        let (mut fresh_ports, fresh_root) = ports();
        fresh_root
            .host_bridge()
            .lock()
            .unwrap()
            .restore(&saved)
            .unwrap();
        let steps = [select(0x04), Step::Read(4, 2)];
        let replies = run(&mut fresh_ports, &steps);
        assert_eq!(replies, run(&mut original, &steps));
        assert_eq!(replies[1].0, [0x02, 0x00]);
    }

    #[test]
    fn the_host_bridges_registers_survive() {
        let mut bridge = HostBridge::default();
        bridge.config.write(0x04, &[0x06, 0x00]);
        bridge.config.write(0x3c, &[0x0b]);
        let saved: SavedConfigSpace =
            serde_json::from_str(&serde_json::to_string(&bridge.save()).unwrap()).unwrap();
        let mut fresh = HostBridge::default();
        fresh.restore(&saved).unwrap();
        for offset in (0..256u16).step_by(4) {
            let (got, want) = (fresh.config.u32_at(offset), bridge.config.u32_at(offset));
            assert_eq!(got, want, "at {offset:#x}");
        }
        assert_eq!(fresh.config.command(), 0x06);
    }
}
