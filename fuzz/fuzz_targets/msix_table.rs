#![no_main]
//! Fuzz target: `hushvm::fuzzing::msix_table` (the MSI-X table, PBA and message
//! control) on arbitrary accesses.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hushvm::fuzzing::msix_table(data));
