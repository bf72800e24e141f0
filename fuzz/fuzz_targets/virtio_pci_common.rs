#![no_main]
//! Fuzz target: `hushvm::fuzzing::virtio_pci_common` (the virtio-pci transport's BAR
//! and configuration space) on arbitrary accesses.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hushvm::fuzzing::virtio_pci_common(data));
