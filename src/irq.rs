//! Interrupt lines as devices see them. A device raises its line through this trait and
//! never learns how: under KVM it is an irqfd (`kvm::IrqFd`), in tests a counter.
//!
//! The PC's ISA lines used here (COM1 on IRQ 4, the RTC on IRQ 8) are edge-triggered: a
//! device keeps its own notion of the line's level and pulses on each rising edge.

use std::sync::atomic::{AtomicU64, Ordering};

/// An edge-triggered interrupt line.
pub trait InterruptLine: Send + Sync {
    /// Signals one edge.
    fn pulse(&self);
    /// Edges signalled so far.
    fn pulses(&self) -> u64;
}

/// A line that only counts, for tests and for machines without an irqchip.
#[derive(Debug, Default)]
pub struct CountingLine {
    count: AtomicU64,
}

impl InterruptLine for CountingLine {
    fn pulse(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn pulses(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}
