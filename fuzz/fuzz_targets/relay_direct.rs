#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sfu_node::fuzzing::relay_direct(data));
