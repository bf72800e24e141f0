//! Port 0x80, where firmware and kernels write POST codes or just delay: accepted and
//! ignored, so it is neither counted nor warned about as unclaimed.

use crate::bus::{Access, BusDevice, StopRequest};

/// The POST code port.
#[derive(Debug, Default)]
pub struct PostCode {
    /// The last code written, for tests and debugging.
    pub last: u8,
}

impl BusDevice for PostCode {
    fn access(&mut self, _offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match access {
            Access::Read(data) => data.fill(0xff),
            Access::Write(data) => self.last = data.first().copied().unwrap_or(0),
        }
        None
    }
}

mod state;
pub use state::SavedPostCode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_kept_and_reads_float() {
        let mut port = PostCode::default();
        assert_eq!(port.access(0, Access::Write(&[0x42])), None);
        assert_eq!(port.last, 0x42);
        let mut data = [0u8];
        port.access(0, Access::Read(&mut data));
        assert_eq!(data, [0xff]);
    }
}
