//! How anything reaches the devices: the buses, with the posted-write ordering rule kept
//! and, when a trace is being made, everything recorded in the order the devices saw it.
//!
//! The exit path, the event loop's services and replay all go through [`DeviceAccess`],
//! so the rule "apply the coalesced ring before touching a device" and the recording of
//! posted writes are written once.

use std::sync::Arc;

use crate::bus::IoBuses;
use crate::coalesced::PostedWrites;
use crate::trace::{Record, Recorder};

/// The buses, the coalesced ring and the trace being made, if any.
#[derive(Debug, Clone)]
pub struct DeviceAccess {
    /// The machine's buses.
    pub buses: Arc<IoBuses>,
    /// The coalesced ring.
    pub posted: Arc<PostedWrites>,
    /// The trace being made, if any.
    pub recorder: Option<Arc<Recorder>>,
}

impl DeviceAccess {
    /// Access with no ring and no trace (replay, tests).
    pub fn plain(buses: Arc<IoBuses>) -> Self {
        Self {
            buses,
            posted: Arc::new(PostedWrites::disabled()),
            recorder: None,
        }
    }

    /// Applies waiting posted writes, in ring order, recording each; call before
    /// touching a device.
    pub fn settle(&self) {
        let recorder = self.recorder.as_deref();
        self.posted.apply_pending(&self.buses, |write| {
            if let Some(recorder) = recorder {
                recorder.record(&Record::PostedWrite {
                    space: write.space,
                    addr: write.addr,
                    data: write.bytes().to_vec(),
                });
            }
        });
    }

    /// Records what `record` builds, when a trace is being made (the closure, and its
    /// allocation, run only then).
    pub fn record(&self, record: impl FnOnce() -> Record) {
        if let Some(recorder) = &self.recorder {
            recorder.record(&record());
        }
    }

    /// Runs `operation` as one traced operation: alone, its records written together.
    /// Without a trace it just runs.
    pub fn operation<T>(&self, operation: impl FnOnce() -> T) -> T {
        match &self.recorder {
            None => operation(),
            Some(recorder) => recorder.operation(operation),
        }
    }

    /// The shape of every event-loop service: settle the ring, do the work, record it.
    pub fn operate<T>(
        &self,
        operation: impl FnOnce() -> T,
        record: impl FnOnce(&T) -> Record,
    ) -> T {
        self.operation(|| {
            self.settle();
            let result = operation();
            self.record(|| record(&result));
            result
        })
    }
}
