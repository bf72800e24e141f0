//! The guest-physical address map: every address hushvm puts something at is defined
//! here, once. Loaders, devices and the ACPI builder ask this module; nothing else
//! invents a guest-physical constant.
//!
//! ```text
//! 0x0000_0000  real-mode IVT and BDA (RAM)
//! 0x0000_0500  BOOT_GDT          GDT for a boot protocol that needs one
//! 0x0000_6000  PVH_START_INFO    PVH hvm_start_info, its memory map after it
//! 0x0000_7000  ZERO_PAGE         Linux boot_params
//! 0x0000_8ff0  BOOT_STACK_TOP    the stack a loader hands the kernel (grows down)
//! 0x0000_9000  PAGE_TABLES       PML4, PDPT, 4 page directories: identity map of 4 GiB
//! 0x0002_0000  CMDLINE           the kernel command line (Linux and PVH)
//! 0x0009_fc00  EBDA_START        extended BIOS data area (reserved)
//! 0x000a_0000                    VGA and option ROMs (backed; EBDA to 1 MiB reported reserved)
//! 0x000e_0000  ACPI_TABLES       RSDP first, then the other tables (reserved)
//! 0x0010_0000  HIGH_RAM_START    kernels load here; RAM up to min(--mem, 3 GiB)
//! 0xc000_0000  MMIO_HOLE_START   the 32-bit device hole, up to 4 GiB:
//!   0xc000_0000  virtio-mmio slots, 4 KiB each
//!   0xc100_0000  PCI 32-bit memory window (BARs)
//!   0xe000_0000  PCI ECAM (MMCONFIG), 256 buses
//!   0xfec0_0000  IOAPIC
//!   0xfee0_0000  local APICs
//!   0xfffb_c000  KVM's identity map page and TSS (Intel VMX needs them)
//! 0x1_0000_0000  RAM above the hole, when --mem exceeds 3 GiB
//! ```

use thiserror::Error;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const PAGE_SIZE: u64 = 4 * KIB;

/// Global descriptor table for boot protocols whose entry state needs one.
pub const BOOT_GDT: u64 = 0x500;
/// PVH's `hvm_start_info`, followed by its memory map.
pub const PVH_START_INFO: u64 = 0x6000;
/// Linux's `boot_params` ("zero page").
pub const ZERO_PAGE: u64 = 0x7000;
/// The top of the stack a loader hands a kernel (QEMU's Multiboot loader also enters
/// with a usable stack in low memory).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Identity-mapping page tables for a 64-bit entry: a PML4, a PDPT, then four page
/// directories of 2 MiB pages covering the first 4 GiB.
pub const PAGE_TABLES: u64 = 0x9000;
/// Bytes the page tables take.
pub const PAGE_TABLES_SIZE: u64 = 6 * PAGE_SIZE;
/// The kernel command line.
pub const CMDLINE: u64 = 0x2_0000;
/// The most command-line bytes hushvm places (the kernel's own limit may be lower).
pub const CMDLINE_MAX: u64 = 0x1_0000;
/// Start of the extended BIOS data area: conventional RAM ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// The ACPI tables, RSDP first (inside the BIOS area, where a kernel that is not told
/// where the RSDP is looks for it).
pub const ACPI_TABLES: u64 = 0xe_0000;
/// Room for the ACPI tables.
pub const ACPI_TABLES_SIZE: u64 = 0x2_0000;
/// RAM above the legacy hole starts here; kernels load here.
pub const HIGH_RAM_START: u64 = MIB;

/// The 32-bit device hole: no RAM between these addresses.
pub const MMIO_HOLE_START: u64 = 3 * GIB;
pub const MMIO_HOLE_END: u64 = 4 * GIB;
/// The virtio-mmio slots, one device each.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_HOLE_START;
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 4 * KIB;
pub const VIRTIO_MMIO_SLOTS: u64 = 16;
/// PCI BARs below 4 GiB.
pub const PCI_MMIO32_START: u64 = 0xc100_0000;
pub const PCI_MMIO32_END: u64 = PCI_ECAM_START;
/// PCI Express enhanced configuration access: 1 MiB per bus.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 256 * MIB;
/// The in-kernel IOAPIC and local APICs (KVM places them; the tables describe them).
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Where KVM may put the identity map page and the 3-page TSS that Intel VMX needs.
pub const KVM_IDENTITY_MAP: u64 = 0xfffb_c000;
pub const KVM_TSS: u64 = 0xfffb_d000;

