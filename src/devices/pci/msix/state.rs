//! MSI-X's saved state: message control's enable and function-mask bits, the vector
//! table and the pending bits. The layout (vectors, BARs, offsets) is the function's
//! build; the sink is the machine's wiring, told every vector's effective state again
//! when a state is restored.

use serde::{Deserialize, Serialize};

use super::{Entry, MsixState, MSIX_ENABLE, MSIX_FUNCTION_MASK, VECTOR_MASKED};
use crate::devices::persist::{check_bits, StateError};

const KIND: &str = "msix";

/// One table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMsixEntry {
    pub address: u64,
    pub data: u32,
    /// Vector control's mask bit (the only writable one).
    pub masked: bool,
}

/// What an [`MsixState`] saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMsix {
    /// Message control's enable and function-mask bits.
    pub control: u16,
    pub entries: Vec<SavedMsixEntry>,
    /// The pending-bit array, 64 vectors a word.
    pub pending: Vec<u64>,
}

impl MsixState {
    /// The table's state now.
    pub fn save_state(&self) -> SavedMsix {
        SavedMsix {
            control: self.control,
            entries: self
                .entries
                .iter()
                .map(|entry| SavedMsixEntry {
                    address: entry.address,
                    data: entry.data,
                    masked: entry.control & VECTOR_MASKED != 0,
                })
                .collect(),
            pending: self.pending.clone(),
        }
    }

    /// Takes `state`, checking all of it first (on an error nothing changes), then tells
    /// the sink each vector's effective state, as after the guest's own writes: an
    /// unmasked vector is programmed, and a pending bit on one is delivered.
    pub fn restore_state(&mut self, state: &SavedMsix) -> Result<(), StateError> {
        self.check_state(state)?;
        self.control = state.control;
        for (entry, saved) in self.entries.iter_mut().zip(&state.entries) {
            *entry = Entry {
                address: saved.address,
                data: saved.data,
                control: if saved.masked { VECTOR_MASKED } else { 0 },
            };
        }
        self.pending.copy_from_slice(&state.pending);
        for vector in 0..self.layout.vectors {
            self.update(vector);
        }
        Ok(())
    }

    /// Whether [`MsixState::restore_state`] would take `state`: a function restoring
    /// several parts checks them all before it changes any.
    pub fn check_state(&self, state: &SavedMsix) -> Result<(), StateError> {
        let allowed = u64::from(MSIX_ENABLE | MSIX_FUNCTION_MASK);
        check_bits(KIND, "control", u64::from(state.control), allowed)?;
        let vectors = usize::from(self.layout.vectors);
        if state.entries.len() != vectors || state.pending.len() != self.pending.len() {
            return Err(StateError::invalid(
                KIND,
                format!(
                    "{} entries and {} pending words, but this table has {vectors} and {}",
                    state.entries.len(),
                    state.pending.len(),
                    self.pending.len()
                ),
            ));
        }
        // Bits past the last vector do not exist.
        let tail = vectors % 64;
        let last = state.pending.last().copied().unwrap_or(0);
        if tail != 0 && last >> tail != 0 {
            let reason = format!("pending bits {last:#x} past vector {}", vectors - 1);
            return Err(StateError::invalid(KIND, reason));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
