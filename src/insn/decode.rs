//! Decoding the few instructions hushvm completes: legacy prefixes, REX, the opcode, and
//! for the memory forms ModRM, SIB, displacement and RIP-relative addressing. Anything
//! else is refused with the reason, so no unknown byte is ever guessed at.

use super::InsnError;

/// The longest x86 instruction.
pub const MAX_LENGTH: usize = 15;

/// The CPU mode the bytes are decoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 64-bit code (EFER.LMA and CS.L): the kernel's mode, where memory forms are decoded.
    Long64,
    /// Any other mode: only the instructions without a memory operand are decoded.
    Other,
}

/// A segment override prefix that matters in 64-bit mode (the others have base 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Fs,
    Gs,
}

/// A memory operand's address, before the segment base and the registers are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemOperand {
    /// The base register (0-15), if any.
    pub base: Option<u8>,
    /// The index register (0-15) and its scale (1, 2, 4, 8), if any.
    pub index: Option<(u8, u8)>,
    pub displacement: i64,
    /// RIP-relative: the displacement is from the next instruction.
    pub rip_relative: bool,
    pub segment: Option<Segment>,
}

/// The instructions in the closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Int3,
    Int(u8),
    Fwait,
    Clac,
    Stac,
    /// FXSAVE (`wide`: FXSAVE64, REX.W).
    Fxsave {
        wide: bool,
    },
    /// FXRSTOR (`wide`: FXRSTOR64, REX.W).
    Fxrstor {
        wide: bool,
    },
    Ldmxcsr,
    Stmxcsr,
}

impl Opcode {
    /// The name the profile counts it under.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Int3 => "int3",
            Opcode::Int(_) => "int",
            Opcode::Fwait => "fwait",
            Opcode::Clac => "clac",
            Opcode::Stac => "stac",
            Opcode::Fxsave { wide: false } => "fxsave",
            Opcode::Fxsave { wide: true } => "fxsave64",
            Opcode::Fxrstor { wide: false } => "fxrstor",
            Opcode::Fxrstor { wide: true } => "fxrstor64",
            Opcode::Ldmxcsr => "ldmxcsr",
            Opcode::Stmxcsr => "stmxcsr",
        }
    }

    /// True if it reads or writes the x87/SSE state.
    pub fn uses_fpu(self) -> bool {
        matches!(
            self,
            Opcode::Fxsave { .. } | Opcode::Fxrstor { .. } | Opcode::Ldmxcsr | Opcode::Stmxcsr
        )
    }
}

/// A decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    pub opcode: Opcode,
    /// Its length in bytes: RIP moves by this much when it completes.
    pub length: u8,
    /// Its memory operand, for the forms that have one.
    pub memory: Option<MemOperand>,
}

/// The prefixes before the opcode.
#[derive(Debug, Default)]
struct Prefixes {
    segment: Option<Segment>,
    /// 0x66, 0xF2 or 0xF3: they turn 0F AE into other instructions, so they are refused.
    mandatory: Option<u8>,
    rex: u8,
}

/// A cursor over the instruction's bytes.
struct Bytes<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn next(&mut self) -> Result<u8, InsnError> {
        let byte = *self
            .bytes
            .get(self.at)
            .filter(|_| self.at < MAX_LENGTH)
            .ok_or(InsnError::Truncated)?;
        self.at += 1;
        Ok(byte)
    }

    fn displacement(&mut self, size: usize) -> Result<i64, InsnError> {
        let mut raw = [0u8; 4];
        for byte in raw.iter_mut().take(size) {
            *byte = self.next()?;
        }
        Ok(match size {
            1 => i64::from(raw[0] as i8),
            _ => i64::from(i32::from_le_bytes(raw)),
        })
    }
}

