//! The POST code port's saved state: the last code written.

use serde::{Deserialize, Serialize};

use super::PostCode;
use crate::devices::persist::{Persist, StateError};

/// What [`PostCode`] saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPostCode {
    pub last: u8,
}

impl Persist for PostCode {
    const KIND: &'static str = "post-code";
    const VERSION: u32 = 1;
    type State = SavedPostCode;

    fn save(&self) -> SavedPostCode {
        SavedPostCode { last: self.last }
    }

    fn restore(&mut self, state: &SavedPostCode) -> Result<(), StateError> {
        self.last = state.last;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::persist::testing::{restores_identically, run, Step};

    #[test]
    fn the_last_code_survives() {
        let mut port = PostCode::default();
        run(&mut port, &[Step::Write(0, vec![0x42])]);
        let mut fresh = PostCode::default();
        let replies = restores_identically(&mut port, &mut fresh, &[Step::Read(0, 1)]);
        assert_eq!(replies[0].0, [0xff]);
        assert_eq!(fresh.last, 0x42);
    }
}
