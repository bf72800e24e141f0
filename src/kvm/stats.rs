//! KVM's binary statistics (`KVM_GET_STATS_FD`): the kernel's own per-vCPU counters,
//! an account of exits independent of anything hushvm counts itself.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::KVMIO;
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

use super::KvmError;

ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);

const HEADER_SIZE: usize = 24;
const DESCRIPTOR_FIXED_SIZE: usize = 16;

/// The counters of one vCPU or VM.
#[derive(Debug)]
pub struct StatsReader {
    file: File,
    /// Name and file offset of each single-valued statistic.
    counters: Vec<(String, u64)>,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

impl StatsReader {
    /// Opens the statistics of the KVM object behind `fd`.
    pub fn open(fd: &impl AsRawFd) -> Result<Self, KvmError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
        let raw = unsafe { ioctl(fd, KVM_GET_STATS_FD()) };
        if raw < 0 {
            return Err(KvmError::Stats(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(raw) };
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0)
            .map_err(KvmError::Stats)?;
        let name_size = u32_at(&header, 4) as usize;
        let count = u32_at(&header, 8) as usize;
        let descriptors_at = u64::from(u32_at(&header, 16));
        let data_at = u64::from(u32_at(&header, 20));
        let stride = DESCRIPTOR_FIXED_SIZE + name_size;
        let mut descriptors = vec![0u8; stride * count];
        file.read_exact_at(&mut descriptors, descriptors_at)
            .map_err(KvmError::Stats)?;
        let counters = descriptors
            .chunks_exact(stride)
            .filter(|d| u16::from_le_bytes([d[6], d[7]]) == 1)
            .map(|d| {
                let name = &d[DESCRIPTOR_FIXED_SIZE..];
                let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                let name = String::from_utf8_lossy(&name[..end]).into_owned();
                (name, data_at + u64::from(u32_at(d, 8)))
            })
            .collect();
        Ok(Self { file, counters })
    }

    /// Every single-valued counter, by name.
    pub fn read(&self) -> Result<BTreeMap<String, u64>, KvmError> {
        let mut values = BTreeMap::new();
        for (name, at) in &self.counters {
            let mut value = [0u8; 8];
            self.file
                .read_exact_at(&mut value, *at)
                .map_err(KvmError::Stats)?;
            values.insert(name.clone(), u64::from_le_bytes(value));
        }
        Ok(values)
    }
}
