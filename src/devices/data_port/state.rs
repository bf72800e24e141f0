//! The data port's saved state: the bytes it holds.

use serde::{Deserialize, Serialize};

use super::{DataPort, DATA_PORT_CAPACITY};
use crate::devices::persist::{check_len, Persist, StateError};

/// What a [`DataPort`] saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDataPort {
    /// Bytes written and not read yet, oldest first.
    pub queued: Vec<u8>,
}

impl Persist for DataPort {
    const KIND: &'static str = "data-port";
    const VERSION: u32 = 1;
    type State = SavedDataPort;

    fn save(&self) -> SavedDataPort {
        SavedDataPort {
            queued: self.queued.iter().copied().collect(),
        }
    }

    fn restore(&mut self, state: &SavedDataPort) -> Result<(), StateError> {
        check_len(Self::KIND, "queued", state.queued.len(), DATA_PORT_CAPACITY)?;
        self.queued = state.queued.iter().copied().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{COMMAND, DATA, STATUS_DRQ};
    use super::*;
    use crate::devices::persist::testing::{restores_identically, run, Step};

    #[test]
    fn queued_bytes_survive_and_too_many_are_refused() {
        let mut port = DataPort::default();
        run(
            &mut port,
            &[Step::Write(DATA, vec![1, 2, 3, 4, 5]), Step::Read(DATA, 2)],
        );
        let mut fresh = DataPort::default();
        let steps = [
            Step::Read(COMMAND, 1),
            Step::Read(DATA, 4),
            Step::Read(COMMAND, 1),
        ];
        let replies = restores_identically(&mut port, &mut fresh, &steps);
        assert_eq!(replies[0].0, [STATUS_DRQ]);
        assert_eq!(replies[1].0, [3, 4, 5, 0]);
        assert_eq!(replies[2].0, [0]);
        let too_many = SavedDataPort {
            queued: vec![0; DATA_PORT_CAPACITY + 1],
        };
        assert!(matches!(
            fresh.restore(&too_many),
            Err(StateError::Invalid { .. })
        ));
    }
}
