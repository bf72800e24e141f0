//! isa-debug-exit's saved state, which is empty: a write ends the VM, a read gives 0.
//! It is a [`Persist`] device all the same, so a snapshot lists every device.

use serde::{Deserialize, Serialize};

use super::DebugExit;
use crate::devices::persist::{Persist, StateError};

/// What [`DebugExit`] saves: nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDebugExit {}

impl Persist for DebugExit {
    const KIND: &'static str = "isa-debug-exit";
    const VERSION: u32 = 1;
    type State = SavedDebugExit;

    fn save(&self) -> SavedDebugExit {
        SavedDebugExit {}
    }

    fn restore(&mut self, _state: &SavedDebugExit) -> Result<(), StateError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::StopRequest;
    use crate::devices::persist::testing::{restores_identically, Step};

    #[test]
    fn a_restored_port_still_ends_the_vm() {
        let steps = [Step::Read(0, 1), Step::Write(0, vec![0x10])];
        let replies = restores_identically(&mut DebugExit, &mut DebugExit, &steps);
        assert_eq!(replies[1].1, Some(StopRequest::Exit(0x10)));
    }
}
