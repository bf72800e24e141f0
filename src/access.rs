//! How anything reaches the devices: the buses, with the posted-write ordering rule kept
//! and, when a trace is being made, everything recorded in the order the devices saw it.
//!
//! The exit path, the event loop's services and replay all go through [`DeviceAccess`],
//! so the rule "apply the coalesced ring before touching a device" and the recording of
//! posted writes are written once.

use std::sync::Arc;

use crate::bus::{IoBuses, StopRequest};
use crate::posted::{DrainError, PostedWrites};
use crate::trace::{Record, Recorder};

/// Where a stop request goes that a posted write made off the exit path (a reset written
/// to 0xcf9, applied when an event-loop service drains the ring).
pub trait StopSink: Send + Sync {
    fn request(&self, request: StopRequest);
}

/// The buses, the coalesced ring and the trace being made, if any.
#[derive(Clone)]
pub struct DeviceAccess {
    /// The machine's buses.
    pub buses: Arc<IoBuses>,
    /// The coalesced ring.
    pub posted: Arc<PostedWrites>,
    /// The trace being made, if any.
    pub recorder: Option<Arc<Recorder>>,
    /// Where posted writes' stop requests go.
    pub stops: Option<Arc<dyn StopSink>>,
}

impl std::fmt::Debug for DeviceAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAccess")
            .field("buses", &self.buses)
            .field("posted", &self.posted)
            .finish_non_exhaustive()
    }
}

impl DeviceAccess {
    /// Access with no ring and no trace (replay, tests).
    pub fn plain(buses: Arc<IoBuses>) -> Self {
        Self {
            buses,
            posted: Arc::new(PostedWrites::disabled()),
            recorder: None,
            stops: None,
        }
    }

    /// Applies waiting posted writes, in ring order, recording each. Returns the first
    /// stop request a posted write made, which is also handed to the stop sink (the
    /// caller may be the event loop). Private: only [`DeviceAccess::operation`] drains,
    /// inside the recorder's lock, so the lock order (recorder, drain, device) holds on
    /// every path.
    fn drain_ring(&self) -> Option<StopRequest> {
        let recorder = self.recorder.as_deref();
        let mut first_stop = None;
        self.posted.apply_pending(&self.buses, |write, stop| {
            if let Some(recorder) = recorder {
                recorder.record(&Record::PostedWrite {
                    space: write.space,
                    addr: write.addr,
                    data: write.bytes().to_vec(),
                });
            }
            first_stop = first_stop.or(stop);
        });
        if let (Some(stop), Some(sink)) = (first_stop, &self.stops) {
            sink.request(stop);
        }
        first_stop
    }

    /// One tick of the bounded drain (the event loop, `periods` timer expirations since
    /// the last): applies what waits in the ring, then lets the bounded zones' policy
    /// decide; when it unregisters them, applies the ring once more, since writes posted
    /// before the unregister are still there and no exit may come to apply them.
    pub fn drain_tick(&self, periods: u64) -> Result<(), DrainError> {
        if self.posted.has_pending() {
            self.operation(|_| ());
        }
        let Some(bounded) = self.posted.bounded() else {
            return Ok(());
        };
        if bounded.tick(periods)? {
            self.operation(|_| ());
        }
        Ok(())
    }

    /// Records what `record` builds, when a trace is being made (the closure, and its
    /// allocation, run only then). Call it inside [`DeviceAccess::operation`]: outside
    /// one the recorder refuses the record (and says so when the trace is finished).
    pub fn record(&self, record: impl FnOnce() -> Record) {
        if let Some(recorder) = &self.recorder {
            recorder.record(&record());
        }
    }

    /// The one way to touch devices. Runs `work` as one operation: alone and with its
    /// records written together when a trace is being made (the recorder's lock is
    /// taken here and only here, outermost), after the coalesced ring was drained (the
    /// ordering rule; the drain lock comes second). `work` gets the first stop request
    /// a posted write made. Device locks are taken inside `work`, so they come third.
    pub fn operation<T>(&self, work: impl FnOnce(Option<StopRequest>) -> T) -> T {
        let drained = || work(self.drain_ring());
        match &self.recorder {
            None => drained(),
            Some(recorder) => recorder.operation(drained),
        }
    }

    /// The shape of every event-loop service: drain the ring, do the work, record it.
    pub fn recorded_operation<T>(
        &self,
        operation: impl FnOnce() -> T,
        record: impl FnOnce(&T) -> Record,
    ) -> T {
        self.operation(|_| {
            let result = operation();
            self.record(|| record(&result));
            result
        })
    }
}
