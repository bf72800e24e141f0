//! QEMU's fw_cfg, legacy I/O interface: a 16-bit selector at 0x510 and a byte-wide data
//! port at 0x511. Enough for guests written for QEMU (kvm-unit-tests among them) to find
//! the machine's size.

use std::collections::BTreeMap;

use crate::bus::{Access, BusDevice, StopRequest};

/// Item keys.
pub mod key {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NB_CPUS: u16 = 0x05;
    pub const MAX_CPUS: u16 = 0x0f;
    /// kvm-unit-tests' FW_CFG_MAX_RAM: memory above 4 GiB that may be hot-added.
    pub const MAX_RAM: u16 = 0x11;
}

/// ID bit 0: the traditional (non-DMA) interface.
const FEATURE_TRADITIONAL: u32 = 1;

/// The device: items by key, the selected item and the read position in it.
#[derive(Debug)]
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    selected: u16,
    position: usize,
}

impl FwCfg {
    /// The items of a machine with `ram_bytes` of RAM and `cpus` vCPUs.
    pub fn new(ram_bytes: u64, cpus: u16) -> Self {
        let items = BTreeMap::from([
            (key::SIGNATURE, b"QEMU".to_vec()),
            (key::ID, FEATURE_TRADITIONAL.to_le_bytes().to_vec()),
            (key::RAM_SIZE, ram_bytes.to_le_bytes().to_vec()),
            (key::NB_CPUS, cpus.to_le_bytes().to_vec()),
            (key::MAX_CPUS, cpus.to_le_bytes().to_vec()),
            (key::MAX_RAM, 0u64.to_le_bytes().to_vec()),
        ]);
        Self {
            items,
            selected: 0,
            position: 0,
        }
    }

    fn next_byte(&mut self) -> u8 {
        let byte = self
            .items
            .get(&self.selected)
            .and_then(|item| item.get(self.position))
            .copied()
            .unwrap_or(0);
        self.position = self.position.saturating_add(1);
        byte
    }
}

impl BusDevice for FwCfg {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match (offset, access) {
            (0, access @ Access::Write(_)) => {
                self.selected = access.write_value() as u16;
                self.position = 0;
            }
            (1, Access::Read(data)) => data.iter_mut().for_each(|b| *b = self.next_byte()),
            (_, Access::Read(data)) => data.fill(0),
            // Writes to the data port are ignored, as on QEMU since 2.4.
            (_, Access::Write(_)) => {}
        }
        None
    }
}

mod state;
pub use state::SavedFwCfg;

#[cfg(test)]
mod tests {
    use super::*;

    fn read_item(device: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        device.access(0, Access::Write(&key.to_le_bytes()));
        (0..len)
            .map(|_| {
                let mut byte = [0u8];
                device.access(1, Access::Read(&mut byte));
                byte[0]
            })
            .collect()
    }

    #[test]
    fn items_read_back_little_endian() {
        let mut device = FwCfg::new(64 << 20, 2);
        assert_eq!(read_item(&mut device, key::SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut device, key::ID, 4), [1, 0, 0, 0]);
        assert_eq!(
            read_item(&mut device, key::RAM_SIZE, 8),
            (64u64 << 20).to_le_bytes()
        );
        assert_eq!(read_item(&mut device, key::NB_CPUS, 2), [2, 0]);
        assert_eq!(read_item(&mut device, key::MAX_CPUS, 2), [2, 0]);
        assert_eq!(read_item(&mut device, key::MAX_RAM, 8), [0; 8]);
    }

    #[test]
    fn unknown_keys_and_reads_past_the_end_give_zero() {
        let mut device = FwCfg::new(1 << 20, 1);
        assert_eq!(read_item(&mut device, 0x1234, 3), [0, 0, 0]);
        assert_eq!(read_item(&mut device, key::SIGNATURE, 6), b"QEMU\0\0");
    }

    #[test]
    fn a_byte_write_selects_a_key_and_a_data_write_is_ignored() {
        let mut device = FwCfg::new(1 << 20, 1);
        device.access(0, Access::Write(&[key::NB_CPUS as u8]));
        device.access(1, Access::Write(&[9]));
        let mut data = [0u8; 2];
        device.access(1, Access::Read(&mut data));
        assert_eq!(data, [1, 0]);
    }
}
