//! Everything that talks to KVM: the only module that imports `kvm-ioctls`.

mod boot;
mod complete;
pub mod floor;
mod irq;
mod msi;
pub mod requests;
mod ring;
mod run_flag;
mod state;
#[cfg(test)]
mod state_tests;
mod stats;
mod vcpu;
mod vm;

use std::ffi::CString;

use kvm_ioctls::{Cap, Kvm};
use thiserror::Error;

pub use complete::CompleteError;
pub use irq::IrqFd;
pub use msi::MsiRoutes;
pub use ring::KvmRing;
pub use run_flag::RunFlag;
pub use state::{FpuState, MsrValue, VcpuState, VmState};
pub use stats::StatsReader;
pub use vcpu::Vcpu;
pub use vm::{IoEvents, KvmZones, VcpuOptions, Vm, VmStates};

/// Names another KVM device than `/dev/kvm` (tests use it to check the error).
pub const KVM_DEVICE_VARIABLE: &str = "HUSHVM_KVM_DEVICE";

/// A KVM operation failed.
#[derive(Debug, Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open {path} ({hint})")]
    Open {
        path: String,
        hint: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM's API is not the stable one.
    #[error("KVM API version {0}, expected 12")]
    ApiVersion(i32),
    /// A capability hushvm cannot run without.
    #[error("KVM lacks a capability hushvm needs: {0}")]
    MissingCapability(&'static str),
    /// An ioctl failed.
    #[error("{what} failed")]
    Ioctl {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The benchmark floor met an exit the rtc guest never causes.
    #[error("the benchmark floor met an exit it does not serve")]
    UnexpectedFloorExit,
    /// KVM took only the MSRs before this one from a saved vCPU state.
    #[error("KVM_SET_MSRS refused MSR {0:#x} of the saved vCPU state")]
    MsrRefused(u32),
    /// A saved irqchip state names another chip than the one it is saved as.
    #[error("saved irqchip state is for chip {found}, expected chip {expected}")]
    IrqchipId { expected: u32, found: u32 },
    /// Reading KVM's binary statistics failed.
    #[error("reading KVM statistics failed")]
    Stats(#[source] std::io::Error),
}

fn ioctl_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// The host's KVM.
#[derive(Debug)]
pub struct Hypervisor {
    kvm: Kvm,
}

impl Hypervisor {
    /// Opens `/dev/kvm` (or the device `HUSHVM_KVM_DEVICE` names) and checks what hushvm
    /// cannot run without.
    pub fn open() -> Result<Self, KvmError> {
        let path = std::env::var_os(KVM_DEVICE_VARIABLE)
            .map(std::os::unix::ffi::OsStringExt::into_vec)
            .and_then(|bytes| CString::new(bytes).ok())
            .unwrap_or_else(|| c"/dev/kvm".to_owned());
        let kvm = Kvm::new_with_path(&path).map_err(|source| KvmError::Open {
            path: path.to_string_lossy().into_owned(),
            hint: match source.errno() {
                libc::ENOENT => "is the kvm module loaded?",
                libc::EACCES | libc::EPERM => "is this user in the kvm group?",
                _ => "is KVM available on this host?",
            },
            source,
        })?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(KvmError::ApiVersion(version));
        }
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCapability(name));
            }
        }
        Ok(Self { kvm })
    }

    /// True if `/dev/kvm` can be opened here.
    pub fn is_available() -> bool {
        Self::open().is_ok()
    }

    /// How many vCPUs KVM recommends per VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_nr_vcpus()
    }
}

/// For the library's unit tests that need `/dev/kvm` (each named `kvm_*`): true if KVM
/// opens here. Without it they fail, unless HUSHVM_SKIP_KVM_TESTS=1 asks to skip them
/// (false), and always when HUSHVM_REQUIRE_KVM=1 (as CI sets it): the rule of the
/// integration tests' `tests/common::kvm_available`.
#[cfg(test)]
pub(crate) fn kvm_available() -> bool {
    if Hypervisor::is_available() {
        return true;
    }
    let required = std::env::var("HUSHVM_REQUIRE_KVM").as_deref() == Ok("1");
    let skip = std::env::var("HUSHVM_SKIP_KVM_TESTS").as_deref() == Ok("1");
    if skip && !required {
        eprintln!("SKIPPED: /dev/kvm is not available and HUSHVM_SKIP_KVM_TESTS=1");
        return false;
    }
    panic!("this test needs /dev/kvm, which cannot be opened (set HUSHVM_SKIP_KVM_TESTS=1 to skip KVM tests)");
}