/// Decodes the instruction at the start of `bytes` (which may hold more).
pub fn decode(bytes: &[u8], mode: Mode) -> Result<Instruction, InsnError> {
    let mut cursor = Bytes { bytes, at: 0 };
    let prefixes = read_prefixes(&mut cursor, mode)?;
    let first = cursor.next()?;
    let (opcode, memory) = match first {
        0xcc => (Opcode::Int3, None),
        0xcd => (Opcode::Int(cursor.next()?), None),
        0x9b => (Opcode::Fwait, None),
        0x0f => decode_0f(&mut cursor, &prefixes, mode)?,
        _ => return Err(InsnError::NotInSet),
    };
    if prefixes.mandatory.is_some() || (memory.is_none() && prefixes.rex != 0) {
        return Err(InsnError::NotInSet);
    }
    Ok(Instruction {
        opcode,
        length: cursor.at as u8,
        memory,
    })
}

fn read_prefixes(cursor: &mut Bytes<'_>, mode: Mode) -> Result<Prefixes, InsnError> {
    let mut prefixes = Prefixes::default();
    loop {
        let Some(&byte) = cursor.bytes.get(cursor.at) else {
            return Err(InsnError::Truncated);
        };
        match byte {
            // CS, SS, DS, ES overrides: base 0 in 64-bit mode, so they change nothing.
            0x2e | 0x36 | 0x3e | 0x26 => {}
            0x64 => prefixes.segment = Some(Segment::Fs),
            0x65 => prefixes.segment = Some(Segment::Gs),
            0x66 | 0xf2 | 0xf3 => prefixes.mandatory = Some(byte),
            // LOCK, and 0x67 (32-bit addresses), never occur in the kernel's forms.
            0xf0 | 0x67 => return Err(InsnError::NotInSet),
            0x40..=0x4f if mode == Mode::Long64 => {
                cursor.at += 1;
                prefixes.rex = byte;
                return Ok(prefixes);
            }
            _ => return Ok(prefixes),
        }
        cursor.at += 1;
    }
}

fn decode_0f(
    cursor: &mut Bytes<'_>,
    prefixes: &Prefixes,
    mode: Mode,
) -> Result<(Opcode, Option<MemOperand>), InsnError> {
    match cursor.next()? {
        0x01 => match cursor.next()? {
            0xca => Ok((Opcode::Clac, None)),
            0xcb => Ok((Opcode::Stac, None)),
            _ => Err(InsnError::NotInSet),
        },
        0xae => {
            let modrm = cursor.next()?;
            // mod == 3 is LFENCE/MFENCE/SFENCE or, with F3, RDFSBASE and friends.
            if modrm >> 6 == 3 || mode != Mode::Long64 {
                return Err(InsnError::NotInSet);
            }
            let wide = prefixes.rex & 0x08 != 0;
            let opcode = match (modrm >> 3) & 7 {
                0 => Opcode::Fxsave { wide },
                1 => Opcode::Fxrstor { wide },
                2 if !wide => Opcode::Ldmxcsr,
                3 if !wide => Opcode::Stmxcsr,
                _ => return Err(InsnError::NotInSet),
            };
            let mut memory = memory_operand(cursor, modrm, prefixes.rex)?;
            memory.segment = prefixes.segment;
            Ok((opcode, Some(memory)))
        }
        _ => Err(InsnError::NotInSet),
    }
}

/// The memory operand of a ModRM byte whose mod is 0, 1 or 2, in 64-bit mode.
fn memory_operand(cursor: &mut Bytes<'_>, modrm: u8, rex: u8) -> Result<MemOperand, InsnError> {
    let (mode, rm) = (modrm >> 6, modrm & 7);
    let rex_b = (rex & 1) << 3;
    let mut operand = MemOperand {
        base: None,
        index: None,
        displacement: 0,
        rip_relative: false,
        segment: None,
    };
    let mut displacement_size = match mode {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = cursor.next()?;
        let (scale, index, base) = (1u8 << (sib >> 6), (sib >> 3) & 7, sib & 7);
        let index = index | ((rex & 2) << 2);
        // Index 4 without REX.X means no index.
        if index != 4 {
            operand.index = Some((index, scale));
        }
        if base == 5 && mode == 0 {
            displacement_size = 4;
        } else {
            operand.base = Some(base | rex_b);
        }
    } else if rm == 5 && mode == 0 {
        operand.rip_relative = true;
        displacement_size = 4;
    } else {
        operand.base = Some(rm | rex_b);
    }
    operand.displacement = match displacement_size {
        0 => 0,
        size => cursor.displacement(size)?,
    };
    Ok(operand)
}
