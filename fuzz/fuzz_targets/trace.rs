#![no_main]
//! Fuzz target: `hushvm::fuzzing::trace` (the trace reader, then replay) on arbitrary bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hushvm::fuzzing::trace(data));
