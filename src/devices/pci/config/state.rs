//! A configuration space's saved state: the 256 bytes of the header and capabilities
//! (past them nothing is writable and everything reads 0), and where each BAR was last
//! reported. The layout (identity, BARs, capabilities, write masks) is the function's
//! build; a state restores only into a space built the same way.

use serde::{Deserialize, Serialize};

use super::{BarChange, BarKind, ConfigSpace, BAR_COUNT, HEADER_SIZE, STATUS, STATUS_INTERRUPT};
use crate::devices::persist::StateError;

const KIND: &str = "pci-config";

/// What a [`ConfigSpace`] saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfigSpace {
    /// Bytes 0-255.
    pub header: Vec<u8>,
    /// Per BAR register: where the BAR it starts was last reported; `None` for a
    /// register that starts no BAR.
    pub placed: Vec<Option<u64>>,
}

impl ConfigSpace {
    /// The space's state now.
    pub fn save_state(&self) -> SavedConfigSpace {
        SavedConfigSpace {
            header: self.bytes[..HEADER_SIZE].to_vec(),
            placed: self
                .bars
                .iter()
                .map(|bar| bar.map(|bar| bar.placed))
                .collect(),
        }
    }

    /// Takes `state`, checking all of it first (on an error nothing changes). Returns
    /// the BAR moves from this space's placements to the restored ones, which the
    /// caller reports to its [`super::super::host::BarObserver`] as it would a guest's.
    pub fn restore_state(
        &mut self,
        state: &SavedConfigSpace,
    ) -> Result<Vec<BarChange>, StateError> {
        self.check_state(state)?;
        let placed = &state.placed;
        self.bytes[..HEADER_SIZE].copy_from_slice(&state.header);
        let mut moves = Vec::new();
        for (index, (bar, new)) in self.bars.iter_mut().zip(placed).enumerate() {
            let (Some(bar), Some(new)) = (bar.as_mut(), *new) else {
                continue;
            };
            let old = std::mem::replace(&mut bar.placed, new);
            if old != new {
                moves.push(BarChange {
                    // Fewer than BAR_COUNT registers: the cast is exact.
                    bar: index as u8,
                    old,
                    new,
                    size: bar.size,
                    kind: bar.kind,
                });
            }
        }
        Ok(moves)
    }

    /// Whether [`ConfigSpace::restore_state`] would take `state`: a function restoring
    /// several parts checks them all before it changes any.
    pub fn check_state(&self, state: &SavedConfigSpace) -> Result<(), StateError> {
        self.check_header(&state.header)?;
        self.check_placements(&state.placed)
    }

    /// A saved header must be this function's: every read-only bit as built, but the
    /// interrupt status, which the device drives.
    fn check_header(&self, header: &[u8]) -> Result<(), StateError> {
        if header.len() != HEADER_SIZE {
            let reason = format!("{} header bytes, not {HEADER_SIZE}", header.len());
            return Err(StateError::invalid(KIND, reason));
        }
        let driven = |at: usize| match at == usize::from(STATUS) {
            true => STATUS_INTERRUPT as u8,
            false => 0,
        };
        let differs = (0..HEADER_SIZE)
            .find(|at| (header[*at] ^ self.bytes[*at]) & !self.write_mask[*at] & !driven(*at) != 0);
        match differs {
            None => Ok(()),
            Some(at) => Err(StateError::invalid(
                KIND,
                format!(
                    "read-only byte {at:#04x} is {:#04x}, but this function's is {:#04x}: \
                     not the same function",
                    header[at], self.bytes[at]
                ),
            )),
        }
    }

