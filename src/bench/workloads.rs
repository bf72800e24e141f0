//! The workloads of `hushvm bench` and their variants.

use super::{Variant, Workload};

const fn variant(
    name: &'static str,
    coalesce: bool,
    pv_eoi: bool,
    cmdline: &'static str,
) -> Variant {
    Variant {
        name,
        coalesce,
        pv_eoi,
        cmdline,
    }
}

/// Every workload.
pub const WORKLOADS: &[Workload] = &[
    // Seed 000: write an RTC index to 0x70, read 0x71.
    Workload {
        name: "rtc",
        guest: "rtc",
        count_key: "iterations",
        default_iterations: 10_000,
        result_prefix: "rtc:",
        variants: &[
            variant("baseline", false, true, ""),
            variant("coalesced", true, true, ""),
        ],
    },
    // Seed 002: LAPIC timer interrupts, EOI written or skipped through PV EOI.
    Workload {
        name: "eoi",
        guest: "eoi",
        count_key: "interrupts",
        default_iterations: 2_000,
        result_prefix: "eoi:",
        variants: &[
            variant("baseline", true, false, "mode=xapic"),
            variant("pv-eoi", true, true, "mode=xapic"),
            variant("baseline-x2apic", true, false, "mode=x2apic"),
            variant("pv-eoi-x2apic", true, true, "mode=x2apic"),
        ],
    },
    // Seed 000's Windows pattern: the RTC periodic interrupt as the tick.
    Workload {
        name: "tick",
        guest: "tick",
        count_key: "ticks",
        default_iterations: 1_024,
        result_prefix: "tick:",
        variants: &[
            variant("baseline", false, false, ""),
            variant("pv-eoi", false, true, ""),
            variant("coalesced", true, false, ""),
            variant("all", true, true, ""),
        ],
    },
];

/// The workload called `name`.
pub fn workload(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}
