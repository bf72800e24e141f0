//! The 512-byte FXSAVE area (Intel SDM vol. 1, 10.5.1), to and from [`FpuState`].

use super::FpuState;

/// The area's size; FXSAVE and FXRSTOR need it 16-byte aligned.
pub const AREA_SIZE: usize = 512;

/// The MXCSR bits this VMM's guests may set (MXCSR_MASK, as the CPUs KVM runs on report
/// it with DAZ): FXRSTOR and LDMXCSR raise #GP for any other.
pub const MXCSR_MASK: u32 = 0xffff;

/// The FXSAVE image of `fpu`. `wide` (FXSAVE64) stores 64-bit FPU instruction and data
/// pointers; the legacy form stores their low 32 bits and zero selectors.
pub fn save(fpu: &FpuState, wide: bool) -> [u8; AREA_SIZE] {
    let mut area = [0u8; AREA_SIZE];
    area[0..2].copy_from_slice(&fpu.fcw.to_le_bytes());
    area[2..4].copy_from_slice(&fpu.fsw.to_le_bytes());
    area[4] = fpu.ftw;
    area[6..8].copy_from_slice(&fpu.fop.to_le_bytes());
    if wide {
        area[8..16].copy_from_slice(&fpu.fip.to_le_bytes());
        area[16..24].copy_from_slice(&fpu.fdp.to_le_bytes());
    } else {
        area[8..12].copy_from_slice(&(fpu.fip as u32).to_le_bytes());
        area[16..20].copy_from_slice(&(fpu.fdp as u32).to_le_bytes());
    }
    area[24..28].copy_from_slice(&fpu.mxcsr.to_le_bytes());
    area[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for (i, register) in fpu.st.iter().enumerate() {
        area[32 + 16 * i..48 + 16 * i].copy_from_slice(register);
    }
    for (i, register) in fpu.xmm.iter().enumerate() {
        area[160 + 16 * i..176 + 16 * i].copy_from_slice(register);
    }
    area
}

/// The state an FXRSTOR of `area` loads, or `None` if its MXCSR sets a reserved bit
/// (the CPU's #GP).
pub fn restore(area: &[u8; AREA_SIZE], wide: bool) -> Option<FpuState> {
    let u16_at = |at: usize| u16::from_le_bytes([area[at], area[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(area[at..at + 4].try_into().unwrap_or_default());
    let u64_at = |at: usize| u64::from_le_bytes(area[at..at + 8].try_into().unwrap_or_default());
    let mxcsr = u32_at(24);
    if mxcsr & !MXCSR_MASK != 0 {
        return None;
    }
    let (fip, fdp) = if wide {
        (u64_at(8), u64_at(16))
    } else {
        (u64::from(u32_at(8)), u64::from(u32_at(16)))
    };
    let mut fpu = FpuState {
        fcw: u16_at(0),
        fsw: u16_at(2),
        ftw: area[4],
        fop: u16_at(6),
        fip,
        fdp,
        mxcsr,
        ..FpuState::default()
    };
    for (i, register) in fpu.st.iter_mut().enumerate() {
        register.copy_from_slice(&area[32 + 16 * i..48 + 16 * i]);
    }
    for (i, register) in fpu.xmm.iter_mut().enumerate() {
        register.copy_from_slice(&area[160 + 16 * i..176 + 16 * i]);
    }
    Some(fpu)
}
