//! Device state that can be saved and restored, for snapshots.
//!
//! Every device implements [`Persist`]: `save` copies its state
//! into a plain serde struct (no fds, clocks or interrupt lines: those are the machine's
//! wiring, rebuilt when the machine is), and `restore` puts a saved state into a freshly
//! built device of the same kind and configuration. A saved state comes from a file, and
//! its contents from a guest that may have been hostile, so `restore` checks every field
//! first and changes nothing when one is wrong: a restored device must never panic later
//! on an index, a size or a length the saved state made up.
//!
//! On disk (or in a snapshot), a state travels in a [`SavedState`] envelope:
//! `{ "version": 1, "kind": "rtc", "state": { ... } }`. The version is per kind and goes
//! up whenever a kind's state struct changes shape or meaning; a state of another
//! version is refused with both versions named, never read as if it were this one.
//!
//! A PCI function's restore has an effect for the machine (its BAR moves), so it is no
//! [`Persist`] one: its `save_state`/`restore_state` return them, and [`envelope`] and
//! [`open_as`] give it the same envelope.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A saved state that cannot be restored.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("saved {kind} state is version {found}; this hushvm reads version {expected}")]
    Version {
        kind: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("saved state is for a \"{found}\" device, not a \"{expected}\"")]
    Kind {
        expected: &'static str,
        found: String,
    },
    #[error("saved {kind} state is not the JSON this hushvm reads or writes")]
    Format {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("saved {kind} state: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

impl StateError {
    /// A field of a `kind` state that this device cannot take.
    pub fn invalid(kind: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            kind,
            reason: reason.into(),
        }
    }
}

/// A device whose state can be saved and put into a fresh device.
pub trait Persist {
    /// The device kind, as named in the envelope ("rtc", "uart", ...).
    const KIND: &'static str;
    /// The version of [`Persist::State`]'s shape and meaning.
    const VERSION: u32;
    /// The saved state: plain data.
    type State: Serialize + DeserializeOwned;

    /// The device's state now.
    fn save(&self) -> Self::State;

    /// Takes `state`, checking all of it first: on an error the device is unchanged.
    /// The device is one built as the saved one was (same configuration and wiring).
    fn restore(&mut self, state: &Self::State) -> Result<(), StateError>;
}

/// A device's state with its kind and version: what a snapshot stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    pub version: u32,
    pub kind: String,
    pub state: serde_json::Value,
}

/// `device`'s state in its envelope.
pub fn save<D: Persist>(device: &D) -> Result<SavedState, StateError> {
    envelope(D::KIND, D::VERSION, &device.save())
}

/// The state in `saved`, once its kind and version are `D`'s.
pub fn open<D: Persist>(saved: &SavedState) -> Result<D::State, StateError> {
    open_as(D::KIND, D::VERSION, saved)
}

/// `state` in an envelope of `kind` and `version`: for a device whose restore is not a
/// [`Persist`] one (a PCI function's gives back BAR moves).
pub fn envelope<S: Serialize>(
    kind: &'static str,
    version: u32,
    state: &S,
) -> Result<SavedState, StateError> {
    let state =
        serde_json::to_value(state).map_err(|source| StateError::Format { kind, source })?;
    Ok(SavedState {
        version,
        kind: kind.to_owned(),
        state,
    })
}

/// The state in `saved`, once its kind and version are `kind` and `version`.
pub fn open_as<S: DeserializeOwned>(
    kind: &'static str,
    version: u32,
    saved: &SavedState,
) -> Result<S, StateError> {
    if saved.kind != kind {
        return Err(StateError::Kind {
            expected: kind,
            found: saved.kind.clone(),
        });
    }
    if saved.version != version {
        return Err(StateError::Version {
            kind,
            found: saved.version,
            expected: version,
        });
    }
    S::deserialize(&saved.state).map_err(|source| StateError::Format { kind, source })
}

/// Restores `device` from `saved` (kind, version, then every field checked).
pub fn restore<D: Persist>(device: &mut D, saved: &SavedState) -> Result<(), StateError> {
    device.restore(&open::<D>(saved)?)
}

/// A [`Persist`] device through its envelope, for devices held as trait objects (an
/// inventory's, a PCI slot's): every [`Persist`] device is one.
pub trait DynPersist {
    /// [`Persist::KIND`].
    fn persist_kind(&self) -> &'static str;
    /// [`save`].
    fn save_saved(&self) -> Result<SavedState, StateError>;
    /// [`restore`].
    fn restore_saved(&mut self, saved: &SavedState) -> Result<(), StateError>;
}

impl<D: Persist> DynPersist for D {
    fn persist_kind(&self) -> &'static str {
        D::KIND
    }

    fn save_saved(&self) -> Result<SavedState, StateError> {
        save(self)
    }

    fn restore_saved(&mut self, saved: &SavedState) -> Result<(), StateError> {
        restore(self, saved)
    }
}

