//! SIGINT, SIGTERM and SIGHUP stop the VM the way a power-off does. The handler only
//! stores the signal's number and writes an eventfd (both async-signal-safe); the event
//! loop's [`SignalStop`] reads them and takes the ordinary stop path, so the vCPUs are
//! joined, the posted ring drained, the disk synced and the outputs flushed before the
//! process exits with 128 + the signal's number.
//!
//! Only the binary installs the handler ([`install`]): a library caller (the tests, the
//! benchmarks) keeps the process's own disposition.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::register_signal_handler;

use crate::run_loop::VmStop;

use super::threads::StopState;

/// The signals that stop the VM.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The last stop signal received and not yet handled (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The eventfd the handler writes; created once, before the handler is installed, and
/// never closed, so the handler never sees a closed or reused fd.
static WAKE: OnceLock<EventFd> = OnceLock::new();

fn wake() -> io::Result<&'static EventFd> {
    if let Some(event) = WAKE.get() {
        return Ok(event);
    }
    let event = EventFd::new(EFD_NONBLOCK)?;
    Ok(WAKE.get_or_init(|| event))
}

/// Async-signal-safe: an atomic store and an eventfd `write(2)`; no allocation, no lock.
extern "C" fn on_stop_signal(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    RECEIVED.store(signal, Ordering::SeqCst);
    if let Some(event) = WAKE.get() {
        let _ = event.write(1);
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP stop the VM (see the module's comment).
pub fn install() -> io::Result<()> {
    wake()?;
    for signal in STOP_SIGNALS {
        register_signal_handler(signal, on_stop_signal)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(())
}

/// The signal's name for messages: "SIGINT", or "signal N" for others.
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        other => format!("signal {other}"),
    }
}

/// The event loop's side: turns a received stop signal into [`VmStop::Signal`].
pub struct SignalStop {
    event: &'static EventFd,
    state: Arc<StopState>,
}

impl SignalStop {
    pub fn new(state: Arc<StopState>) -> io::Result<Self> {
        Ok(Self {
            event: wake()?,
            state,
        })
    }
}

impl MutEventSubscriber for SignalStop {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
        let signal = RECEIVED.swap(0, Ordering::SeqCst);
        if signal != 0 {
            self.state.stop(VmStop::Signal(signal), None);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // A signal that came before the loop started left the eventfd readable.
        let _ = ops.add(Events::new(self.event, EventSet::IN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_stop_exits_as_a_shell_reports_the_signal() {
        assert_eq!(VmStop::Signal(libc::SIGINT).exit_status(), 130);
        assert_eq!(VmStop::Signal(libc::SIGTERM).exit_status(), 143);
        assert_eq!(VmStop::Signal(libc::SIGHUP).exit_status(), 129);
        assert_eq!(signal_name(libc::SIGINT), "SIGINT");
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(libc::SIGUSR1), "signal 10");
    }
}
