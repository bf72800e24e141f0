//! The i8042's saved state, which is empty: `vm-superio`'s controller keeps nothing but
//! its reset trigger, and every register reads the same at any time. It is still a
//! [`Persist`] device, so a snapshot lists it and a later controller with state has a
//! version to move on from.

use serde::{Deserialize, Serialize};

use super::I8042;
use crate::devices::persist::{Persist, StateError};

/// What the [`I8042`] saves: nothing yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedI8042 {}

impl Persist for I8042 {
    const KIND: &'static str = "i8042";
    const VERSION: u32 = 1;
    type State = SavedI8042;

    fn save(&self) -> SavedI8042 {
        SavedI8042 {}
    }

    fn restore(&mut self, _state: &SavedI8042) -> Result<(), StateError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::StopRequest;
    use crate::devices::persist::testing::{restores_identically, Step};

    #[test]
    fn a_restored_controller_reads_the_same_and_still_resets() {
        let mut device = I8042::default();
        let mut fresh = I8042::default();
        let steps = [
            Step::Read(4, 1),
            Step::Read(0, 1),
            Step::Write(4, vec![0xfe]),
        ];
        let replies = restores_identically(&mut device, &mut fresh, &steps);
        assert_eq!(replies[2].1, Some(StopRequest::Reset));
    }
}
