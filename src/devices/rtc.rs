//! MC146818 CMOS RTC and NVRAM at ports 0x70 (index) and 0x71 (data).
//!
//! Time is read from an injected [`Clock`], so every register can be tested without the
//! host clock. The guest's time is the clock plus an offset that the guest sets by
//! writing the time registers.
//!
//! Events (periodic, alarm, update-ended) are collected from the clock whenever the
//! device is touched: on register accesses and when the event loop's timer calls
//! [`Rtc::tick`] at the time [`Rtc::next_event`] asked for. An enabled event raises the
//! IRQ 8 line, which stays high until register C is read; the device pulses its
//! [`InterruptLine`] on each rising edge. Events that happen while the line is high are
//! folded into the flags already pending, so however long the host was busy, the guest
//! gets at most one interrupt for it (no storm), as with QEMU's `lost_tick_policy=discard`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::calendar::DateTime;
use crate::bus::{Access, BusDevice, PostedRegister, StopRequest};
use crate::irq::{CountingLine, InterruptLine};

/// Where the RTC's time comes from: time since the Unix epoch.
pub trait Clock: Send {
    /// Now.
    fn now(&self) -> Duration;
}

/// The host's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// Register numbers.
pub mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const SECONDS_ALARM: u8 = 0x01;
    pub const MINUTES: u8 = 0x02;
    pub const MINUTES_ALARM: u8 = 0x03;
    pub const HOURS: u8 = 0x04;
    pub const HOURS_ALARM: u8 = 0x05;
    pub const WEEKDAY: u8 = 0x06;
    pub const DAY: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const A: u8 = 0x0a;
    pub const B: u8 = 0x0b;
    pub const C: u8 = 0x0c;
    pub const D: u8 = 0x0d;
    pub const CENTURY: u8 = 0x32;
}

const A_UIP: u8 = 0x80;
const A_DIVIDER_MASK: u8 = 0x70;
const A_DIVIDER_NORMAL: u8 = 0x20;
const A_RATE_MASK: u8 = 0x0f;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24_HOUR: u8 = 0x02;
const B_INTERRUPT_ENABLES: u8 = 0x70;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
const D_VALID_RAM_AND_TIME: u8 = 0x80;
const HOUR_PM: u8 = 0x80;
/// An alarm register value that matches any value ("don't care").
const ALARM_ANY: u8 = 0xc0;
/// UIP is set this long before each update (MC146818 datasheet: 244 us).
const UPDATE_WARNING: Duration = Duration::from_micros(244);

const INDEX_PORT: u64 = 0;
const DATA_PORT: u64 = 1;
const NMI_DISABLE: u8 = 0x80;
const INDEX_MASK: u8 = 0x7f;

/// Called when the time of the next interrupt may have changed.
pub type RearmNotifier = Box<dyn Fn() + Send>;

/// The RTC and its 128 bytes of CMOS.
pub struct Rtc<C: Clock> {
    clock: C,
    index: u8,
    nmi_disabled: bool,
    /// Alarm, status and NVRAM bytes. The time registers live in `offset`/`frozen`.
    cmos: [u8; 128],
    /// Guest time minus host time, in seconds.
    offset: i64,
    /// While register B's SET bit is on, the clock stands still at these fields, which the
    /// guest may be rewriting one by one (so they are kept unnormalised).
    frozen: Option<DateTime>,
    /// Events are collected up to this time.
    flags_since: Duration,
    /// Register C's event flags (PF, AF, UF) not yet read.
    flags: u8,
    /// IRQ 8 as the device drives it.
    line_high: bool,
    irq: Arc<dyn InterruptLine>,
    rearm: Option<RearmNotifier>,
}

impl<C: Clock> std::fmt::Debug for Rtc<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtc")
            .field("index", &self.index)
            .field("flags", &self.flags)
            .field("line_high", &self.line_high)
            .finish()
    }
}

