#![no_main]
//! Fuzz target: `hushvm::fuzzing::kernel_image` (the bzImage, PVH and Multiboot loaders
//! and the boot parameters they build) on arbitrary bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hushvm::fuzzing::kernel_image(data));
