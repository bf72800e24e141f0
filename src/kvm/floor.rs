//! The floor of the `rtc` benchmark: the smallest exit loop that can serve the rtc
//! guest (an RTC index and 128 bytes of NVRAM, COM1 output collected in memory,
//! isa-debug-exit), with no buses, devices or profiler. It lives here because matching
//! kvm-ioctls' exits directly, with nothing in between, is what makes it a floor; the
//! `hushvm-floor` binary (bench/floor.rs) drives it.

use kvm_ioctls::VcpuExit;

use super::{ioctl_error, KvmError, KvmRing, Vcpu};
use crate::layout::ports;
use crate::posted::PostedWriteRing;

/// How the floor loop ended.
#[derive(Debug)]
pub struct FloorRun {
    /// `(v << 1) | 1` for a debug-exit write of v, as hushvm reports it.
    pub status: u8,
    /// What the guest wrote to COM1.
    pub serial: Vec<u8>,
}

/// Runs `vcpu` until the guest writes the debug-exit port; `ring` is the coalesced ring
/// when the RTC index port was registered as a posted zone.
pub fn run_rtc_floor(vcpu: &mut Vcpu, ring: Option<&KvmRing>) -> Result<FloorRun, KvmError> {
    let mut index = 0usize;
    let mut nvram = [0u8; 128];
    let mut serial = Vec::new();
    loop {
        let exit = vcpu.fd.run().map_err(ioctl_error("KVM_RUN"))?;
        if let Some(ring) = ring {
            while let Some(write) = ring.pop() {
                index = usize::from(write.data[0] & 0x7f);
            }
        }
        match exit {
            VcpuExit::IoOut(ports::RTC, data) => index = usize::from(data[0] & 0x7f),
            VcpuExit::IoOut(0x71, data) => nvram[index] = data[0],
            VcpuExit::IoIn(0x71, data) => data[0] = nvram[index],
            VcpuExit::IoOut(ports::COM1, data) => serial.push(data[0]),
            VcpuExit::IoOut(ports::DEBUG_EXIT, data) => {
                return Ok(FloorRun {
                    status: (data[0] << 1) | 1,
                    serial,
                })
            }
            VcpuExit::IoIn(_, data) => data.fill(0xff),
            VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..) => {}
            VcpuExit::MmioRead(_, data) => data.fill(0xff),
            _ => return Err(KvmError::UnexpectedFloorExit),
        }
    }
}
