//! A vCPU exit as hushvm sees it: already decoded by KVM (seed 004), with no KVM types,
//! so the exit path can be driven by hand in tests and from recorded traces.

use crate::bus::Access;

/// One exit from `KVM_RUN` to userspace.
#[derive(Debug)]
pub enum VmExit<'a> {
    /// Port I/O: `access` holds `count` elements of `size` bytes (count > 1 for `rep ins`
    /// and `rep outs`).
    Io {
        /// The port.
        port: u16,
        /// Bytes per element: 1, 2 or 4.
        size: u8,
        /// Direction and data.
        access: Access<'a>,
    },
    /// Memory-mapped I/O outside guest RAM.
    Mmio {
        /// Guest physical address.
        addr: u64,
        /// Direction and data (1 to 8 bytes).
        access: Access<'a>,
    },
    /// `HLT` that KVM did not handle itself.
    Halt,
    /// The guest shut down: a triple fault.
    Shutdown,
    /// KVM could not emulate or handle something.
    InternalError {
        /// KVM_INTERNAL_ERROR_* code.
        suberror: u32,
    },
    /// VM entry failed.
    FailEntry {
        /// Hardware's reason code.
        reason: u64,
    },
    /// `KVM_RUN` returned early: a signal (for instance our timeout kick).
    Interrupted,
    /// A PSCI-style system event (shutdown, reset, crash).
    SystemEvent {
        /// KVM_SYSTEM_EVENT_* code.
        kind: u32,
    },
    /// An exit hushvm does not handle.
    Unexpected {
        /// KVM_EXIT_* code.
        reason: u32,
    },
}
