//! The RTC's saved state: its registers, its offset against its clock, the frozen date
//! while SET is on, and the events collected and pending.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Clock, Rtc, C_AF, C_PF, C_UF};
use crate::devices::calendar::DateTime;
use crate::devices::persist::{check_bits, Persist, StateError};

const KIND: &str = "rtc";
/// Guest times further than this from the clock (about 34,000 years) are not a date an
/// RTC can show; refusing them keeps the date arithmetic far from overflowing.
const MAX_OFFSET_SECONDS: i64 = 1 << 40;
/// The largest value a time register can decode to (binary 0xff).
const MAX_FIELD: u32 = 0xff;
/// The years a frozen date can hold: century and year registers decode to 0-255 each.
const MAX_YEAR: i64 = 255 * 100 + 255;

/// A date as the guest may have left it while SET was on (fields not normalised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDate {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// What an [`Rtc`] saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRtc {
    /// The selected register (port 0x70 bits 6:0).
    pub index: u8,
    /// Port 0x70 bit 7.
    pub nmi_disabled: bool,
    /// The 128 CMOS bytes (the time registers' bytes are unused).
    pub cmos: Vec<u8>,
    /// Guest time minus the clock's time, in seconds.
    pub offset_seconds: i64,
    /// The date the clock stands still at while register B's SET bit is on.
    pub frozen: Option<SavedDate>,
    /// The clock's time up to which events were collected.
    pub events_collected_to: Duration,
    /// Register C's pending event flags (PF, AF, UF).
    pub flags: u8,
    /// IRQ 8 as the device drove it.
    pub line_high: bool,
}

fn check_date(date: &SavedDate) -> Result<DateTime, StateError> {
    let fields = [date.month, date.day, date.hour, date.minute, date.second];
    if fields.iter().any(|field| *field > MAX_FIELD) || !(0..=MAX_YEAR).contains(&date.year) {
        return Err(StateError::invalid(
            KIND,
            format!("frozen date {date:?} is not one the registers can hold"),
        ));
    }
    Ok(DateTime {
        year: date.year,
        month: date.month,
        day: date.day,
        hour: date.hour,
        minute: date.minute,
        second: date.second,
    })
}

impl<C: Clock> Persist for Rtc<C> {
    const KIND: &'static str = KIND;
    const VERSION: u32 = 1;
    type State = SavedRtc;

    fn save(&self) -> SavedRtc {
        SavedRtc {
            index: self.index,
            nmi_disabled: self.nmi_disabled,
            cmos: self.cmos.to_vec(),
            offset_seconds: self.offset,
            frozen: self.frozen.map(|date| SavedDate {
                year: date.year,
                month: date.month,
                day: date.day,
                hour: date.hour,
                minute: date.minute,
                second: date.second,
            }),
            events_collected_to: self.flags_since,
            flags: self.flags,
            line_high: self.line_high,
        }
    }

