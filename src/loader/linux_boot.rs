//! What both ways of booting Linux share, the boot protocol for bzImages
//! ([`super::linux`]) and PVH ([`super::pvh`]): the kernel to boot, its command line
//! and the placement of its initrd.

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::LoaderError;
use crate::layout::{CMDLINE, CMDLINE_MAX, PAGE_SIZE};

/// A Linux kernel to boot.
#[derive(Clone, Copy)]
pub struct LinuxBoot<'a> {
    pub image: &'a [u8],
    pub cmdline: &'a str,
    pub initrd: Option<&'a [u8]>,
    /// Where the ACPI RSDP is, when hushvm wrote ACPI tables.
    pub rsdp: Option<u64>,
}

/// Sizes, not megabytes of image bytes.
impl std::fmt::Debug for LinuxBoot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxBoot")
            .field("image_bytes", &self.image.len())
            .field("cmdline", &self.cmdline)
            .field("initrd_bytes", &self.initrd.map(<[u8]>::len))
            .field("rsdp", &self.rsdp)
            .finish()
    }
}

/// Writes the command line at [`CMDLINE`] with `linux-loader`, after checking it against
/// the kernel's limit (bytes without the NUL) and hushvm's room for it: the crate's own
/// check reports neither number.
pub(super) fn write_cmdline(
    memory: &GuestMemoryMmap,
    cmdline: &str,
    kernel_limit: u64,
) -> Result<(), LoaderError> {
    let max = kernel_limit.min(CMDLINE_MAX - 1);
    if cmdline.len() as u64 > max {
        return Err(LoaderError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.contains('\0') {
        return Err(LoaderError::NulInString("command line"));
    }
    let parsed = Cmdline::try_from(cmdline, max as usize + 1).map_err(LoaderError::Cmdline)?;
    load_cmdline(memory, GuestAddress(CMDLINE), &parsed).map_err(LoaderError::Kernel)
}

/// Writes the initrd page-aligned as high as it fits below `below` and above `above`
/// (where QEMU puts it: out of the way of the kernel's decompression and early
/// allocations); returns its address. `linux-loader` has no placement policy.
pub(super) fn place_initrd(
    memory: &GuestMemoryMmap,
    initrd: &[u8],
    above: u64,
    below: u64,
) -> Result<u64, LoaderError> {
    let floor = above.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let at = below
        .checked_sub(initrd.len() as u64)
        .map(|top| top / PAGE_SIZE * PAGE_SIZE)
        .filter(|&at| at >= floor)
        .ok_or(LoaderError::InitrdDoesNotFit {
            size: initrd.len(),
            below,
            above,
        })?;
    memory
        .write_slice(initrd, GuestAddress(at))
        .map_err(|source| LoaderError::GuestMemory { at, source })?;
    Ok(at)
}