/// What a read of the whole device shows, for comparing two runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcState {
    /// The selected register.
    pub index: u8,
    /// Port 0x70 bit 7.
    pub nmi_disabled: bool,
    /// Non-time bytes of the CMOS.
    pub cmos: [u8; 128],
}

impl<C: Clock> Rtc<C> {
    /// An RTC in the state a PC firmware leaves: 24-hour BCD, divider running, 1024 Hz
    /// rate selected, valid RAM and time.
    pub fn new(clock: C) -> Self {
        let mut cmos = [0u8; 128];
        cmos[usize::from(reg::A)] = A_DIVIDER_NORMAL | 0x06;
        cmos[usize::from(reg::B)] = B_24_HOUR;
        cmos[usize::from(reg::D)] = D_VALID_RAM_AND_TIME;
        let flags_since = clock.now();
        Self {
            clock,
            index: 0,
            nmi_disabled: false,
            cmos,
            offset: 0,
            frozen: None,
            flags_since,
            flags: 0,
            line_high: false,
            irq: Arc::new(CountingLine::default()),
            rearm: None,
        }
    }

    /// Drives `irq` for IRQ 8.
    pub fn connect_interrupt(&mut self, irq: Arc<dyn InterruptLine>) {
        self.irq = irq;
    }

    /// Calls `notify` whenever the guest changes what the next interrupt depends on.
    pub fn set_rearm_notifier(&mut self, notify: RearmNotifier) {
        self.rearm = Some(notify);
    }

    /// Interrupts raised so far.
    pub fn interrupts(&self) -> u64 {
        self.irq.pulses()
    }

    /// Collects the events due by now; the event loop calls it when its timer expires.
    pub fn tick(&mut self) {
        self.collect_events();
    }

    /// How long from now until the next event an enabled interrupt watches; `None` when
    /// no interrupt is enabled. The timer keeps this rhythm even while the line is high
    /// (an event then only sets flags), so reading register C never has to re-arm it.
    pub fn next_event(&self) -> Option<Duration> {
        let b = self.register_b();
        let now = self.clock.now();
        let until = |period: Duration| {
            let period_ns = period.as_nanos();
            Duration::from_nanos((period_ns - now.as_nanos() % period_ns) as u64)
        };
        let periodic = (b & B_PIE != 0)
            .then(|| self.periodic_period())
            .flatten()
            .map(until);
        let per_second = (b & (B_AIE | B_UIE) != 0 && self.frozen.is_none())
            .then(|| until(Duration::from_secs(1)));
        periodic.into_iter().chain(per_second).min()
    }

    fn notify_rearm(&self) {
        if let Some(notify) = &self.rearm {
            notify();
        }
    }

    /// Records the RAM size in the CMOS fields PC firmware reads (base, extended and
    /// above-16-MiB memory), as QEMU does.
    pub fn set_memory_size(&mut self, bytes: u64) {
        let put16 = |cmos: &mut [u8; 128], at: usize, value: u64| {
            let value = value.min(0xffff) as u16;
            cmos[at..at + 2].copy_from_slice(&value.to_le_bytes());
        };
        put16(&mut self.cmos, 0x15, 640);
        let extended_kib = bytes.saturating_sub(1 << 20) / 1024;
        put16(&mut self.cmos, 0x17, extended_kib);
        put16(&mut self.cmos, 0x30, extended_kib);
        put16(&mut self.cmos, 0x34, bytes.saturating_sub(16 << 20) >> 16);
    }

    /// The device state that does not depend on the clock.
    pub fn state(&self) -> RtcState {
        RtcState {
            index: self.index,
            nmi_disabled: self.nmi_disabled,
            cmos: self.cmos,
        }
    }

    fn register_b(&self) -> u8 {
        self.cmos[usize::from(reg::B)]
    }

    /// Guest time: seconds since the epoch, and nanoseconds into the second.
    fn guest_now(&self) -> (i64, u32) {
        let now = self.clock.now();
        (now.as_secs() as i64 + self.offset, now.subsec_nanos())
    }

    fn guest_date(&self) -> DateTime {
        self.frozen
            .unwrap_or_else(|| DateTime::from_unix(self.guest_now().0))
    }

