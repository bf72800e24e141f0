#![no_main]
//! Fuzz target: `hushvm::fuzzing::virtio_small_devices` on arbitrary bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hushvm::fuzzing::virtio_small_devices(data));
