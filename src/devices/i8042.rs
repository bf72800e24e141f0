//! The i8042 keyboard controller at 0x60/0x64, from `vm-superio`: only what a guest
//! needs to reboot (command 0xFE), which stops the VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::{Access, BusDevice, StopRequest};

/// Set by the controller when the guest asks for a CPU reset.
#[derive(Debug, Default, Clone)]
struct ResetLine(Arc<AtomicBool>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// The controller on the bus.
#[derive(Debug)]
pub struct I8042 {
    controller: I8042Device<ResetLine>,
    reset: ResetLine,
}

impl Default for I8042 {
    fn default() -> Self {
        let reset = ResetLine::default();
        Self {
            controller: I8042Device::new(reset.clone()),
            reset,
        }
    }
}

impl BusDevice for I8042 {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match access {
            Access::Read(data) => data.fill(self.controller.read(offset as u8)),
            Access::Write(data) => {
                if let Some(&value) = data.first() {
                    let _ = self.controller.write(offset as u8, value);
                }
            }
        }
        self.reset
            .0
            .swap(false, Ordering::Relaxed)
            .then_some(StopRequest::Reset)
    }
}

mod state;
pub use state::SavedI8042;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_fe_requests_a_reset_and_others_do_not() {
        let mut device = I8042::default();
        assert_eq!(device.access(4, Access::Write(&[0xaa])), None);
        assert_eq!(device.access(0, Access::Write(&[0xfe])), None, "data port");
        assert_eq!(
            device.access(4, Access::Write(&[0xfe])),
            Some(StopRequest::Reset)
        );
        let mut status = [0xffu8];
        assert_eq!(device.access(4, Access::Read(&mut status)), None);
        assert_eq!(
            status[0] & 0x02,
            0,
            "input buffer empty: ready for a command"
        );
    }
}
