//! Completing the few instructions this host's KVM cannot emulate (issue 16).
//!
//! The rule: an instruction is completed here only if its whole effect is architectural
//! and local to the vCPU (its registers, its x87/SSE state, its own memory operand, an
//! event delivered to itself) and this host's emulator has been seen to fail on it while
//! booting Linux. The set is closed ([`Opcode`]); everything else is refused and the VM
//! stops as before. This is no general emulator: there is no arithmetic, no flags logic,
//! no I/O and no control flow other than delivering an interrupt or an exception.
//!
//! No KVM here: the vCPU's state is plain data and guest memory is behind
//! [`GuestMemory`], so every instruction is tested on hand-built bytes.

mod decode;
mod fxsave;
mod memory;
#[cfg(test)]
mod tests;

use thiserror::Error;

pub use decode::{decode, Instruction, MemOperand, Mode, Opcode, Segment, MAX_LENGTH};
pub use fxsave::{AREA_SIZE as FXSAVE_AREA_SIZE, MXCSR_MASK};
pub use memory::{read_virtual_prefix, GuestMemory, Translation};

/// RFLAGS.AC, which CLAC clears and STAC sets.
pub const RFLAGS_AC: u64 = 1 << 18;

/// Why an instruction was not completed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InsnError {
    #[error("the instruction is not one hushvm completes")]
    NotInSet,
    #[error("the instruction's bytes end early")]
    Truncated,
    #[error("its operand at {address:#x} is not mapped")]
    Unmapped { address: u64 },
    #[error("its operand at {address:#x} is read-only")]
    ReadOnly { address: u64 },
    #[error("its operand's page at {physical:#x} is not RAM")]
    NotRam { physical: u64 },
}

/// The general registers and the few control bits the completed instructions use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registers {
    /// RAX..R15 in encoding order.
    pub gprs: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub fs_base: u64,
    pub gs_base: u64,
}

/// The x87 and SSE state, as KVM_GET_FPU gives it (`ftw` is the abridged tag byte).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FpuState {
    pub fcw: u16,
    pub fsw: u16,
    pub ftw: u8,
    pub fop: u16,
    pub fip: u64,
    pub fdp: u64,
    pub mxcsr: u32,
    pub st: [[u8; 16]; 8],
    pub xmm: [[u8; 16]; 16],
}

/// What delivering the instruction's event asks of the vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Nothing: the instruction completed.
    None,
    /// An exception (a trap like #BP, after RIP moved; or a fault like #GP, RIP left at
    /// the instruction).
    Exception { vector: u8, error_code: Option<u32> },
    /// A software interrupt (INT n), after RIP moved.
    SoftwareInterrupt { vector: u8 },
}

/// #BP, the vector INT3 raises.
pub const VECTOR_BP: u8 = 3;
/// #GP.
pub const VECTOR_GP: u8 = 13;

const GP0: Event = Event::Exception {
    vector: VECTOR_GP,
    error_code: Some(0),
};

/// Completes `insn` on `registers` (and `fpu` for the instructions that use it, see
/// [`Opcode::uses_fpu`]). On success RIP has moved past it unless the event is a fault.
pub fn complete(
    insn: &Instruction,
    registers: &mut Registers,
    fpu: &mut FpuState,
    memory: &mut dyn GuestMemory,
) -> Result<Event, InsnError> {
    let next_rip = registers.rip.wrapping_add(u64::from(insn.length));
    let address = insn
        .memory
        .map(|operand| effective_address(&operand, registers, next_rip));
    let event = match (insn.opcode, address) {
        (Opcode::Int3, _) => Event::Exception {
            vector: VECTOR_BP,
            error_code: None,
        },
        (Opcode::Int(vector), _) => Event::SoftwareInterrupt { vector },
        // With CR0.TS clear and no pending x87 exception (the kernel masks them), FWAIT
        // does nothing.
        (Opcode::Fwait, _) => Event::None,
        (Opcode::Clac, _) => {
            registers.rflags &= !RFLAGS_AC;
            Event::None
        }
        (Opcode::Stac, _) => {
            registers.rflags |= RFLAGS_AC;
            Event::None
        }
        (Opcode::Ldmxcsr, Some(address)) => {
            let mut value = [0u8; 4];
            memory::read_virtual(memory, address, &mut value)?;
            let value = u32::from_le_bytes(value);
            if value & !MXCSR_MASK != 0 {
                return Ok(GP0);
            }
            fpu.mxcsr = value;
            Event::None
        }
        (Opcode::Stmxcsr, Some(address)) => {
            memory::write_virtual(memory, address, &fpu.mxcsr.to_le_bytes())?;
            Event::None
        }
        (Opcode::Fxsave { wide }, Some(address)) => {
            if address % 16 != 0 {
                return Ok(GP0);
            }
            memory::write_virtual(memory, address, &fxsave::save(fpu, wide))?;
            Event::None
        }
        (Opcode::Fxrstor { wide }, Some(address)) => {
            if address % 16 != 0 {
                return Ok(GP0);
            }
            let mut area = [0u8; FXSAVE_AREA_SIZE];
            memory::read_virtual(memory, address, &mut area)?;
            let Some(restored) = fxsave::restore(&area, wide) else {
                return Ok(GP0);
            };
            *fpu = restored;
            Event::None
        }
        // The decoder gives every memory form its operand.
        (_, None) => return Err(InsnError::NotInSet),
    };
    registers.rip = next_rip;
    Ok(event)
}

/// The operand's linear address: segment base + base + index * scale + displacement.
fn effective_address(operand: &MemOperand, registers: &Registers, next_rip: u64) -> u64 {
    let register = |n: u8| registers.gprs[usize::from(n & 15)];
    let mut address = operand.displacement as u64;
    if operand.rip_relative {
        address = address.wrapping_add(next_rip);
    }
    if let Some(base) = operand.base {
        address = address.wrapping_add(register(base));
    }
    if let Some((index, scale)) = operand.index {
        address = address.wrapping_add(register(index).wrapping_mul(u64::from(scale)));
    }
    match operand.segment {
        Some(Segment::Fs) => address.wrapping_add(registers.fs_base),
        Some(Segment::Gs) => address.wrapping_add(registers.gs_base),
        None => address,
    }
}
