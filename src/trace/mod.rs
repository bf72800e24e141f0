//! Exit traces: recording what reached userspace (and what else changed device state),
//! and replaying it through fresh buses and devices with no KVM.

pub mod device_list;
pub mod format;

use crate::sync::LockExt;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::devices::rtc::{Clock, SystemClock};
pub use device_list::{TracedKind, TracedVirtio};
pub use format::{ExitDirection, MachineDescription, Record, TraceError, TraceReader, TraceWriter};

thread_local! {
    /// Records made inside an [`Recorder::operation`] on this thread, written when it ends.
    static PENDING: RefCell<Option<Vec<Record>>> = const { RefCell::new(None) };
}

/// Appends records to a trace file, from any thread. Recording is a diagnostic mode: it
/// serialises every operation on devices (each exit, each event-loop event) through one
/// lock, which the exit path otherwise never takes, so that the trace's order is the
/// order in which the devices saw things.
#[derive(Debug)]
pub struct Recorder {
    writer: Mutex<Option<TraceWriter<BufWriter<File>>>>,
    failed: AtomicBool,
    /// A record was made outside an operation, and refused.
    outside: AtomicBool,
}

impl Recorder {
    /// Creates `path` and writes the header.
    pub fn create(path: &Path, machine: &MachineDescription) -> io::Result<Arc<Self>> {
        let writer = TraceWriter::new(BufWriter::new(File::create(path)?), machine)?;
        Ok(Arc::new(Self {
            writer: Mutex::new(Some(writer)),
            failed: AtomicBool::new(false),
            outside: AtomicBool::new(false),
        }))
    }

    /// Appends `record` to the current operation's records, written when it ends. The
    /// recorder's lock is taken only by [`Recorder::operation`], outermost: a record made
    /// outside an operation (which could hold a device or drain lock and would then take
    /// the recorder's lock in the wrong order) is refused, and [`Recorder::finish`]
    /// reports the trace incomplete.
    pub fn record(&self, record: &Record) {
        let queued = PENDING.with(|pending| match pending.borrow_mut().as_mut() {
            Some(pending) => {
                pending.push(record.clone());
                true
            }
            None => false,
        });
        if !queued {
            self.outside.store(true, Ordering::Relaxed);
        }
    }

    /// Runs `operation` (which touches devices and records what it did) alone, and writes
    /// its records together. Inside another operation on this thread it just runs: its
    /// records join the outer one's.
    pub fn operation<T>(&self, operation: impl FnOnce() -> T) -> T {
        let nested = PENDING.with(|pending| pending.borrow().is_some());
        if nested {
            return operation();
        }
        let mut writer = self.writer.locked();
        PENDING.with(|pending| *pending.borrow_mut() = Some(Vec::new()));
        let result = operation();
        let records = PENDING
            .with(|pending| pending.borrow_mut().take())
            .unwrap_or_default();
        self.write_all(&mut writer, &records);
        result
    }

    fn write_all(&self, writer: &mut Option<TraceWriter<BufWriter<File>>>, records: &[Record]) {
        if let Some(writer) = writer.as_mut() {
            if records.iter().any(|record| writer.write(record).is_err()) {
                self.failed.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Flushes the file; says whether any record was lost.
    pub fn finish(&self) -> io::Result<()> {
        let writer = self.writer.locked().take();
        if let Some(writer) = writer {
            writer.finish()?;
        }
        if self.failed.load(Ordering::Relaxed) {
            return Err(io::Error::other("some trace records could not be written"));
        }
        if self.outside.load(Ordering::Relaxed) {
            return Err(io::Error::other(
                "some trace records were made outside an operation on devices (a bug)",
            ));
        }
        Ok(())
    }
}

/// The RTC's clock in a machine: the host clock, each reading recorded when a trace is
/// being made (so that a replay reads the same times). Its first reading, taken when the
/// RTC is built, is `start`, which the trace header carries.
#[derive(Debug)]
pub struct MachineClock {
    start: Duration,
    started: AtomicBool,
    recorder: Option<Arc<Recorder>>,
}

impl MachineClock {
    /// A clock whose first reading is `start`, recording into `recorder` after that.
    pub fn new(start: Duration, recorder: Option<Arc<Recorder>>) -> Self {
        Self {
            start,
            started: AtomicBool::new(false),
            recorder,
        }
    }
}

impl Clock for MachineClock {
    fn now(&self) -> Duration {
        if !self.started.swap(true, Ordering::Relaxed) {
            return self.start;
        }
        let now = SystemClock.now();
        if let Some(recorder) = &self.recorder {
            recorder.record(&Record::Clock(now.as_nanos() as u64));
        }
        now
    }
}

/// A clock whose every reading is recorded when a trace is being made (the PM timer's
/// monotonic clock): a replay hands the device the same readings in the same order.
#[derive(Debug)]
pub struct RecordedClock<S: Clock> {
    source: S,
    recorder: Option<Arc<Recorder>>,
}

impl<S: Clock> RecordedClock<S> {
    /// Readings of `source`, recorded into `recorder`.
    pub fn new(source: S, recorder: Option<Arc<Recorder>>) -> Self {
        Self { source, recorder }
    }
}

impl<S: Clock> Clock for RecordedClock<S> {
    fn now(&self) -> Duration {
        let now = self.source.now();
        if let Some(recorder) = &self.recorder {
            recorder.record(&Record::Clock(now.as_nanos() as u64));
        }
        now
    }
}

/// The devices' clocks in a replay: the recorded readings, in order (the RTC and the PM
/// timer share one queue, as their readings share the trace).
#[derive(Debug, Clone)]
pub struct ReplayClock {
    readings: Arc<Mutex<(VecDeque<u64>, u64)>>,
}

impl ReplayClock {
    /// A clock that starts at `start` (ns since the epoch).
    pub fn new(start: u64) -> Self {
        Self {
            readings: Arc::new(Mutex::new((VecDeque::new(), start))),
        }
    }

    /// Queues a recorded reading.
    pub fn push(&self, nanos: u64) {
        self.readings.locked().0.push_back(nanos);
    }
}

impl Clock for ReplayClock {
    fn now(&self) -> Duration {
        let mut readings = self.readings.locked();
        // Past the recorded readings, time stands still at the last one.
        if let Some(next) = readings.0.pop_front() {
            readings.1 = next;
        }
        Duration::from_nanos(readings.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(name: &str) -> (Arc<Recorder>, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("hushvm-{name}-{}.trace", std::process::id()));
        let machine = MachineDescription {
            memory: 1 << 20,
            cpus: 1,
            rng: false,
            console: false,
            pci: false,
            event_idx: false,
            disk_bytes: 0,
            clock_start: 0,
            virtio: Vec::new(),
        };
        (Recorder::create(&path, &machine).unwrap(), path)
    }

    #[test]
    fn a_nested_operation_joins_the_outer_one() {
        let (recorder, path) = recorder("nested");
        recorder.operation(|| {
            recorder.record(&Record::RtcTick);
            recorder.operation(|| recorder.record(&Record::Clock(5)));
        });
        recorder.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let (mut reader, _) = TraceReader::new(&bytes).unwrap();
        let mut records = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            records.push(record);
        }
        assert_eq!(records, vec![Record::RtcTick, Record::Clock(5)]);
    }

    #[test]
    fn a_record_outside_an_operation_is_refused_and_reported() {
        let (recorder, path) = recorder("outside");
        recorder.record(&Record::RtcTick);
        let error = recorder.finish().unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(
            error.to_string().contains("outside an operation"),
            "{error}"
        );
    }
}