/// The smallest guest RAM: a kernel at 1 MiB, its boot information and a stack.
pub const MIN_MEMORY: u64 = 2 * MIB;
/// The largest guest RAM hushvm accepts.
pub const MAX_MEMORY: u64 = 256 * GIB;

// The low-memory areas stay in their order and inside conventional memory.
const _: () = assert!(PAGE_TABLES + PAGE_TABLES_SIZE <= CMDLINE);
const _: () = assert!(CMDLINE + CMDLINE_MAX <= EBDA_START);
const _: () = assert!(ACPI_TABLES + ACPI_TABLES_SIZE <= HIGH_RAM_START);

/// The I/O port map: where each platform device answers.
pub mod ports {
    /// The i8042 keyboard controller (data 0x60, command/status 0x64).
    pub const I8042: u16 = 0x60;
    pub const I8042_COUNT: u16 = 5;
    /// The MC146818 RTC: index 0x70 (a posted register), data 0x71.
    pub const RTC: u16 = 0x70;
    pub const RTC_COUNT: u16 = 2;
    /// The POST code port.
    pub const POST_CODE: u16 = 0x80;
    /// QEMU's isa-debug-exit, as hushvm's test guests expect it.
    pub const DEBUG_EXIT: u16 = 0xf4;
    pub const DEBUG_EXIT_COUNT: u16 = 4;
    /// The ATA-style data port of the string-I/O workload.
    pub const DATA_PORT: u16 = 0x1f0;
    pub const DATA_PORT_COUNT: u16 = 8;
    /// COM1, a 16550 UART.
    pub const COM1: u16 = 0x3f8;
    pub const COM1_COUNT: u16 = 8;
    /// QEMU's fw_cfg, I/O interface (selector 0x510, data 0x511).
    pub const FW_CFG: u16 = 0x510;
    pub const FW_CFG_COUNT: u16 = 2;
    /// ACPI power management, where QEMU's q35 and Cloud Hypervisor put it: PM1a event
    /// block (status, enable), PM1a control block, PM timer.
    pub const ACPI_PM1_EVENT: u16 = 0x600;
    pub const ACPI_PM1_EVENT_COUNT: u16 = 4;
    pub const ACPI_PM1_CONTROL: u16 = 0x604;
    pub const ACPI_PM1_CONTROL_COUNT: u16 = 2;
    pub const ACPI_PM_TIMER: u16 = 0x608;
    pub const ACPI_PM_TIMER_COUNT: u16 = 4;
    /// PCI configuration mechanism #1: the address register at 0xcf8, the data window at
    /// 0xcfc-0xcff. The PC's reset control register, the FADT's reset register, sits at
    /// 0xcf9, inside it: the configuration device forwards it.
    pub const PCI_CONFIG: u16 = 0xcf8;
    pub const PCI_CONFIG_COUNT: u16 = 8;
    pub const RESET_CONTROL: u16 = 0xcf9;
    /// The PCI I/O window for I/O BARs, from here to the top of port space (QEMU's
    /// window; every platform device's ports lie below it).
    pub const PCI_IO_START: u16 = 0x0d00;
    /// virtio-mmio devices' I/O-port doorbells (hushvm's own, for the "as fast as PIO"
    /// comparison): 4 ports per slot.
    pub const VIRTIO_PIO_DOORBELLS: u16 = 0xb00;
    pub const VIRTIO_PIO_DOORBELL_COUNT: u16 = 4;
}

/// Interrupt lines (GSIs of the in-kernel PIC and IOAPIC).
pub mod gsi {
    /// ISA IRQ 0, the timer, arrives on IOAPIC pin 2 (an interrupt source override).
    pub const TIMER: u32 = 2;
    pub const COM1: u32 = 4;
    /// The first virtio-mmio slot's line; slot n uses `VIRTIO_MMIO_FIRST + n`.
    pub const VIRTIO_MMIO_FIRST: u32 = 5;
    pub const VIRTIO_MMIO_COUNT: u32 = 3;
    pub const RTC: u32 = 8;
    /// The ACPI system control interrupt.
    pub const SCI: u32 = 9;
}

/// The I/O-port doorbell of virtio-mmio slot `slot`.
pub fn virtio_pio_doorbell(slot: u8) -> u16 {
    ports::VIRTIO_PIO_DOORBELLS + u16::from(slot) * ports::VIRTIO_PIO_DOORBELL_COUNT
}

/// The interrupt line of virtio-mmio slot `slot`.
pub fn virtio_mmio_gsi(slot: u8) -> u32 {
    gsi::VIRTIO_MMIO_FIRST + u32::from(slot)
}

