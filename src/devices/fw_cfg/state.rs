//! fw_cfg's saved state: the selected item and the read position in it. The items are
//! the machine's configuration, rebuilt with it.

use serde::{Deserialize, Serialize};

use super::FwCfg;
use crate::devices::persist::{Persist, StateError};

/// What [`FwCfg`] saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFwCfg {
    pub selected: u16,
    /// Bytes of the selected item already read (past its end, reads give 0).
    pub position: u64,
}

impl Persist for FwCfg {
    const KIND: &'static str = "fw_cfg";
    const VERSION: u32 = 1;
    type State = SavedFwCfg;

    fn save(&self) -> SavedFwCfg {
        SavedFwCfg {
            selected: self.selected,
            position: self.position as u64,
        }
    }

    /// Any key and position is one a guest can reach (unknown keys read 0).
    fn restore(&mut self, state: &SavedFwCfg) -> Result<(), StateError> {
        self.selected = state.selected;
        self.position = usize::try_from(state.position).unwrap_or(usize::MAX);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::key;
    use super::*;
    use crate::devices::persist::testing::{restores_identically, run, Step};

    #[test]
    fn a_selection_half_read_survives() {
        let mut device = FwCfg::new(64 << 20, 2);
        let select = Step::Write(0, key::RAM_SIZE.to_le_bytes().to_vec());
        run(&mut device, &[select, Step::Read(1, 3)]);
        let mut fresh = FwCfg::new(64 << 20, 2);
        let steps = [Step::Read(1, 5), Step::Read(1, 1)];
        let replies = restores_identically(&mut device, &mut fresh, &steps);
        assert_eq!(replies[0].0, (64u64 << 20).to_le_bytes()[3..]);
        assert_eq!(replies[1].0, [0], "past the end");
    }
}