    fn set_guest_date(&mut self, date: DateTime) {
        if self.frozen.is_some() {
            self.frozen = Some(date);
        } else {
            self.offset = date.to_unix() - self.clock.now().as_secs() as i64;
        }
    }

    fn encode(&self, value: u32) -> u8 {
        let value = (value % 100) as u8;
        if self.register_b() & B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn decode(&self, value: u8) -> u32 {
        if self.register_b() & B_BINARY != 0 {
            u32::from(value)
        } else {
            u32::from(value >> 4) * 10 + u32::from(value & 0xf)
        }
    }

    fn encode_hour(&self, hour: u32) -> u8 {
        if self.register_b() & B_24_HOUR != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let twelve = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(twelve) | pm
    }

    fn decode_hour(&self, value: u8) -> u32 {
        if self.register_b() & B_24_HOUR != 0 {
            return self.decode(value);
        }
        let twelve = self.decode(value & !HOUR_PM) % 12;
        twelve + if value & HOUR_PM != 0 { 12 } else { 0 }
    }

    fn update_in_progress(&self) -> bool {
        let divider_running = self.cmos[usize::from(reg::A)] & A_DIVIDER_MASK == A_DIVIDER_NORMAL;
        let (_, nanos) = self.guest_now();
        self.frozen.is_none()
            && divider_running
            && Duration::from_nanos(u64::from(nanos)) >= Duration::from_secs(1) - UPDATE_WARNING
    }

    /// The periodic interrupt's period for register A's rate select, if any.
    fn periodic_period(&self) -> Option<Duration> {
        let rate = self.cmos[usize::from(reg::A)] & A_RATE_MASK;
        let hz: u64 = match rate {
            0 => return None,
            1 => 256,
            2 => 128,
            r => 32_768 >> (r - 1),
        };
        Some(Duration::from_nanos(1_000_000_000 / hz))
    }

    fn alarm_matches(&self, date: &DateTime) -> bool {
        let field = |alarm: u8, value: u8| {
            let alarm = self.cmos[usize::from(alarm)];
            alarm & ALARM_ANY == ALARM_ANY || alarm == value
        };
        field(reg::SECONDS_ALARM, self.encode(date.second))
            && field(reg::MINUTES_ALARM, self.encode(date.minute))
            && field(reg::HOURS_ALARM, self.encode_hour(date.hour))
    }

    /// Adds the events since the last collection to register C's flags, and moves the
    /// line.
    fn collect_events(&mut self) {
        let now = self.clock.now();
        let since = std::mem::replace(&mut self.flags_since, now);
        if self.frozen.is_none() && now.as_secs() > since.as_secs() {
            self.flags |= C_UF;
            if self.alarm_matches(&self.guest_date()) {
                self.flags |= C_AF;
            }
        }
        if let Some(period) = self.periodic_period() {
            if now.as_nanos() / period.as_nanos() > since.as_nanos() / period.as_nanos() {
                self.flags |= C_PF;
            }
        }
        self.update_line();
    }

    /// Raises the line when an enabled event is pending (pulsing on the rising edge), and
    /// lowers it when none is.
    fn update_line(&mut self) {
        let high = self.flags & self.register_b() & B_INTERRUPT_ENABLES != 0;
        if high && !self.line_high {
            self.irq.pulse();
        }
        self.line_high = high;
    }

    /// Register C: the pending events, then cleared, and the line lowered.
    fn read_flags(&mut self) -> u8 {
        self.collect_events();
        let irqf = if self.line_high { C_IRQF } else { 0 };
        self.line_high = false;
        std::mem::take(&mut self.flags) | irqf
    }

    fn is_time_register(index: u8) -> bool {
        matches!(
            index,
            reg::SECONDS
                | reg::MINUTES
                | reg::HOURS
                | reg::WEEKDAY
                | reg::DAY
                | reg::MONTH
                | reg::YEAR
                | reg::CENTURY
        )
    }

    fn read_time_register(&self, index: u8) -> u8 {
        let date = self.guest_date();
        match index {
            reg::SECONDS => self.encode(date.second),
            reg::MINUTES => self.encode(date.minute),
            reg::HOURS => self.encode_hour(date.hour),
            reg::WEEKDAY => self.encode(date.weekday()),
            reg::DAY => self.encode(date.day),
            reg::MONTH => self.encode(date.month),
            reg::YEAR => self.encode(date.year.rem_euclid(100) as u32),
            _ => self.encode(date.year.div_euclid(100) as u32),
        }
    }

    fn read_register(&mut self, index: u8) -> u8 {
        match index {
            _ if Self::is_time_register(index) => self.read_time_register(index),
            reg::A => {
                let uip = if self.update_in_progress() { A_UIP } else { 0 };
                self.cmos[usize::from(reg::A)] & !A_UIP | uip
            }
            reg::C => self.read_flags(),
            reg::D => D_VALID_RAM_AND_TIME,
            _ => self.cmos[usize::from(index)],
        }
    }

    fn write_register(&mut self, index: u8, value: u8) {
        match index {
            // The weekday follows from the date here; a written one is not kept.
            reg::WEEKDAY => {}
            _ if Self::is_time_register(index) => self.write_time_register(index, value),
            reg::A => {
                self.collect_events();
                self.cmos[usize::from(reg::A)] = value & !A_UIP;
                self.notify_rearm();
            }
            reg::B => {
                self.collect_events();
                self.write_register_b(value);
                self.update_line();
                self.notify_rearm();
            }
            reg::C | reg::D => {}
            _ => self.cmos[usize::from(index)] = value,
        }
    }

    fn write_time_register(&mut self, index: u8, value: u8) {
        let mut date = self.guest_date();
        match index {
            reg::SECONDS => date.second = self.decode(value),
            reg::MINUTES => date.minute = self.decode(value),
            reg::HOURS => date.hour = self.decode_hour(value),
            reg::DAY => date.day = self.decode(value),
            reg::MONTH => date.month = self.decode(value),
            reg::YEAR => {
                date.year = date.year.div_euclid(100) * 100 + i64::from(self.decode(value))
            }
            _ => date.year = i64::from(self.decode(value)) * 100 + date.year.rem_euclid(100),
        }
        self.set_guest_date(date);
    }

    fn write_register_b(&mut self, value: u8) {
        let value = if value & B_SET != 0 {
            value & !B_UIE
        } else {
            value
        };
        match (self.frozen, value & B_SET != 0) {
            (None, true) => self.frozen = Some(self.guest_date()),
            (Some(date), false) => {
                self.frozen = None;
                self.set_guest_date(date);
            }
            _ => {}
        }
        self.cmos[usize::from(reg::B)] = value;
    }
}

impl<C: Clock> BusDevice for Rtc<C> {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match (offset, access) {
            (INDEX_PORT, Access::Write(data)) => {
                if let Some(&value) = data.first() {
                    self.index = value & INDEX_MASK;
                    self.nmi_disabled = value & NMI_DISABLE != 0;
                }
            }
            // The index port is write-only; QEMU reads it as 0xff.
            (INDEX_PORT, Access::Read(data)) => data.fill(0xff),
            (DATA_PORT, Access::Write(data)) => {
                if let Some(&value) = data.first() {
                    self.write_register(self.index, value);
                }
            }
            (DATA_PORT, Access::Read(data)) => {
                let value = self.read_register(self.index);
                data.fill(value);
            }
            (_, Access::Read(data)) => data.fill(0xff),
            (_, Access::Write(_)) => {}
        }
        None
    }

    fn posted_registers(&self) -> &[PostedRegister] {
        // Writing the index only latches it (seed 000).
        const INDEX: [PostedRegister; 1] = [PostedRegister::latch(INDEX_PORT, 1)];
        &INDEX
    }
}

mod state;
pub use state::{SavedDate, SavedRtc};

#[cfg(test)]
mod tests;
