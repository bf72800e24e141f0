//! Feature negotiation's saved state: both select registers and what the driver
//! accepted (which may include bits the device never offered: FEATURES_OK refuses
//! those, and a driver may write them before it tries).

use serde::{Deserialize, Serialize};

use super::Negotiation;

/// What a [`Negotiation`] saves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFeatures {
    pub device_select: u32,
    pub driver_select: u32,
    pub accepted: u64,
}

impl Negotiation {
    /// The negotiation's state now.
    pub fn save_state(&self) -> SavedFeatures {
        SavedFeatures {
            device_select: self.device_select,
            driver_select: self.driver_select,
            accepted: self.accepted,
        }
    }

    /// Any saved negotiation is one a driver can reach, so this cannot fail.
    pub fn restored(state: &SavedFeatures) -> Self {
        Self {
            device_select: state.device_select,
            driver_select: state.driver_select,
            accepted: state.accepted,
        }
    }
}
