//! Feature negotiation and the status register's rules, as both transports (virtio-mmio
//! and virtio-pci's common configuration) implement them: the device offers 64 feature
//! bits through a 32-bit window chosen by a select register, the driver accepts some the
//! same way, and FEATURES_OK holds only if what it accepted is offered and includes
//! VERSION_1 (neither transport has a legacy interface).

use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET};

use super::VIRTIO_F_VERSION_1;

mod state;
pub use state::SavedFeatures;

/// The two feature windows and what the driver accepted so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Negotiation {
    device_select: u32,
    driver_select: u32,
    accepted: u64,
}

/// Word `select` (0: bits 0-31, 1: bits 32-63) of `features`; 0 past the second.
fn word(features: u64, select: u32) -> u32 {
    match select {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

impl Negotiation {
    pub fn device_select(&self) -> u32 {
        self.device_select
    }

    pub fn set_device_select(&mut self, select: u32) {
        self.device_select = select;
    }

    pub fn driver_select(&self) -> u32 {
        self.driver_select
    }

    pub fn set_driver_select(&mut self, select: u32) {
        self.driver_select = select;
    }

    /// The word of `offered` the device select points at.
    pub fn offered_word(&self, offered: u64) -> u32 {
        word(offered, self.device_select)
    }

    /// The word of the accepted features the driver select points at.
    pub fn accepted_word(&self) -> u32 {
        word(self.accepted, self.driver_select)
    }

    /// The driver writes the word its select points at (a select past the second word
    /// writes nothing).
    pub fn accept_word(&mut self, value: u32) {
        let value = u64::from(value);
        match self.driver_select {
            0 => self.accepted = (self.accepted & !0xffff_ffff) | value,
            1 => self.accepted = (self.accepted & 0xffff_ffff) | (value << 32),
            _ => {}
        }
    }

    /// Features the driver accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// The status after the driver writes `written` (not 0: that is a reset, the
    /// transport's to do) over `current`: FEATURES_OK is refused (left clear) when it
    /// is newly set and the accepted features are not a subset of `offered` including
    /// VERSION_1; NEEDS_RESET is the device's, which a driver clears only by a reset.
    pub fn status_after_write(&self, current: u32, written: u32, offered: u64) -> u32 {
        let mut value = written;
        let features_ok = VIRTIO_CONFIG_S_FEATURES_OK;
        if value & features_ok != 0 && current & features_ok == 0 {
            let acceptable =
                self.accepted & !offered == 0 && self.accepted & VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                value &= !features_ok;
            }
        }
        let needs_reset = VIRTIO_CONFIG_S_NEEDS_RESET;
        value & !needs_reset | current & needs_reset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERED: u64 = VIRTIO_F_VERSION_1 | 0b101;

    fn accepting(features: u64) -> Negotiation {
        let mut negotiation = Negotiation::default();
        for select in 0..2 {
            negotiation.set_driver_select(select);
            negotiation.accept_word(word(features, select));
        }
        negotiation
    }

    #[test]
    fn the_windows_show_the_selected_words() {
        let mut negotiation = accepting(OFFERED);
        assert_eq!(negotiation.accepted(), OFFERED);
        negotiation.set_device_select(1);
        assert_eq!(negotiation.offered_word(OFFERED), 1, "VERSION_1 is bit 32");
        negotiation.set_device_select(2);
        assert_eq!(negotiation.offered_word(OFFERED), 0);
        negotiation.set_driver_select(0);
        assert_eq!(negotiation.accepted_word(), 0b101);
        negotiation.set_driver_select(7);
        negotiation.accept_word(u32::MAX);
        assert_eq!(
            negotiation.accepted(),
            OFFERED,
            "a select past word 1 writes nothing"
        );
    }

    #[test]
    fn features_ok_needs_an_offered_subset_with_version_1() {
        let features_ok = VIRTIO_CONFIG_S_FEATURES_OK;
        let ok =
            |accepted: u64| accepting(accepted).status_after_write(3, 3 | features_ok, OFFERED);
        assert_eq!(ok(OFFERED), 3 | features_ok);
        assert_eq!(ok(VIRTIO_F_VERSION_1), 3 | features_ok);
        assert_eq!(ok(0b101), 3, "no VERSION_1");
        assert_eq!(ok(OFFERED | 0b10), 3, "bit 1 is not offered");
    }

    #[test]
    fn needs_reset_stays_until_a_reset() {
        let needs_reset = VIRTIO_CONFIG_S_NEEDS_RESET;
        let negotiation = accepting(OFFERED);
        assert_eq!(
            negotiation.status_after_write(0xf | needs_reset, 0xf, OFFERED),
            0xf | needs_reset
        );
        assert_eq!(
            negotiation.status_after_write(0xf, 0xf | needs_reset, OFFERED),
            0xf
        );
    }
}
