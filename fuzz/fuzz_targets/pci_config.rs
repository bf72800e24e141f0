#![no_main]
//! Fuzz target: `hushvm::fuzzing::pci_config` (configuration space through 0xcf8-0xcff
//! and ECAM) on arbitrary accesses.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hushvm::fuzzing::pci_config(data));
