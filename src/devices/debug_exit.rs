//! isa-debug-exit, with QEMU's convention: a write of v ends the VM, and the VMM exits
//! with status (v << 1) | 1.

use crate::bus::{Access, BusDevice, StopRequest};

/// QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=4`.
#[derive(Debug, Default)]
pub struct DebugExit;

impl BusDevice for DebugExit {
    fn access(&mut self, _offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match access {
            Access::Read(data) => {
                data.fill(0);
                None
            }
            Access::Write(_) => Some(StopRequest::Exit(access.write_value() as u32)),
        }
    }
}

mod state;
pub use state::SavedDebugExit;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_requests_exit_with_the_value() {
        let mut device = DebugExit;
        assert_eq!(
            device.access(0, Access::Write(&[0x10])),
            Some(StopRequest::Exit(0x10))
        );
        assert_eq!(
            device.access(0, Access::Write(&[0x34, 0x12])),
            Some(StopRequest::Exit(0x1234))
        );
        let mut data = [0xaa];
        assert_eq!(device.access(0, Access::Read(&mut data)), None);
        assert_eq!(data, [0]);
    }
}
