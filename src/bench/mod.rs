//! Benchmarks: workloads run in fresh VMs, variant against variant, in one invocation.

pub mod rtc;