    /// Placements for exactly this space's BARs, each aligned to its size and within
    /// its kind's reach.
    fn check_placements(&self, placed: &[Option<u64>]) -> Result<(), StateError> {
        if placed.len() != usize::from(BAR_COUNT) {
            let reason = format!("{} BAR placements, not {BAR_COUNT}", placed.len());
            return Err(StateError::invalid(KIND, reason));
        }
        for (index, (bar, address)) in self.bars.iter().zip(placed).enumerate() {
            let fits = match (bar, address) {
                (None, None) => true,
                (Some(bar), Some(address)) => {
                    let limit = match bar.kind {
                        BarKind::Io | BarKind::Memory32 => 1 << 32,
                        BarKind::Memory64 => u64::MAX,
                    };
                    *address % bar.size == 0 && *address <= limit - bar.size
                }
                _ => false,
            };
            if !fits {
                return Err(StateError::invalid(
                    KIND,
                    format!("BAR {index} placed at {address:?} does not fit this function's BARs"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    const IDS: PciIds = PciIds {
        vendor: 0x1af4,
        device: 0x1042,
        revision: 1,
        class: 0x01_80_00,
        subsystem_vendor: 0x1af4,
        subsystem: 2,
    };

    fn space() -> ConfigSpace {
        let mut space = ConfigSpace::new(IDS);
        space.add_bar(0, BarKind::Memory32, 0x1000).unwrap();
        space.add_bar(2, BarKind::Memory64, 0x4000).unwrap();
        space
            .add_capability(0x09, &[1, 2, 3, 4], &[0, 0, 0xff, 0])
            .unwrap();
        space
    }

    fn write32(space: &mut ConfigSpace, offset: u16, value: u32) -> Option<BarChange> {
        space.write(offset, &value.to_le_bytes())
    }

    #[test]
    fn a_moved_bar_and_the_command_register_survive_and_the_moves_are_reported() {
        let mut original = space();
        write32(&mut original, BAR0, 0xe000_0000);
        write32(&mut original, BAR0 + 8, 0x1000_0000);
        write32(&mut original, BAR0 + 12, 0x2);
        write32(&mut original, COMMAND, u32::from(COMMAND_MEMORY_SPACE));
        original.write(0x40 + 4, &[0x77]);
        // A sizing write in progress: the register reads the mask, the BAR stays put.
        write32(&mut original, BAR0, u32::MAX);
        original.set_interrupt_status(true);
        let text = serde_json::to_string(&original.save_state()).unwrap();
        let mut fresh = space();
        let moves = fresh
            .restore_state(&serde_json::from_str(&text).unwrap())
            .unwrap();
        assert_eq!(moves.len(), 2);
        assert_eq!(
            (moves[0].bar, moves[0].old, moves[0].new),
            (0, 0, 0xe000_0000)
        );
        assert_eq!(moves[1].new, 0x2_1000_0000);
        for offset in (0..HEADER_SIZE as u16).step_by(4) {
            assert_eq!(
                fresh.u32_at(offset),
                original.u32_at(offset),
                "at {offset:#x}"
            );
        }
        assert!(fresh.decodes(0));
        // The guest finishes the sizing: neither reports a move back to where it was.
        assert_eq!(write32(&mut fresh, BAR0, 0xe000_0000), None);
        assert_eq!(write32(&mut original, BAR0, 0xe000_0000), None);
        let moved = write32(&mut fresh, BAR0, 0xd000_0000);
        assert_eq!(moved, write32(&mut original, BAR0, 0xd000_0000));
        assert_eq!(moved.map(|change| change.old), Some(0xe000_0000));
    }

    #[test]
    fn another_functions_or_impossible_placements_are_refused_and_change_nothing() {
        let mut target = space();
        write32(&mut target, COMMAND, 0x2);
        let good = space().save_state();
        let mut other_device = good.clone();
        other_device.header[usize::from(DEVICE_ID)] ^= 1;
        let mut short = good.clone();
        short.header.pop();
        let mut unaligned = good.clone();
        unaligned.placed[0] = Some(0xe000_0800);
        let mut too_high = good.clone();
        too_high.placed[0] = Some(0xffff_f000 + 0x1000);
        let mut no_such_bar = good.clone();
        no_such_bar.placed[1] = Some(0);
        let mut few = good.clone();
        few.placed.pop();
        for bad in [other_device, short, unaligned, too_high, no_such_bar, few] {
            assert!(
                matches!(target.restore_state(&bad), Err(StateError::Invalid { .. })),
                "{bad:?}"
            );
            assert_eq!(target.command(), 0x2, "unchanged");
        }
    }
}
