//! The workloads of `hushvm bench` and their variants.

use super::{Variant, Workload};
use crate::config::{Doorbell, VirtioTransport};

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
        doorbell: Doorbell::Len0,
        queue_poll: true,
        event_idx: true,
        transport: None,
    }
}

const fn doorbell(name: &'static str, doorbell: Doorbell, cmdline: &'static str) -> Variant {
    Variant {
        name,
        coalesce: true,
        pv_eoi: true,
        cmdline,
        doorbell,
        queue_poll: true,
        event_idx: true,
        transport: None,
    }
}

/// A doorbell variant with the event loop's queue polling off: the device serves a
/// request only when its doorbell's ioeventfd reaches epoll.
const fn without_queue_poll(variant: Variant) -> Variant {
    Variant {
        queue_poll: false,
        ..variant
    }
}

/// A variant whose devices offer no VIRTIO_RING_F_EVENT_IDX.
const fn without_event_idx(variant: Variant) -> Variant {
    Variant {
        event_idx: false,
        ..variant
    }
}

/// A variant measured on virtio-mmio whatever `--transport` says: a reference.
const fn on_mmio(variant: Variant) -> Variant {
    Variant {
        transport: Some(VirtioTransport::Mmio),
        ..variant
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
        rng: false,
        disk_bytes: 0,
        pci_variants: None,
        net: false,
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
        rng: false,
        disk_bytes: 0,
        pci_variants: None,
        net: false,
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
        rng: false,
        disk_bytes: 0,
        pci_variants: None,
        net: false,
    },
    // Seed 003: a virtqueue doorbell per small request (4 bytes from virtio-rng).
    Workload {
        name: "doorbell",
        guest: "doorbell",
        count_key: "requests",
        default_iterations: 2_000,
        result_prefix: "doorbell:",
        variants: &[
            doorbell("mmio-exit", Doorbell::Exit, ""),
            doorbell("mmio-ioeventfd-len4", Doorbell::Len4, ""),
            doorbell("mmio-ioeventfd-len0", Doorbell::Len0, ""),
            without_queue_poll(doorbell("mmio-ioeventfd-len0-nopoll", Doorbell::Len0, "")),
            doorbell("pio-ioeventfd", Doorbell::Pio, "doorbell=pio"),
        ],
        rng: true,
        disk_bytes: 0,
        // virtio-pci's notify capability: an MMIO exit, or a length-0 ioeventfd per
        // queue; the I/O-port doorbell on virtio-mmio is the reference.
        pci_variants: Some(&[
            doorbell("pci-notify-exit", Doorbell::Exit, ""),
            doorbell("pci-notify-len0", Doorbell::Len0, ""),
            without_queue_poll(doorbell("pci-notify-len0-nopoll", Doorbell::Len0, "")),
            on_mmio(doorbell(
                "mmio-pio-ioeventfd",
                Doorbell::Pio,
                "doorbell=pio",
            )),
        ]),
        net: false,
    },
    // virtio-blk: 4 KiB blocks written, flushed, read back and checked.
    Workload {
        name: "blk",
        guest: "blk",
        count_key: "requests",
        default_iterations: 256,
        result_prefix: "blk:",
        variants: &[
            doorbell("seq-exit", Doorbell::Exit, "pattern=seq"),
            doorbell("seq-ioeventfd", Doorbell::Len0, "pattern=seq"),
            doorbell("rand-exit", Doorbell::Exit, "pattern=rand"),
            doorbell("rand-ioeventfd", Doorbell::Len0, "pattern=rand"),
        ],
        rng: false,
        disk_bytes: 64 << 20,
        pci_variants: None,
        net: false,
    },
    // String I/O (seed 004's exception): a buffer out with rep outsb, back with rep insw.
    Workload {
        name: "strio",
        guest: "strio",
        count_key: "rounds",
        default_iterations: 64,
        result_prefix: "strio:",
        variants: &[
            variant("rep", true, true, "mode=rep"),
            variant("loop", true, true, "mode=loop"),
        ],
        rng: false,
        disk_bytes: 0,
        pci_variants: None,
        net: false,
    },
    // Issue 11: a console printing through COM1 in Linux's three ways; posted: THR writes
    // wait in the coalesced ring (bounded drain) instead of exiting.
    Workload {
        name: "console",
        guest: "console",
        count_key: "bytes",
        default_iterations: 512,
        result_prefix: "console:",
        variants: &[
            variant("slow-baseline", false, true, "pattern=slow"),
            variant("slow-posted", true, true, "pattern=slow"),
            variant("fifo-baseline", false, true, "pattern=fifo"),
            variant("fifo-posted", true, true, "pattern=fifo"),
            variant("irq-baseline", false, true, "pattern=irq"),
            variant("irq-posted", true, true, "pattern=irq"),
        ],
        rng: false,
        disk_bytes: 0,
        pci_variants: None,
        net: false,
    },
    // Linux's PCI configuration read: the address to 0xcf8 (posted when coalesced), then
    // the data from 0xcfc; the host bridge's ID each time.
    Workload {
        name: "pci",
        guest: "pcicfg",
        count_key: "reads",
        default_iterations: 10_000,
        result_prefix: "pcicfg:",
        variants: &[
            variant("baseline", false, true, ""),
            variant("coalesced", true, true, ""),
        ],
        rng: false,
        disk_bytes: 0,
        pci_variants: None,
        net: false,
    },
    // Issue 18: the net guest floods its tap (UDP to the namespace's host side, port 9,
    // which drops them): one frame per iteration; doorbells as ioeventfds with
    // EVENT_IDX, without it, and as MMIO exits. Needs `--tap`.
    Workload {
        name: "net",
        guest: "net",
        count_key: "flood",
        default_iterations: 4096,
        // Not "net:": the ready line starts so too.
        result_prefix: "net: rx=",
        variants: &[
            doorbell(
                "ioeventfd-event-idx",
                Doorbell::Len0,
                "transport=mmio slot=0",
            ),
            without_event_idx(doorbell(
                "ioeventfd",
                Doorbell::Len0,
                "transport=mmio slot=0 event_idx=0",
            )),
            doorbell("mmio-exit", Doorbell::Exit, "transport=mmio slot=0"),
        ],
        rng: false,
        disk_bytes: 0,
        pci_variants: Some(&[
            doorbell("ioeventfd-event-idx", Doorbell::Len0, ""),
            without_event_idx(doorbell("ioeventfd", Doorbell::Len0, "event_idx=0")),
            doorbell("mmio-exit", Doorbell::Exit, ""),
        ]),
        net: true,
    },
];

/// The workload called `name`.
pub fn workload(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}
