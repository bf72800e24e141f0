//! The host side of virtio-net: a tap interface opened the way Firecracker opens it
//! (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, plus `IFF_MULTI_QUEUE` for several queue
//! pairs, one file per pair), non-blocking, with the vnet header size and the offloads
//! the guest acked, and `readv`/`writev` straight from and into guest memory.
//!
//! Hand-written on `libc`'s TUN constants: no maintained crate opens a tap with vnet
//! headers and multiple queues (Firecracker's and Cloud Hypervisor's are not published).
//! The tap must already exist (`ip tuntap add dev NAME mode tap [multi_queue]`):
//! TUNSETIFF would otherwise create one, and a typo in a name must be an error, not a
//! new, unconnected interface.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Bytes of the vnet header in front of every frame: `virtio_net_hdr_v1` (with
/// `num_buffers`), which VIRTIO_F_VERSION_1 devices always use.
pub const VNET_HDR_LEN: usize = 12;
/// The most guest buffers one `readv`/`writev` takes (a descriptor chain of a queue of
/// 256 entries at most); the iovec array lives on the stack, so the data path does not
/// allocate.
pub const MAX_IOVECS: usize = 256;
const TUN_DEVICE: &str = "/dev/net/tun";

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} is not a valid interface name (1 to 15 bytes, no '/', ':', whitespace or NUL)")]
    BadName(String),
    #[error("there is no network interface called {0:?} (create it first: ip tuntap add dev {0} mode tap)")]
    NoSuchInterface(String),
    #[error("cannot open {TUN_DEVICE}")]
    OpenTun(#[source] io::Error),
    #[error("cannot attach to tap {name:?}: {hint}")]
    Attach {
        name: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the vnet header size of tap {name:?}")]
    VnetHeaderSize {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the offloads of tap {name:?}")]
    Offload {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{count} queue pairs asked of tap {name:?}; 1 to 256 are possible")]
    QueueCount { name: String, count: usize },
}

/// One queue of a tap interface: a non-blocking file on `/dev/net/tun` attached to it.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens `queues` queues of the existing tap `name` (one file each). More than one
    /// needs a tap made with `multi_queue`.
    pub fn open(name: &str, queues: usize) -> Result<Vec<Tap>, TapError> {
        if queues == 0 || queues > 256 {
            return Err(TapError::QueueCount {
                name: name.to_string(),
                count: queues,
            });
        }
        let ifname = interface_name(name)?;
        if !interface_exists(name) {
            return Err(TapError::NoSuchInterface(name.to_string()));
        }
        (0..queues)
            .map(|_| Self::open_queue(name, &ifname, queues > 1))
            .collect()
    }

    fn open_queue(
        name: &str,
        ifname: &[libc::c_char; libc::IFNAMSIZ],
        multi_queue: bool,
    ) -> Result<Tap, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(TapError::OpenTun)?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        // SAFETY: ifreq is plain data (a name and a union of integers and pointers), for
        // which all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        request.ifr_name = *ifname;
        // The flags are a C short in ifreq; every bit set above fits in 16 bits.
        request.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `request` is and outlives
        // the call; the file is open; the result is checked.
        let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if result < 0 {
            let source = io::Error::last_os_error();
            return Err(TapError::Attach {
                name: name.to_string(),
                hint: attach_hint(&source, multi_queue),
                source,
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        tap.set_vnet_hdr_size(VNET_HDR_LEN)?;
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_vnet_hdr_size(&self, size: usize) -> Result<(), TapError> {
        // VNET_HDR_LEN and every header size virtio defines fit in an int.
        let size = size as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which `size` is and outlives the call;
        // the result is checked.
        let result = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if result < 0 {
            return Err(TapError::VnetHeaderSize {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Sets the offloads the tap may hand the guest (from `offload_flags`).
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed; the
        // result is checked.
        let result = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if result < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (vnet header first) into `buffers`, guest memory the device may
    /// write. `WouldBlock` when no frame is waiting; a frame longer than the buffers is
    /// cut short by the kernel (the caller compares the length with what it posted).
    pub fn readv<B: BitmapSlice>(&self, buffers: &[VolatileSlice<'_, B>]) -> io::Result<usize> {
        check_count(buffers.len())?;
        let guards: [_; MAX_IOVECS] =
            std::array::from_fn(|i| buffers.get(i).map(|b| b.ptr_guard_mut()));
        let mut iovecs = [EMPTY_IOVEC; MAX_IOVECS];
        for (iovec, guard) in iovecs.iter_mut().zip(guards.iter().flatten()) {
            *iovec = libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: guard.len(),
            };
        }
        // SAFETY: every iovec describes guest memory kept mapped by its guard for the
        // duration of the call, which the kernel writes at most iov_len bytes of;
        // buffers.len() entries (at most MAX_IOVECS) are initialised; the result is checked.
        let read =
            unsafe { libc::readv(self.file.as_raw_fd(), iovecs.as_ptr(), buffers.len() as i32) };
        let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
        mark_written(buffers, read);
        Ok(read)
    }

    /// Writes one frame (vnet header first) gathered from `buffers`. `WouldBlock` when
    /// the tap's queue is full: the frame stays with the caller.
    pub fn writev<B: BitmapSlice>(&self, buffers: &[VolatileSlice<'_, B>]) -> io::Result<usize> {
        check_count(buffers.len())?;
        let guards: [_; MAX_IOVECS] =
            std::array::from_fn(|i| buffers.get(i).map(|b| b.ptr_guard()));
        let mut iovecs = [EMPTY_IOVEC; MAX_IOVECS];
        for (iovec, guard) in iovecs.iter_mut().zip(guards.iter().flatten()) {
            *iovec = libc::iovec {
                iov_base: guard.as_ptr() as *mut libc::c_void,
                iov_len: guard.len(),
            };
        }
        // SAFETY: every iovec describes guest memory kept mapped by its guard for the
        // duration of the call, which the kernel only reads; buffers.len() entries are
        // initialised; the result is checked.
        let written =
            unsafe { libc::writev(self.file.as_raw_fd(), iovecs.as_ptr(), buffers.len() as i32) };
        usize::try_from(written).map_err(|_| io::Error::last_os_error())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

const EMPTY_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

fn check_count(count: usize) -> io::Result<()> {
    if count > MAX_IOVECS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{count} buffers in one frame; at most {MAX_IOVECS}"),
        ));
    }
    Ok(())
}

/// Tells guest memory's dirty bitmap which bytes the kernel wrote.
fn mark_written<B: BitmapSlice>(buffers: &[VolatileSlice<'_, B>], mut written: usize) {
    for buffer in buffers {
        if written == 0 {
            break;
        }
        let len = buffer.len().min(written);
        buffer.bitmap().mark_dirty(0, len);
        written -= len;
    }
}

/// What went wrong attaching, in words a user can act on.
fn attach_hint(error: &io::Error, multi_queue: bool) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EPERM) => "not permitted (run as root, or give the tap to this user)",
        Some(libc::EBUSY) => "another process holds it",
        Some(libc::EINVAL) if multi_queue => {
            "several queues need a tap made with multi_queue, and a tap (not a tun)"
        }
        Some(libc::EINVAL) => {
            "it is a tun (not a tap), or was made with multi_queue while one queue is asked"
        }
        _ => "the kernel refused it",
    }
}

/// The name as TUNSETIFF takes it, NUL-terminated in IFNAMSIZ bytes.
fn interface_name(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], TapError> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(TapError::BadName(name.to_string()));
    }
    let mut ifname = [0 as libc::c_char; libc::IFNAMSIZ];
    for (slot, byte) in ifname.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(ifname)
}

/// True if the calling thread's network namespace has an interface called `name`.
fn interface_exists(name: &str) -> bool {
    let Ok(name) = CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads the NUL-terminated string, which lives across the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// The TUNSETOFFLOAD flags for the features the guest acked: the tap may hand the guest
/// partial checksums, and with them TSO/UFO segments, only where the guest said it takes
/// them.
pub fn offload_flags(acked_features: u64) -> libc::c_uint {
    let acked = |bit: u32| acked_features & (1u64 << bit) != 0;
    if !acked(VIRTIO_NET_F_GUEST_CSUM) {
        // Without partial checksums the kernel takes no segmentation offload either.
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    for (feature, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_ECN, libc::TUN_F_TSO_ECN),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ] {
        if acked(feature) {
            flags |= flag;
        }
    }
    flags
}

#[cfg(test)]
mod tests;
