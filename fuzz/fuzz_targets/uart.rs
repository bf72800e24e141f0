#![no_main]
//! Fuzz target: `hushvm::fuzzing::uart_registers` on arbitrary bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hushvm::fuzzing::uart_registers(data));