/// What a range of the guest-physical map holds, in the e820 sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM.
    Ram,
    /// Present but not for the OS (BIOS areas, the ACPI tables' home).
    Reserved,
}

impl MemoryKind {
    /// The e820 type number (1 usable, 2 reserved), which Multiboot's map uses too.
    pub fn e820_type(self) -> u32 {
        match self {
            MemoryKind::Ram => 1,
            MemoryKind::Reserved => 2,
        }
    }
}

/// One range of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRange {
    pub start: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

impl MemoryRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// `--mem` cannot be laid out.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("{bytes:#x} bytes of RAM: too small, at least {} MiB", MIN_MEMORY / MIB)]
    TooSmall { bytes: u64 },
    #[error("{bytes:#x} bytes of RAM: too large, at most {} GiB", MAX_MEMORY / GIB)]
    TooLarge { bytes: u64 },
    #[error("{bytes:#x} bytes of RAM: not a multiple of 4 KiB")]
    NotPageAligned { bytes: u64 },
}

/// Where a machine's RAM lies: below the 32-bit hole, and above 4 GiB for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLayout {
    ram: u64,
}

impl MemoryLayout {
    /// The layout of `ram` bytes of guest RAM.
    pub fn new(ram: u64) -> Result<Self, LayoutError> {
        if ram < MIN_MEMORY {
            Err(LayoutError::TooSmall { bytes: ram })
        } else if ram > MAX_MEMORY {
            Err(LayoutError::TooLarge { bytes: ram })
        } else if ram % PAGE_SIZE != 0 {
            Err(LayoutError::NotPageAligned { bytes: ram })
        } else {
            Ok(Self { ram })
        }
    }

    /// Bytes of RAM in all.
    pub fn ram_bytes(&self) -> u64 {
        self.ram
    }

    /// One past the last byte of RAM below the hole.
    pub fn low_ram_end(&self) -> u64 {
        self.ram.min(MMIO_HOLE_START)
    }

    /// Bytes of RAM above 4 GiB.
    pub fn high_ram_bytes(&self) -> u64 {
        self.ram - self.low_ram_end()
    }

    /// One past the highest RAM address.
    pub fn ram_top(&self) -> u64 {
        match self.high_ram_bytes() {
            0 => self.low_ram_end(),
            high => MMIO_HOLE_END + high,
        }
    }

    /// The RAM regions to back and register with the hypervisor: `(start, bytes)`.
    /// The legacy hole below 1 MiB is backed (tables and BIOS data live there); the
    /// memory map reports it reserved.
    pub fn ram_regions(&self) -> Vec<(u64, u64)> {
        let mut regions = vec![(0, self.low_ram_end())];
        if self.high_ram_bytes() > 0 {
            regions.push((MMIO_HOLE_END, self.high_ram_bytes()));
        }
        regions
    }

    /// True if `[start, start + len)` is backed RAM.
    pub fn is_ram(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        self.ram_regions()
            .iter()
            .any(|(base, size)| start >= *base && end <= base + size)
    }

    /// The e820-style memory map a boot protocol hands the guest, in address order.
    pub fn memory_map(&self) -> Vec<MemoryRange> {
        let range = |start, end: u64, kind| MemoryRange {
            start,
            size: end - start,
            kind,
        };
        // The EBDA, the legacy hole and the BIOS area (the ACPI tables' home) as one
        // reserved range: Linux reserves 0xa0000-0xfffff itself on every boot path
        // (PVH included), so the map it prints is the map handed to it only when the
        // whole area is reserved here.
        let mut map = vec![
            range(0, EBDA_START, MemoryKind::Ram),
            range(EBDA_START, HIGH_RAM_START, MemoryKind::Reserved),
        ];
        if self.low_ram_end() > HIGH_RAM_START {
            map.push(range(HIGH_RAM_START, self.low_ram_end(), MemoryKind::Ram));
        }
        if self.high_ram_bytes() > 0 {
            map.push(range(MMIO_HOLE_END, self.ram_top(), MemoryKind::Ram));
        }
        map
    }

    /// The memory map as Linux prints it at boot (`BIOS-e820: [mem 0x...-0x...] usable`),
    /// one line per range: what a test compares with the kernel's own console.
    pub fn memory_map_lines(&self) -> Vec<String> {
        self.memory_map()
            .iter()
            .map(|range| {
                let kind = match range.kind {
                    MemoryKind::Ram => "usable",
                    MemoryKind::Reserved => "reserved",
                };
                format!(
                    "[mem {:#018x}-{:#018x}] {kind}",
                    range.start,
                    range.end() - 1
                )
            })
            .collect()
    }
}

