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
        /// The failed instruction's bytes, when KVM reported them (an emulation failure
        /// with KVM_CAP_EXIT_ON_EMULATION_FAILURE).
        instruction: Option<InstructionBytes>,
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

/// KVM_INTERNAL_ERROR_EMULATION: the emulator met an instruction it cannot execute.
pub const SUBERROR_EMULATION: u32 = 1;

/// Up to 15 bytes of an instruction, as KVM reports them or as read from the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstructionBytes {
    bytes: [u8; 15],
    len: u8,
}

impl InstructionBytes {
    /// The first 15 bytes of `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        let len = bytes.len().min(15);
        let mut stored = [0u8; 15];
        stored[..len].copy_from_slice(&bytes[..len]);
        Self {
            bytes: stored,
            len: len as u8,
        }
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Display for InstructionBytes {
    /// `0f ae 50 18`, or `none` when no byte could be read.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.len == 0 {
            return write!(f, "none");
        }
        for (i, byte) in self.as_slice().iter().enumerate() {
            let separator = if i == 0 { "" } else { " " };
            write!(f, "{separator}{byte:02x}")?;
        }
        Ok(())
    }
}