/// Checks that a `field` of `len` entries has at most `max`.
pub(crate) fn check_len(
    kind: &'static str,
    field: &str,
    len: usize,
    max: usize,
) -> Result<(), StateError> {
    match len <= max {
        true => Ok(()),
        false => Err(StateError::invalid(
            kind,
            format!("{field} holds {len} entries, at most {max} fit"),
        )),
    }
}

/// Checks that `value` has no bits outside `allowed`.
pub(crate) fn check_bits(
    kind: &'static str,
    field: &str,
    value: u64,
    allowed: u64,
) -> Result<(), StateError> {
    match value & !allowed {
        0 => Ok(()),
        extra => Err(StateError::invalid(
            kind,
            format!("{field} = {value:#x} has bits {extra:#x} that the register cannot hold"),
        )),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! What every device's save-and-restore test does.

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::bus::{Access, BusDevice, StopRequest};
    use crate::devices::rtc::Clock;

    /// A clock the test moves by hand, shared by the original and the restored device.
    #[derive(Debug, Clone, Default)]
    pub struct HandClock(Arc<AtomicU64>);

    impl HandClock {
        pub fn at(nanos: u64) -> Self {
            Self(Arc::new(AtomicU64::new(nanos)))
        }

        pub fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for HandClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    /// One guest access.
    #[derive(Debug, Clone)]
    pub enum Step {
        Read(u64, usize),
        Write(u64, Vec<u8>),
    }

    /// What a device answered to one step: the bytes read (empty for a write) and the
    /// stop it asked for.
    pub type Reply = (Vec<u8>, Option<StopRequest>);

    /// Runs `steps` on `device`.
    pub fn run(device: &mut dyn BusDevice, steps: &[Step]) -> Vec<Reply> {
        steps
            .iter()
            .map(|step| match step {
                Step::Read(offset, len) => {
                    let mut data = vec![0; *len];
                    let stop = device.access(*offset, Access::Read(&mut data));
                    (data, stop)
                }
                Step::Write(offset, data) => {
                    (Vec::new(), device.access(*offset, Access::Write(data)))
                }
            })
            .collect()
    }

    /// `device`'s state through JSON text and back, as a snapshot file carries it.
    pub fn through_json<D: Persist>(device: &D) -> SavedState {
        let text = serde_json::to_string(&save(device).expect("a state serializes"))
            .expect("an envelope serializes");
        serde_json::from_str(&text).expect("an envelope parses")
    }

    /// Saves `original`, restores it into `fresh` through JSON, and checks that `steps`
    /// give the same replies on both afterwards; returns the replies.
    pub fn restores_identically<D: Persist + BusDevice>(
        original: &mut D,
        fresh: &mut D,
        steps: &[Step],
    ) -> Vec<Reply> {
        let saved = through_json(original);
        restore(fresh, &saved).expect("a saved state restores");
        let expected = run(original, steps);
        assert_eq!(run(fresh, steps), expected, "replies after the restore");
        expected
    }
}

#[cfg(test)]
mod hostile;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Counter(u8);

    impl Persist for Counter {
        const KIND: &'static str = "counter";
        const VERSION: u32 = 3;
        type State = u8;

        fn save(&self) -> u8 {
            self.0
        }

        fn restore(&mut self, state: &u8) -> Result<(), StateError> {
            check_bits(Self::KIND, "count", u64::from(*state), 0x0f)?;
            self.0 = *state;
            Ok(())
        }
    }

    #[test]
    fn the_envelope_carries_kind_version_and_state() {
        let saved = save(&Counter(7)).unwrap();
        let json = serde_json::to_value(&saved).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "version": 3, "kind": "counter", "state": 7 })
        );
        let mut fresh = Counter::default();
        let object: &mut dyn DynPersist = &mut fresh;
        assert_eq!(object.persist_kind(), "counter");
        object.restore_saved(&saved).unwrap();
        assert_eq!(object.save_saved().unwrap(), saved);
        assert_eq!(fresh.0, 7);
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        let mut saved = save(&Counter(7)).unwrap();
        saved.version = 4;
        let error = restore(&mut Counter::default(), &saved).unwrap_err();
        assert!(matches!(
            error,
            StateError::Version {
                found: 4,
                expected: 3,
                ..
            }
        ));
        let text = error.to_string();
        assert!(
            text.contains("version 4") && text.contains("version 3"),
            "{text}"
        );
    }

    #[test]
    fn another_kind_a_bad_shape_and_a_bad_field_are_refused_and_change_nothing() {
        let mut device = Counter(1);
        let mut saved = save(&Counter(7)).unwrap();
        saved.kind = "rtc".into();
        assert!(matches!(
            restore(&mut device, &saved),
            Err(StateError::Kind { .. })
        ));
        saved.kind = "counter".into();
        saved.state = serde_json::json!({ "count": 7 });
        assert!(matches!(
            restore(&mut device, &saved),
            Err(StateError::Format { .. })
        ));
        saved.state = serde_json::json!(0x17);
        assert!(matches!(
            restore(&mut device, &saved),
            Err(StateError::Invalid { .. })
        ));
        assert_eq!(device.0, 1);
    }
}