/// The MMIO window of virtio-mmio slot `slot`.
pub fn virtio_mmio_slot(slot: u8) -> u64 {
    VIRTIO_MMIO_BASE + u64::from(slot) * VIRTIO_MMIO_SLOT_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(ram: u64) -> MemoryLayout {
        MemoryLayout::new(ram).unwrap()
    }

    #[test]
    fn small_ram_is_one_region_below_the_hole() {
        let layout = layout(64 * MIB);
        assert_eq!(layout.ram_regions(), vec![(0, 64 * MIB)]);
        assert_eq!(layout.ram_top(), 64 * MIB);
        assert_eq!(layout.high_ram_bytes(), 0);
    }

    #[test]
    fn ram_above_three_gib_continues_above_four_gib() {
        let layout = layout(5 * GIB);
        assert_eq!(layout.ram_regions(), vec![(0, 3 * GIB), (4 * GIB, 2 * GIB)]);
        assert_eq!(layout.ram_top(), 6 * GIB);
        assert!(layout.is_ram(4 * GIB, 2 * GIB));
        assert!(!layout.is_ram(3 * GIB, 1));
        assert!(!layout.is_ram(6 * GIB - 1, 2));
    }

    #[test]
    fn exactly_three_gib_has_nothing_above_the_hole() {
        let layout = layout(3 * GIB);
        assert_eq!(layout.ram_regions(), vec![(0, 3 * GIB)]);
        assert_eq!(layout.memory_map().last().unwrap().end(), 3 * GIB);
    }

    #[test]
    fn memory_map_reserves_the_ebda_to_1_mib_and_skips_the_hole() {
        let map = layout(4 * GIB).memory_map();
        let kinds: Vec<_> = map.iter().map(|r| (r.start, r.end(), r.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (0, EBDA_START, MemoryKind::Ram),
                (EBDA_START, MIB, MemoryKind::Reserved),
                (MIB, 3 * GIB, MemoryKind::Ram),
                (4 * GIB, 5 * GIB, MemoryKind::Ram),
            ]
        );
        for pair in map.windows(2) {
            assert!(pair[0].end() <= pair[1].start, "sorted, no overlap");
        }
    }

    #[test]
    fn usable_ram_in_the_map_adds_up_to_ram_less_the_low_holes() {
        for ram in [
            2 * MIB,
            7 * MIB + 4 * KIB,
            3 * GIB - 4 * KIB,
            3 * GIB + 4 * KIB,
        ] {
            let usable: u64 = layout(ram)
                .memory_map()
                .iter()
                .filter(|r| r.kind == MemoryKind::Ram)
                .map(|r| r.size)
                .sum();
            assert_eq!(usable, ram - (HIGH_RAM_START - EBDA_START), "{ram:#x}");
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert_eq!(
            MemoryLayout::new(MIB),
            Err(LayoutError::TooSmall { bytes: MIB })
        );
        assert_eq!(
            MemoryLayout::new(MAX_MEMORY + PAGE_SIZE),
            Err(LayoutError::TooLarge {
                bytes: MAX_MEMORY + PAGE_SIZE
            })
        );
        assert_eq!(
            MemoryLayout::new(4 * MIB + 1),
            Err(LayoutError::NotPageAligned { bytes: 4 * MIB + 1 })
        );
    }

    #[test]
    fn map_lines_read_like_linux() {
        let lines = layout(64 * MIB).memory_map_lines();
        assert_eq!(
            lines[0],
            "[mem 0x0000000000000000-0x000000000009fbff] usable"
        );
        assert_eq!(
            lines[1],
            "[mem 0x000000000009fc00-0x00000000000fffff] reserved"
        );
        assert_eq!(
            lines[2],
            "[mem 0x0000000000100000-0x0000000003ffffff] usable"
        );
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (BOOT_GDT, 0x100),
            (PVH_START_INFO, PAGE_SIZE),
            (ZERO_PAGE, PAGE_SIZE),
            (BOOT_STACK_TOP - 0x800, 0x800),
            (PAGE_TABLES, PAGE_TABLES_SIZE),
            (CMDLINE, CMDLINE_MAX),
            (ACPI_TABLES, ACPI_TABLES_SIZE),
        ];
        for (i, a) in areas.iter().enumerate() {
            for b in &areas[i + 1..] {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:x?} {b:x?}");
            }
        }
        assert!(virtio_mmio_slot(VIRTIO_MMIO_SLOTS as u8) <= PCI_MMIO32_START);
    }
}
