#![no_main]
//! Fuzz target: `hushvm::fuzzing::virtio_block` on arbitrary bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hushvm::fuzzing::virtio_block(data));