    /// The line is not pulsed again: the interrupt controller's state is restored on its
    /// own. The event loop's timer is re-armed through the rearm notifier.
    fn restore(&mut self, state: &SavedRtc) -> Result<(), StateError> {
        let cmos: [u8; 128] = state.cmos.as_slice().try_into().map_err(|_| {
            StateError::invalid(KIND, format!("{} CMOS bytes, not 128", state.cmos.len()))
        })?;
        check_bits(KIND, "index", u64::from(state.index), 0x7f)?;
        check_bits(
            KIND,
            "flags",
            u64::from(state.flags),
            u64::from(C_PF | C_AF | C_UF),
        )?;
        if state.offset_seconds.unsigned_abs() > MAX_OFFSET_SECONDS.unsigned_abs() {
            return Err(StateError::invalid(
                KIND,
                format!("offset of {} s is out of range", state.offset_seconds),
            ));
        }
        let frozen = state.frozen.as_ref().map(check_date).transpose()?;
        self.index = state.index;
        self.nmi_disabled = state.nmi_disabled;
        self.cmos = cmos;
        self.offset = state.offset_seconds;
        self.frozen = frozen;
        // A clock that reads earlier than the saved one (another host's) must not make
        // the next collection count events from the future.
        self.flags_since = state.events_collected_to.min(self.clock.now());
        self.flags = state.flags;
        self.line_high = state.line_high;
        self.notify_rearm();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::bus::{Access, BusDevice};
    use crate::devices::persist::testing::{
        restores_identically, run, through_json, HandClock, Step,
    };
    use crate::devices::persist::{open, restore};
    use crate::devices::rtc::{reg, B_24_HOUR, B_PIE, B_SET};
    use crate::irq::{CountingLine, InterruptLine};

    const EVENING: u64 = 1_795_295_200 * 1_000_000_000;

    fn select(index: u8) -> Step {
        Step::Write(0, vec![index])
    }

    fn counted(clock: &HandClock) -> (Rtc<HandClock>, Arc<CountingLine>) {
        let line = Arc::new(CountingLine::default());
        let mut rtc = Rtc::new(clock.clone());
        rtc.connect_interrupt(line.clone());
        (rtc, line)
    }

    #[test]
    fn a_periodic_interrupt_pending_and_an_index_latched_survive() {
        let clock = HandClock::at(EVENING);
        let (mut rtc, line) = counted(&clock);
        // 2 Hz periodic interrupt, a guest-set time, an NVRAM byte.
        for (index, value) in [(reg::A, 0x2f), (reg::B, B_24_HOUR | B_PIE), (0x40, 0x5a)] {
            rtc.access(0, Access::Write(&[index]));
            rtc.access(1, Access::Write(&[value]));
        }
        rtc.access(0, Access::Write(&[reg::HOURS]));
        rtc.access(1, Access::Write(&[0x07]));
        clock.advance(Duration::from_millis(600));
        rtc.tick();
        assert_eq!(line.pulses(), 1, "the periodic interrupt is pending");
        // Latch register C's index, as a guest's handler does before reading it.
        rtc.access(0, Access::Write(&[reg::C]));

        let rearmed = Arc::new(AtomicU32::new(0));
        let (mut fresh, fresh_line) = counted(&clock);
        let count = rearmed.clone();
        fresh.set_rearm_notifier(Box::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
        }));
        let steps = [
            Step::Read(1, 1),
            Step::Read(1, 1),
            select(reg::HOURS),
            Step::Read(1, 1),
            select(0x40),
            Step::Read(1, 1),
        ];
        let replies = restores_identically(&mut rtc, &mut fresh, &steps);
        assert_eq!(
            replies[0].0,
            [0xc0],
            "IRQF and PF, read through the latched index"
        );
        assert_eq!(replies[1].0, [0x00], "cleared by the read");
        assert_eq!(replies[3].0, [0x07]);
        assert_eq!(replies[5].0, [0x5a]);
        assert_eq!(rearmed.load(Ordering::SeqCst), 1, "the timer is re-armed");
        assert_eq!(fresh.next_event(), rtc.next_event());
        let later = [
            select(reg::C),
            Step::Read(1, 1),
            select(reg::SECONDS),
            Step::Read(1, 1),
        ];
        for _ in 0..4 {
            clock.advance(Duration::from_millis(300));
            rtc.tick();
            fresh.tick();
            assert_eq!(run(&mut fresh, &later), run(&mut rtc, &later));
        }
        assert!(fresh_line.pulses() > 0, "periodic interrupts go on");
        assert_eq!(
            fresh_line.pulses(),
            line.pulses() - 1,
            "the same ones since"
        );
    }

    #[test]
    fn a_frozen_date_being_set_survives() {
        let clock = HandClock::at(EVENING);
        let mut rtc = Rtc::new(clock.clone());
        for (index, value) in [(reg::B, B_24_HOUR | B_SET), (reg::MINUTES, 0x99)] {
            rtc.access(0, Access::Write(&[index]));
            rtc.access(1, Access::Write(&[value]));
        }
        let mut fresh = Rtc::new(clock.clone());
        clock.advance(Duration::from_secs(3));
        let steps = [
            select(reg::MINUTES),
            Step::Read(1, 1),
            select(reg::B),
            Step::Write(1, vec![B_24_HOUR]),
            select(reg::HOURS),
            Step::Read(1, 1),
            select(reg::MINUTES),
            Step::Read(1, 1),
        ];
        let replies = restores_identically(&mut rtc, &mut fresh, &steps);
        assert_eq!(
            replies[1].0,
            [0x99],
            "the unnormalised minute, still frozen"
        );
        assert_eq!(
            replies[7].0,
            [0x39],
            "minute 99 rolled over into the hour on release"
        );
    }

    #[test]
    fn impossible_states_are_refused_and_change_nothing() {
        let clock = HandClock::at(EVENING);
        let mut rtc = Rtc::new(clock.clone());
        let saved = through_json(&rtc);
        let good = open::<Rtc<HandClock>>(&saved).unwrap();
        let bad_states = [
            SavedRtc {
                cmos: vec![0; 127],
                ..good.clone()
            },
            SavedRtc {
                index: 0x80,
                ..good.clone()
            },
            SavedRtc {
                flags: 0x80,
                ..good.clone()
            },
            SavedRtc {
                offset_seconds: i64::MAX,
                ..good.clone()
            },
            SavedRtc {
                frozen: Some(SavedDate {
                    year: i64::MIN,
                    month: 1,
                    day: 1,
                    hour: 0,
                    minute: 0,
                    second: 0,
                }),
                ..good.clone()
            },
        ];
        rtc.access(0, Access::Write(&[0x41]));
        for bad in bad_states {
            assert!(
                matches!(rtc.restore(&bad), Err(StateError::Invalid { .. })),
                "{bad:?}"
            );
            assert_eq!(rtc.state().index, 0x41, "unchanged");
        }
        let mut old = saved.clone();
        old.version = 0;
        let error = restore(&mut rtc, &old).unwrap_err().to_string();
        assert!(
            error.contains("version 0") && error.contains("version 1"),
            "{error}"
        );
    }
}
