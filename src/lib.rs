//! hushvm: a KVM virtual machine monitor whose guests leave the CPU as rarely and as
//! cheaply as possible, with the measurements to show it. See ARCHITECTURE.md.

pub mod access;
pub mod acpi;
pub mod advise;
pub mod api;
pub mod bench;
pub mod bus;
pub mod config;
pub mod cpuid;
pub mod devices;
pub mod errors;
pub mod event_loop;
pub mod exit;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod insn;
pub mod irq;
pub mod kvm;
pub mod layout;
pub mod loader;
pub mod machine;
pub mod net;
pub mod posted;
pub mod profile;
pub mod rate_limiter;
pub mod ratelimit;
pub mod replay;
pub mod run_loop;
pub mod seccomp;
pub mod services;
pub mod snapshot;
pub mod sync;
pub mod trace;

/// The test guests, built from `guests/` by `build.rs` and embedded in the binary.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests/guests.rs"));

    /// The image of the guest called `name`.
    pub fn image(name: &str) -> Option<&'static [u8]> {
        GUESTS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, image)| *image)
    }
}
