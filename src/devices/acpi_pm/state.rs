//! The ACPI fixed-hardware registers' saved state: PM1 status and enable, PM1 control,
//! the reset-control register, and the PM timer's time (restored as an offset against
//! the new timer's clock, so the guest's clocksource neither jumps nor goes back).

use serde::{Deserialize, Serialize};

use super::{Clock, Pm1Control, Pm1Event, PmTimer, ResetControl, RST_CPU, SLP_EN};
use crate::devices::persist::{check_bits, Persist, StateError};

/// What a [`PmTimer`] saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPmTimer {
    /// Nanoseconds since the timer's zero when saved: the count follows from it.
    pub elapsed_nanos: u64,
}

impl<C: Clock> Persist for PmTimer<C> {
    const KIND: &'static str = "acpi-pm-timer";
    const VERSION: u32 = 1;
    type State = SavedPmTimer;

    fn save(&self) -> SavedPmTimer {
        SavedPmTimer {
            // 2^64 ns is 584 years: the cast cannot truncate a real timer's time.
            elapsed_nanos: self.elapsed_nanos() as u64,
        }
    }

    /// Reads the clock once: the timer's time goes on from the saved time from now.
    fn restore(&mut self, state: &SavedPmTimer) -> Result<(), StateError> {
        let now = self.clock.now().as_nanos() as i128;
        self.offset_nanos = i128::from(state.elapsed_nanos) - now;
        Ok(())
    }
}

/// What a [`Pm1Event`] saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPm1Event {
    pub status: u16,
    pub enable: u16,
}

impl Persist for Pm1Event {
    const KIND: &'static str = "acpi-pm1-event";
    const VERSION: u32 = 1;
    type State = SavedPm1Event;

    fn save(&self) -> SavedPm1Event {
        SavedPm1Event {
            status: self.status,
            enable: self.enable,
        }
    }

    fn restore(&mut self, state: &SavedPm1Event) -> Result<(), StateError> {
        self.status = state.status;
        self.enable = state.enable;
        Ok(())
    }
}

/// What a [`Pm1Control`] saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPm1Control {
    /// The register as written, SLP_EN clear.
    pub value: u16,
    /// A sleep type the device ignored and nobody has warned about yet.
    pub ignored_sleep: Option<u8>,
}

impl Persist for Pm1Control {
    const KIND: &'static str = "acpi-pm1-control";
    const VERSION: u32 = 1;
    type State = SavedPm1Control;

    fn save(&self) -> SavedPm1Control {
        SavedPm1Control {
            value: self.value,
            ignored_sleep: self.ignored_sleep,
        }
    }

    fn restore(&mut self, state: &SavedPm1Control) -> Result<(), StateError> {
        const KIND: &str = Pm1Control::KIND;
        check_bits(KIND, "value", u64::from(state.value), u64::from(!SLP_EN))?;
        if let Some(sleep) = state.ignored_sleep {
            check_bits(KIND, "ignored_sleep", u64::from(sleep), 0b111)?;
        }
        self.value = state.value;
        self.ignored_sleep = state.ignored_sleep;
        Ok(())
    }
}

/// What a [`ResetControl`] saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedResetControl {
    /// The last value written, RST_CPU clear.
    pub value: u8,
}

impl Persist for ResetControl {
    const KIND: &'static str = "reset-control";
    const VERSION: u32 = 1;
    type State = SavedResetControl;

    fn save(&self) -> SavedResetControl {
        SavedResetControl { value: self.value }
    }

    fn restore(&mut self, state: &SavedResetControl) -> Result<(), StateError> {
        let allowed = u64::from(!RST_CPU);
        check_bits(Self::KIND, "value", u64::from(state.value), allowed)?;
        self.value = state.value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bus::StopRequest;
    use crate::devices::acpi_pm::{PWRBTN_STS, SCI_EN, SLP_TYP_SHIFT, TMR_STS};
    use crate::devices::persist::testing::{restores_identically, run, HandClock, Step};

    #[test]
    fn the_pm_timer_goes_on_from_its_count_on_another_clock() {
        let clock = HandClock::at(5_000_000_000);
        let mut timer = PmTimer::new(clock.clone());
        let saved_count = timer.count();
        // The restored timer's clock started later: its own zero is elsewhere.
        let other_clock = HandClock::at(1_000);
        let mut fresh = PmTimer::new(other_clock.clone());
        let steps = [Step::Read(0, 4)];
        let replies = restores_identically(&mut timer, &mut fresh, &steps);
        assert_eq!(
            replies[0].0,
            saved_count.to_le_bytes(),
            "no jump at the restore"
        );
        for _ in 0..3 {
            clock.advance(Duration::from_micros(1_234));
            other_clock.advance(Duration::from_micros(1_234));
            assert_eq!(run(&mut fresh, &steps), run(&mut timer, &steps));
        }
    }

    #[test]
    fn pm1_status_enable_and_control_survive() {
        let mut event = Pm1Event::default();
        event.set_status(PWRBTN_STS | TMR_STS);
        run(&mut event, &[Step::Write(2, vec![0x00, 0x01])]);
        let mut fresh = Pm1Event::default();
        let steps = [
            Step::Read(0, 4),
            Step::Write(0, vec![0x01, 0x00]),
            Step::Read(0, 2),
        ];
        let replies = restores_identically(&mut event, &mut fresh, &steps);
        assert_eq!(replies[0].0, [0x01, 0x01, 0x00, 0x01]);
        assert_eq!(
            replies[2].0,
            [0x00, 0x01],
            "TMR_STS cleared, PWRBTN_STS kept"
        );
        assert!(fresh.sci_pending());

        let mut control = Pm1Control::default();
        let s3 = (3 << SLP_TYP_SHIFT) | SLP_EN;
        run(&mut control, &[Step::Write(0, s3.to_le_bytes().to_vec())]);
        let mut fresh = Pm1Control::default();
        let s5 = (5 << SLP_TYP_SHIFT) | SLP_EN;
        let steps = [Step::Read(0, 2), Step::Write(0, s5.to_le_bytes().to_vec())];
        let replies = restores_identically(&mut control, &mut fresh, &steps);
        assert_eq!(replies[0].0, ((3 << SLP_TYP_SHIFT) | SCI_EN).to_le_bytes());
        assert_eq!(replies[1].1, Some(StopRequest::PowerOff));
        assert_eq!(
            fresh.take_ignored_sleep(),
            Some(3),
            "the warning is still owed"
        );
    }

    #[test]
    fn the_reset_register_survives_and_impossible_values_are_refused() {
        let mut reset = ResetControl::default();
        run(&mut reset, &[Step::Write(0, vec![0x0a])]);
        let mut fresh = ResetControl::default();
        let steps = [Step::Read(0, 1), Step::Write(0, vec![0x06])];
        let replies = restores_identically(&mut reset, &mut fresh, &steps);
        assert_eq!(replies[0].0, [0x0a]);
        assert_eq!(replies[1].1, Some(StopRequest::Reset));
        let refused = fresh.restore(&SavedResetControl { value: RST_CPU });
        assert!(matches!(refused, Err(StateError::Invalid { .. })));
        let refused = Pm1Control::default().restore(&SavedPm1Control {
            value: SLP_EN,
            ignored_sleep: None,
        });
        assert!(matches!(refused, Err(StateError::Invalid { .. })));
    }
}
