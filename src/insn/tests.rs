//! The completer on hand-built bytes, registers and page tables; no KVM.

use std::collections::BTreeMap;

use super::*;

const PAGE: u64 = 4096;

/// Guest memory with a page table of its own: virtual page -> (physical page, writable).
#[derive(Default)]
struct FakeMemory {
    pages: BTreeMap<u64, (u64, bool)>,
    ram: Vec<u8>,
}

impl FakeMemory {
    fn new() -> Self {
        Self {
            pages: BTreeMap::new(),
            ram: vec![0; 16 * PAGE as usize],
        }
    }

    fn map(mut self, virtual_page: u64, physical_page: u64, writable: bool) -> Self {
        self.pages.insert(virtual_page, (physical_page, writable));
        self
    }

    fn physical(&self, at: u64, len: usize) -> &[u8] {
        &self.ram[at as usize..at as usize + len]
    }
}

impl GuestMemory for FakeMemory {
    fn translate(&mut self, virtual_address: u64) -> Option<Translation> {
        let (physical, writable) = *self.pages.get(&(virtual_address & !(PAGE - 1)))?;
        Some(Translation {
            physical: physical + virtual_address % PAGE,
            writable,
        })
    }

    fn read_physical(&mut self, physical: u64, buf: &mut [u8]) -> bool {
        let at = physical as usize;
        match self.ram.get(at..at + buf.len()) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    fn write_physical(&mut self, physical: u64, data: &[u8]) -> bool {
        let at = physical as usize;
        match self.ram.get_mut(at..at + data.len()) {
            Some(bytes) => {
                bytes.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

const KERNEL_RIP: u64 = 0xffff_ffff_8100_1000;

fn registers() -> Registers {
    Registers {
        rip: KERNEL_RIP,
        rflags: 0x46,
        ..Registers::default()
    }
}

/// Decodes `bytes` in 64-bit mode and completes them.
fn run(
    bytes: &[u8],
    registers: &mut Registers,
    fpu: &mut FpuState,
    memory: &mut FakeMemory,
) -> Result<Event, InsnError> {
    let insn = decode(bytes, Mode::Long64)?;
    complete(&insn, registers, fpu, memory)
}

fn sample_fpu() -> FpuState {
    let mut fpu = FpuState {
        fcw: 0x037f,
        fsw: 0x3800,
        ftw: 0x81,
        fop: 0x07d9,
        fip: 0xffff_ffff_8123_4567,
        fdp: 0xffff_8880_0000_1230,
        mxcsr: 0x1fa0,
        ..FpuState::default()
    };
    for (i, register) in fpu.st.iter_mut().enumerate() {
        register[..10].fill(0x10 + i as u8);
    }
    for (i, register) in fpu.xmm.iter_mut().enumerate() {
        register.fill(0xa0 + i as u8);
    }
    fpu
}

#[test]
fn int3_is_a_trap_delivered_after_the_instruction() {
    let mut regs = registers();
    let event = run(
        &[0xcc, 0x90],
        &mut regs,
        &mut FpuState::default(),
        &mut FakeMemory::new(),
    );
    assert_eq!(
        event,
        Ok(Event::Exception {
            vector: VECTOR_BP,
            error_code: None
        })
    );
    assert_eq!(regs.rip, KERNEL_RIP + 1);
}

#[test]
fn int_n_is_a_software_interrupt_after_its_two_bytes() {
    let mut regs = registers();
    let event = run(
        &[0xcd, 0x80],
        &mut regs,
        &mut FpuState::default(),
        &mut FakeMemory::new(),
    );
    assert_eq!(event, Ok(Event::SoftwareInterrupt { vector: 0x80 }));
    assert_eq!(regs.rip, KERNEL_RIP + 2);
}

#[test]
fn fwait_clac_and_stac_change_only_what_they_should() {
    let mut regs = registers();
    let mut fpu = sample_fpu();
    let mut memory = FakeMemory::new();
    assert_eq!(
        run(&[0x9b], &mut regs, &mut fpu, &mut memory),
        Ok(Event::None)
    );
    assert_eq!((regs.rip, regs.rflags), (KERNEL_RIP + 1, 0x46));
    assert_eq!(
        run(&[0x0f, 0x01, 0xcb], &mut regs, &mut fpu, &mut memory),
        Ok(Event::None)
    );
    assert_eq!(regs.rflags, 0x46 | RFLAGS_AC, "STAC sets AC");
    assert_eq!(
        run(&[0x0f, 0x01, 0xca], &mut regs, &mut fpu, &mut memory),
        Ok(Event::None)
    );
    assert_eq!(regs.rflags, 0x46, "CLAC clears AC");
    assert_eq!(regs.rip, KERNEL_RIP + 7);
    assert_eq!(fpu, sample_fpu());
}

#[test]
fn instructions_in_other_modes_decode_without_memory_forms() {
    assert_eq!(
        decode(&[0xcc], Mode::Other).map(|i| i.opcode),
        Ok(Opcode::Int3)
    );
    assert_eq!(
        decode(&[0x0f, 0xae, 0x10], Mode::Other),
        Err(InsnError::NotInSet),
        "LDMXCSR outside 64-bit code is refused"
    );
    assert_eq!(
        decode(&[0x48, 0xcc], Mode::Other),
        Err(InsnError::NotInSet),
        "0x48 is DEC EAX outside 64-bit mode"
    );
}

#[test]
fn ldmxcsr_reads_its_operand_through_base_plus_displacement() {
    // ldmxcsr 0x18(%rax): the kernel's kernel_fpu_begin form.
    let mut memory = FakeMemory::new().map(0xffff_8880_0000_0000, 3 * PAGE, true);
    memory.ram[(3 * PAGE + 0x118) as usize..][..4].copy_from_slice(&0x1f80u32.to_le_bytes());
    let mut regs = registers();
    regs.gprs[0] = 0xffff_8880_0000_0100;
    let mut fpu = FpuState::default();
    let event = run(&[0x0f, 0xae, 0x50, 0x18], &mut regs, &mut fpu, &mut memory);
    assert_eq!(event, Ok(Event::None));
    assert_eq!(fpu.mxcsr, 0x1f80);
    assert_eq!(regs.rip, KERNEL_RIP + 4);
}

#[test]
fn ldmxcsr_with_a_reserved_bit_is_a_general_protection_fault_at_the_instruction() {
    let mut memory = FakeMemory::new().map(0, 0, true);
    memory.ram[0x40..0x44].copy_from_slice(&0x1_0000u32.to_le_bytes());
    let mut regs = registers();
    regs.gprs[7] = 0x40;
    let mut fpu = FpuState {
        mxcsr: 0x1f80,
        ..FpuState::default()
    };
    // ldmxcsr (%rdi)
    let event = run(&[0x0f, 0xae, 0x17], &mut regs, &mut fpu, &mut memory);
    assert_eq!(
        event,
        Ok(Event::Exception {
            vector: VECTOR_GP,
            error_code: Some(0)
        })
    );
    assert_eq!(
        (regs.rip, fpu.mxcsr),
        (KERNEL_RIP, 0x1f80),
        "nothing changed"
    );
}

#[test]
fn stmxcsr_writes_through_rip_relative_addressing() {
    // stmxcsr 0x100(%rip): relative to the next instruction (KERNEL_RIP + 7).
    let target = KERNEL_RIP + 7 + 0x100;
    let mut memory = FakeMemory::new().map(target & !(PAGE - 1), 5 * PAGE, true);
    let mut regs = registers();
    let mut fpu = FpuState {
        mxcsr: 0x1fa5,
        ..FpuState::default()
    };
    let bytes = [0x0f, 0xae, 0x1d, 0x00, 0x01, 0x00, 0x00];
    assert_eq!(
        run(&bytes, &mut regs, &mut fpu, &mut memory),
        Ok(Event::None)
    );
    let at = 5 * PAGE + target % PAGE;
    assert_eq!(memory.physical(at, 4), 0x1fa5u32.to_le_bytes());
    assert_eq!(regs.rip, KERNEL_RIP + 7);
}

#[test]
fn memory_forms_with_sib_rex_and_segment_overrides_address_what_the_cpu_would() {
    let mut regs = registers();
    regs.gprs[12] = 0x1000; // r12
    regs.gprs[9] = 0x20; // r9
    regs.gprs[4] = 0x5000; // rsp
    regs.gprs[13] = 0x7000; // r13
    regs.gs_base = 0xffff_8880_1000_0000;
    regs.gprs[7] = 0x4000; // rdi
    let address = |bytes: &[u8]| {
        let insn = decode(bytes, Mode::Long64).unwrap();
        let next = regs.rip + u64::from(insn.length);
        (
            effective_address(&insn.memory.unwrap(), &regs, next),
            insn.length,
        )
    };
    // stmxcsr 0x8(%r12,%r9,4): REX.XB, SIB, disp8.
    assert_eq!(
        address(&[0x43, 0x0f, 0xae, 0x5c, 0x8c, 0x08]),
        (0x1000 + 0x80 + 8, 6)
    );
    // stmxcsr -0x10(%rsp): SIB with no index.
    assert_eq!(address(&[0x0f, 0xae, 0x5c, 0x24, 0xf0]), (0x5000 - 0x10, 5));
    // stmxcsr 0x0(%r13): r13 as a base always has a displacement.
    assert_eq!(address(&[0x41, 0x0f, 0xae, 0x5d, 0x00]), (0x7000, 5));
    // stmxcsr %gs:0x200: SIB with no base, disp32, GS base added.
    assert_eq!(
        address(&[0x65, 0x0f, 0xae, 0x1c, 0x25, 0x00, 0x02, 0x00, 0x00]),
        (0xffff_8880_1000_0200, 9)
    );
    // fxsave 0x100(%rdi) with a 32-bit displacement.
    assert_eq!(
        address(&[0x0f, 0xae, 0x87, 0x00, 0x01, 0x00, 0x00]),
        (0x4100, 7)
    );
}

#[test]
fn fxsave64_stores_the_whole_state_in_the_sdm_layout() {
    let mut memory = FakeMemory::new().map(0x10_0000, 2 * PAGE, true);
    let mut regs = registers();
    regs.gprs[7] = 0x10_0040;
    let mut fpu = sample_fpu();
    // fxsave64 (%rdi)
    let event = run(&[0x48, 0x0f, 0xae, 0x07], &mut regs, &mut fpu, &mut memory);
    assert_eq!(event, Ok(Event::None));
    let area = memory.physical(2 * PAGE + 0x40, 512).to_vec();
    assert_eq!(&area[0..2], &0x037fu16.to_le_bytes());
    assert_eq!(&area[2..4], &0x3800u16.to_le_bytes());
    assert_eq!(area[4], 0x81);
    assert_eq!(&area[6..8], &0x07d9u16.to_le_bytes());
    assert_eq!(&area[8..16], &0xffff_ffff_8123_4567u64.to_le_bytes());
    assert_eq!(&area[16..24], &0xffff_8880_0000_1230u64.to_le_bytes());
    assert_eq!(&area[24..28], &0x1fa0u32.to_le_bytes());
    assert_eq!(&area[28..32], &MXCSR_MASK.to_le_bytes());
    assert_eq!(&area[32..42], &[0x10; 10], "ST0");
    assert_eq!(&area[144..154], &[0x17; 10], "ST7");
    assert_eq!(&area[160..176], &[0xa0; 16], "XMM0");
    assert_eq!(&area[400..416], &[0xaf; 16], "XMM15");
    assert_eq!(regs.rip, KERNEL_RIP + 4);
}

#[test]
fn legacy_fxsave_keeps_only_32_bit_pointers() {
    let mut memory = FakeMemory::new().map(0, 0, true);
    let mut regs = registers();
    let mut fpu = sample_fpu();
    // fxsave (%rax)
    assert_eq!(
        run(&[0x0f, 0xae, 0x00], &mut regs, &mut fpu, &mut memory),
        Ok(Event::None)
    );
    assert_eq!(memory.physical(8, 8), [0x67, 0x45, 0x23, 0x81, 0, 0, 0, 0]);
}

#[test]
fn fxrstor64_loads_what_fxsave64_stored() {
    let mut memory = FakeMemory::new().map(0x20_0000, 4 * PAGE, true);
    let mut regs = registers();
    regs.gprs[3] = 0x20_0100;
    let mut saved = sample_fpu();
    run(
        &[0x48, 0x0f, 0xae, 0x03],
        &mut regs,
        &mut saved,
        &mut memory,
    )
    .unwrap();
    let mut fpu = FpuState::default();
    // fxrstor64 (%rbx)
    let event = run(&[0x48, 0x0f, 0xae, 0x0b], &mut regs, &mut fpu, &mut memory);
    assert_eq!(event, Ok(Event::None));
    assert_eq!(fpu, sample_fpu());
    assert_eq!(regs.rip, KERNEL_RIP + 8);
}

#[test]
fn fxrstor_of_a_reserved_mxcsr_bit_faults_and_loads_nothing() {
    let mut memory = FakeMemory::new().map(0, 0, true);
    memory.ram[24..28].copy_from_slice(&0x8000_0000u32.to_le_bytes());
    let mut regs = registers();
    let mut fpu = sample_fpu();
    let event = run(&[0x48, 0x0f, 0xae, 0x08], &mut regs, &mut fpu, &mut memory);
    assert_eq!(
        event,
        Ok(Event::Exception {
            vector: VECTOR_GP,
            error_code: Some(0)
        })
    );
    assert_eq!((fpu, regs.rip), (sample_fpu(), KERNEL_RIP));
}

#[test]
fn a_misaligned_fxsave_area_is_a_general_protection_fault() {
    let mut memory = FakeMemory::new().map(0, 0, true);
    let mut regs = registers();
    regs.gprs[0] = 8;
    let event = run(
        &[0x0f, 0xae, 0x00],
        &mut regs,
        &mut sample_fpu(),
        &mut memory,
    );
    assert_eq!(
        event,
        Ok(Event::Exception {
            vector: VECTOR_GP,
            error_code: Some(0)
        })
    );
    assert_eq!(memory.physical(0, 16), [0; 16], "nothing written");
}

#[test]
fn an_area_crossing_a_page_reaches_both_physical_pages() {
    // Virtual pages 0x30000 and 0x31000 map to physical pages 7 and 2: not contiguous.
    let mut memory = FakeMemory::new()
        .map(0x3_0000, 7 * PAGE, true)
        .map(0x3_1000, 2 * PAGE, true);
    let mut regs = registers();
    regs.gprs[6] = 0x3_0f00; // 256 bytes before the boundary
    let mut fpu = sample_fpu();
    // fxsave64 (%rsi)
    assert_eq!(
        run(&[0x48, 0x0f, 0xae, 0x06], &mut regs, &mut fpu, &mut memory),
        Ok(Event::None)
    );
    assert_eq!(
        memory.physical(7 * PAGE + 0xf00 + 24, 4),
        0x1fa0u32.to_le_bytes()
    );
    // XMM6 is at 160 + 96 = 256: the first bytes of the second page.
    assert_eq!(memory.physical(2 * PAGE, 16), [0xa6; 16]);
    let mut restored = FpuState::default();
    run(
        &[0x48, 0x0f, 0xae, 0x0e],
        &mut regs,
        &mut restored,
        &mut memory,
    )
    .unwrap();
    assert_eq!(restored, sample_fpu());
    // ldmxcsr of a 4-byte operand split 2 + 2 across the boundary.
    memory.ram[(8 * PAGE - 2) as usize..(8 * PAGE) as usize].copy_from_slice(&[0x80, 0x1f]);
    memory.ram[(2 * PAGE) as usize..(2 * PAGE + 2) as usize].copy_from_slice(&[0, 0]);
    regs.gprs[6] = 0x3_0ffe;
    run(&[0x0f, 0xae, 0x16], &mut regs, &mut restored, &mut memory).unwrap();
    assert_eq!(restored.mxcsr, 0x1f80);
}

#[test]
fn an_unmapped_or_read_only_operand_is_refused_and_nothing_is_written() {
    let mut memory = FakeMemory::new()
        .map(0x3_0000, 7 * PAGE, true)
        .map(0x3_1000, 2 * PAGE, false);
    let mut regs = registers();
    regs.gprs[6] = 0x3_0f00;
    let fxsave = [0x48, 0x0f, 0xae, 0x06];
    assert_eq!(
        run(&fxsave, &mut regs, &mut sample_fpu(), &mut memory),
        Err(InsnError::ReadOnly { address: 0x3_1000 })
    );
    assert_eq!(
        memory.physical(7 * PAGE + 0xf00, 256),
        [0; 256],
        "no half-written area"
    );
    regs.gprs[6] = 0x5_0000;
    assert_eq!(
        run(&fxsave, &mut regs, &mut sample_fpu(), &mut memory),
        Err(InsnError::Unmapped { address: 0x5_0000 })
    );
    assert_eq!(regs.rip, KERNEL_RIP, "RIP stays where the VM stops");
}

#[test]
fn instructions_outside_the_set_are_refused() {
    for bytes in [
        &[0xf3, 0x0f, 0xb8, 0xc0][..], // popcnt: the kernel is told to avoid it
        &[0x0f, 0xae, 0xe8],           // lfence (mod == 3)
        &[0xf3, 0x48, 0x0f, 0xae, 0xc0], // rdfsbase
        &[0x0f, 0xae, 0x20],           // xsave
        &[0x48, 0x0f, 0xae, 0x10],     // ldmxcsr has no REX.W form
        &[0x48, 0xcf],                 // iretq
        &[0x66, 0x0f, 0xae, 0x00],     // a mandatory prefix changes the instruction
        &[0xf0, 0x0f, 0xae, 0x00],     // lock
        &[0x67, 0x0f, 0xae, 0x00],     // 32-bit addressing
        &[0x0f, 0x01, 0xd0],           // xgetbv
        &[0x48, 0x9b],                 // REX on an instruction without operands
    ] {
        assert_eq!(
            decode(bytes, Mode::Long64),
            Err(InsnError::NotInSet),
            "{bytes:02x?}"
        );
    }
}

#[test]
fn truncated_bytes_are_refused() {
    for bytes in [
        &[][..],
        &[0xcd],
        &[0x0f, 0xae],
        &[0x0f, 0xae, 0x90, 0x00, 0x01],
        &[0x48],
    ] {
        assert_eq!(
            decode(bytes, Mode::Long64),
            Err(InsnError::Truncated),
            "{bytes:02x?}"
        );
    }
    // Fifteen prefixes and then an opcode: longer than any instruction.
    let mut long = vec![0x2e; 15];
    long.push(0xcc);
    assert_eq!(decode(&long, Mode::Long64), Err(InsnError::Truncated));
}

#[test]
fn instruction_bytes_near_an_unmapped_page_are_read_up_to_it() {
    let mut memory = FakeMemory::new().map(0x1000, 0, true);
    memory.ram[0xffc..0x1000].copy_from_slice(&[0x0f, 0xae, 0x50, 0x18]);
    let mut buf = [0u8; MAX_LENGTH];
    assert_eq!(read_virtual_prefix(&mut memory, 0x1ffc, &mut buf), 4);
    assert_eq!(
        decode(&buf[..4], Mode::Long64).map(|i| i.opcode),
        Ok(Opcode::Ldmxcsr)
    );
}

#[test]
fn every_opcode_has_its_profile_name() {
    let names: Vec<&str> = [
        Opcode::Int3,
        Opcode::Int(1),
        Opcode::Fwait,
        Opcode::Clac,
        Opcode::Stac,
        Opcode::Fxsave { wide: false },
        Opcode::Fxsave { wide: true },
        Opcode::Fxrstor { wide: false },
        Opcode::Fxrstor { wide: true },
        Opcode::Ldmxcsr,
        Opcode::Stmxcsr,
    ]
    .iter()
    .map(|opcode| opcode.name())
    .collect();
    assert_eq!(
        names,
        [
            "int3",
            "int",
            "fwait",
            "clac",
            "stac",
            "fxsave",
            "fxsave64",
            "fxrstor",
            "fxrstor64",
            "ldmxcsr",
            "stmxcsr"
        ]
    );
}
