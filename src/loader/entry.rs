//! The vCPU state a boot protocol requires at its entry point, described without KVM
//! types: loaders fill it in, `kvm/` applies it.

/// The processor mode at entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit protected mode, flat 4 GiB segments, paging off (Multiboot, PVH).
    Protected32,
    /// 64-bit long mode with paging on, through the page tables at `EntryState::cr3`
    /// (the Linux 64-bit boot protocol).
    Long64,
}

/// A descriptor table in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Registers and mode at the kernel's first instruction. Registers not named here are
/// zero; interrupts are off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryState {
    pub mode: EntryMode,
    /// Selectors loaded into CS and into DS, ES, FS, GS, SS.
    pub code_selector: u16,
    pub data_selector: u16,
    /// The GDT the selectors index, when the loader wrote one.
    pub gdt: Option<DescriptorTable>,
    /// The page-table root, for [`EntryMode::Long64`].
    pub cr3: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rsi: u64,
}

impl EntryState {
    /// 32-bit flat protected mode at `rip`, other registers zero.
    pub fn protected32(rip: u64) -> Self {
        Self {
            mode: EntryMode::Protected32,
            code_selector: 0x08,
            data_selector: 0x10,
            gdt: None,
            cr3: 0,
            rip,
            rsp: 0,
            rax: 0,
            rbx: 0,
            rsi: 0,
        }
    }
}
