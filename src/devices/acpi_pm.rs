//! The ACPI fixed-hardware registers the FADT points at (ACPI 6.5 section 4.8): the
//! PM1a event block (status and enable), the PM1a control block, the PM timer, and the
//! PC's reset-control register at 0xcf9, which the FADT names as its reset register.
//!
//! Each is a register-level state machine; the ports are in [`crate::layout::ports`].
//! Any width at any offset is handled byte by byte: bytes outside a register read 0
//! and are ignored when written (the bus refuses accesses that run past a device's
//! range; the devices do not rely on it).

use std::time::{Duration, Instant};

use super::rtc::Clock;
use crate::bus::{Access, BusDevice, StopRequest};

/// The PM timer's rate, fixed by the ACPI specification.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// PM1 status and enable bits (ACPI 6.5 tables 4.16, 4.17).
pub const TMR_STS: u16 = 1 << 0;
pub const PWRBTN_STS: u16 = 1 << 8;
pub const WAK_STS: u16 = 1 << 15;
/// PM1 control bits (ACPI 6.5 table 4.18).
pub const SCI_EN: u16 = 1 << 0;
pub const SLP_TYP_SHIFT: u16 = 10;
pub const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
pub const SLP_EN: u16 = 1 << 13;
/// The DSDT's `\_S5` sleep type: soft off.
pub const SLP_TYP_S5: u16 = 5;
/// 0xcf9 bit 2: reset the CPU (the FADT's RESET_VALUE is 0x06, a hard reset).
pub const RST_CPU: u8 = 1 << 2;

mod state;
pub use state::{SavedPm1Control, SavedPm1Event, SavedPmTimer, SavedResetControl};

/// Copies the bytes of the little-endian register `value`, `size` bytes wide, that the
/// read at `offset` covers; bytes past the register read 0.
fn read_register(value: u32, size: u64, offset: u64, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, byte) in data.iter_mut().enumerate() {
        let position = offset.saturating_add(i as u64);
        *byte = match position < size {
            true => bytes[position as usize],
            false => 0,
        };
    }
}

/// The register `value` after a write of `data` at `offset`, and a mask of the bits the
/// write covered. Bytes past the register are dropped.
fn write_register(value: u32, size: u64, offset: u64, data: &[u8]) -> (u32, u32) {
    let mut bytes = value.to_le_bytes();
    let mut mask = [0u8; 4];
    for (i, byte) in data.iter().enumerate() {
        let position = offset.saturating_add(i as u64);
        if position < size {
            bytes[position as usize] = *byte;
            mask[position as usize] = 0xff;
        }
    }
    (u32::from_le_bytes(bytes), u32::from_le_bytes(mask))
}

/// A monotonic [`Clock`] for the PM timer, which only ever subtracts two readings: the
/// wall clock can step backwards, and the guest's clocksource must not.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// The ACPI PM timer: a free-running 32-bit counter at 3.579545 MHz (the FADT sets
/// TMR_VAL_EXT). Some guests read it tens of thousands of times a second (seed 004), so
/// a read is one clock reading and a multiplication: no allocation, no other lock.
#[derive(Debug)]
pub struct PmTimer<C: Clock> {
    clock: C,
    /// Nanoseconds added to the clock's: a restored timer goes on from its saved time.
    offset_nanos: i128,
}

impl<C: Clock> PmTimer<C> {
    /// A timer counting from `clock`'s zero (a [`MonotonicClock`] reads zero when it is
    /// made). Creating it reads no clock, so a replay's recorded readings line up.
    pub fn new(clock: C) -> Self {
        Self {
            clock,
            offset_nanos: 0,
        }
    }

    /// The counter: ticks since the timer's zero, wrapping at 2^32.
    pub fn count(&self) -> u32 {
        (self.elapsed_nanos() * u128::from(PM_TIMER_HZ) / 1_000_000_000) as u32
    }

    /// Time since the timer's zero: the clock's, plus a restored timer's offset.
    fn elapsed_nanos(&self) -> u128 {
        let nanos = self.clock.now().as_nanos() as i128 + self.offset_nanos;
        nanos.max(0) as u128
    }
}

impl<C: Clock> BusDevice for PmTimer<C> {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        if let Access::Read(data) = access {
            read_register(self.count(), 4, offset, data);
        }
        None
    }
}

/// The PM1a event block: status (offset 0, write 1 to clear) and enable (offset 2).
/// Nothing raises the SCI yet; the state is kept so the guest reads back what it wrote.
#[derive(Debug, Default)]
pub struct Pm1Event {
    status: u16,
    enable: u16,
}

impl Pm1Event {
    /// Sets status bits, as the hardware would on an event (the power button, later).
    pub fn set_status(&mut self, bits: u16) {
        self.status |= bits;
    }

    /// The status bits.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The enable bits.
    pub fn enable(&self) -> u16 {
        self.enable
    }

    /// True if an enabled event is pending: the SCI level, once something drives it.
    pub fn sci_pending(&self) -> bool {
        self.status & self.enable != 0
    }
}

impl BusDevice for Pm1Event {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        let value = u32::from(self.status) | u32::from(self.enable) << 16;
        match access {
            Access::Read(data) => read_register(value, 4, offset, data),
            Access::Write(data) => {
                let (written, mask) = write_register(value, 4, offset, data);
                self.status &= !((written & mask) as u16);
                self.enable = (written >> 16) as u16;
            }
        }
        None
    }
}

/// The PM1a control block. SCI_EN always reads 1: the FADT has no SMI_CMD, so the
/// machine is in ACPI mode from reset. SLP_EN is write-only and reads 0.
#[derive(Debug, Default)]
pub struct Pm1Control {
    value: u16,
    /// The sleep type of the last sleep the device ignored, not yet taken.
    ignored_sleep: Option<u8>,
}

impl Pm1Control {
    /// The register as the guest reads it.
    pub fn value(&self) -> u16 {
        (self.value | SCI_EN) & !SLP_EN
    }

    /// The SLP_TYP of a sleep the guest asked for and the device ignored (anything but
    /// S5), once: for the caller's rate-limited warning.
    pub fn take_ignored_sleep(&mut self) -> Option<u8> {
        self.ignored_sleep.take()
    }
}

impl BusDevice for Pm1Control {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match access {
            Access::Read(data) => {
                read_register(u32::from(self.value()), 2, offset, data);
                None
            }
            Access::Write(data) => {
                let (written, _) = write_register(u32::from(self.value), 2, offset, data);
                let written = written as u16;
                self.value = written & !SLP_EN;
                if written & SLP_EN == 0 {
                    return None;
                }
                let sleep_type = (written & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
                if sleep_type == SLP_TYP_S5 {
                    return Some(StopRequest::PowerOff);
                }
                self.ignored_sleep = Some(sleep_type as u8);
                None
            }
        }
    }
}

/// The PC reset-control register at 0xcf9: a write with RST_CPU set resets the machine.
/// Reads return the last value written, RST_CPU clear.
#[derive(Debug, Default)]
pub struct ResetControl {
    value: u8,
}

impl BusDevice for ResetControl {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match access {
            Access::Read(data) => {
                read_register(u32::from(self.value), 1, offset, data);
                None
            }
            Access::Write(data) => {
                let (written, mask) = write_register(u32::from(self.value), 1, offset, data);
                self.value = written as u8 & !RST_CPU;
                (mask & written & u32::from(RST_CPU) != 0).then_some(StopRequest::Reset)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A clock the test moves by hand, in nanoseconds.
    #[derive(Clone, Default)]
    struct TestClock(Arc<AtomicU64>);

    impl TestClock {
        fn advance(&self, nanos: u64) {
            self.0.fetch_add(nanos, Ordering::SeqCst);
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    fn read(device: &mut dyn BusDevice, offset: u64, len: usize) -> u64 {
        let mut data = [0xaa; 8];
        assert_eq!(device.access(offset, Access::Read(&mut data[..len])), None);
        crate::bus::le_value(&data[..len])
    }

    fn write(
        device: &mut dyn BusDevice,
        offset: u64,
        value: u64,
        len: usize,
    ) -> Option<StopRequest> {
        device.access(offset, Access::Write(&value.to_le_bytes()[..len]))
    }

    fn timer() -> (PmTimer<TestClock>, TestClock) {
        let clock = TestClock::default();
        (PmTimer::new(clock.clone()), clock)
    }

    #[test]
    fn pm_timer_counts_3579545_ticks_a_second_from_creation() {
        let (mut timer, clock) = timer();
        assert_eq!(read(&mut timer, 0, 4), 0);
        clock.advance(1_000_000_000);
        assert_eq!(read(&mut timer, 0, 4), PM_TIMER_HZ);
        clock.advance(1_000);
        assert_eq!(
            read(&mut timer, 0, 4),
            PM_TIMER_HZ + 3,
            "1 us is 3.58 ticks"
        );
        assert_eq!(write(&mut timer, 0, 0, 4), None);
        assert_eq!(
            read(&mut timer, 0, 4),
            PM_TIMER_HZ + 3,
            "writes are ignored"
        );
    }

    #[test]
    fn pm_timer_wraps_at_2_to_the_32() {
        let (mut timer, clock) = timer();
        // 2^32 ticks take 1199.86 s; the first whole tick after the wrap:
        let wrap_nanos = (1u128 << 32) * 1_000_000_000 / u128::from(PM_TIMER_HZ);
        clock.advance(wrap_nanos as u64 - 1_000);
        assert!(read(&mut timer, 0, 4) > 0xffff_fff0);
        clock.advance(2_000);
        assert!(read(&mut timer, 0, 4) < 0x10);
    }

    #[test]
    fn pm_timer_bytes_and_halves_assemble_the_same_value() {
        let (mut timer, clock) = timer();
        clock.advance(987_654_321_000);
        let whole = read(&mut timer, 0, 4);
        assert!(
            whole > 0xffff_ffff >> 8,
            "all four bytes matter: {whole:#x}"
        );
        let bytes: Vec<u64> = (0..4).map(|i| read(&mut timer, i, 1)).collect();
        assert_eq!(
            bytes[0] | bytes[1] << 8 | bytes[2] << 16 | bytes[3] << 24,
            whole
        );
        assert_eq!(read(&mut timer, 0, 2) | read(&mut timer, 2, 2) << 16, whole);
        assert_eq!(read(&mut timer, 1, 2), whole >> 8 & 0xffff);
        assert_eq!(read(&mut timer, 2, 4), whole >> 16, "past the end reads 0");
    }

    #[test]
    fn pm1_status_is_write_one_to_clear_and_enable_reads_back() {
        let mut event = Pm1Event::default();
        event.set_status(TMR_STS | PWRBTN_STS | WAK_STS);
        assert_eq!(read(&mut event, 0, 2), 0x8101);
        assert_eq!(write(&mut event, 0, u64::from(PWRBTN_STS), 2), None);
        assert_eq!(read(&mut event, 0, 2), 0x8001);
        write(&mut event, 1, 0x80, 1);
        assert_eq!(event.status(), TMR_STS, "byte write clears WAK_STS");
        write(&mut event, 0, 0, 2);
        assert_eq!(event.status(), TMR_STS, "writing 0 clears nothing");
        assert!(!event.sci_pending());
        write(&mut event, 2, 0x0121, 2);
        assert_eq!(read(&mut event, 2, 2), 0x0121);
        assert_eq!(read(&mut event, 0, 4), 0x0121_0001);
        assert!(event.sci_pending());
        write(&mut event, 0, 0x0100_0001, 4);
        assert_eq!((event.status(), event.enable()), (0, 0x0100));
        write(&mut event, 3, 0x02, 1);
        assert_eq!(event.enable(), 0x0200);
    }

    #[test]
    fn slp_typ_5_with_slp_en_powers_off() {
        let mut control = Pm1Control::default();
        let s5 = SLP_TYP_S5 << SLP_TYP_SHIFT;
        assert_eq!(write(&mut control, 0, u64::from(s5), 2), None, "no SLP_EN");
        assert_eq!(
            write(&mut control, 0, u64::from(s5 | SLP_EN), 2),
            Some(StopRequest::PowerOff)
        );
        assert_eq!(
            write(&mut control, 1, u64::from((s5 | SLP_EN) >> 8), 1),
            Some(StopRequest::PowerOff),
            "high byte alone"
        );
        assert_eq!(control.take_ignored_sleep(), None);
    }

    #[test]
    fn other_sleep_types_are_ignored_and_reported_once() {
        let mut control = Pm1Control::default();
        for sleep_type in [0, 1, 3, 4, 7] {
            let value = sleep_type << SLP_TYP_SHIFT | SLP_EN;
            assert_eq!(write(&mut control, 0, u64::from(value), 2), None);
            assert_eq!(control.take_ignored_sleep(), Some(sleep_type as u8));
            assert_eq!(control.take_ignored_sleep(), None);
        }
    }

    #[test]
    fn sci_en_reads_1_and_slp_en_reads_0() {
        let mut control = Pm1Control::default();
        assert_eq!(read(&mut control, 0, 2), 1);
        write(&mut control, 0, 0, 2);
        assert_eq!(read(&mut control, 0, 1), 1, "SCI_EN cannot be cleared");
        write(&mut control, 0, u64::from(3 << SLP_TYP_SHIFT | SLP_EN), 2);
        assert_eq!(
            read(&mut control, 0, 2),
            u64::from(3 << SLP_TYP_SHIFT | SCI_EN)
        );
        assert_eq!(
            read(&mut control, 1, 1),
            u64::from(3u16 << SLP_TYP_SHIFT >> 8)
        );
        assert_eq!(
            read(&mut control, 1, 2),
            u64::from(3u16 << SLP_TYP_SHIFT >> 8)
        );
    }

    #[test]
    fn cf9_write_6_resets_and_2_does_not() {
        let mut reset = ResetControl::default();
        assert_eq!(write(&mut reset, 0, 0x02, 1), None);
        assert_eq!(read(&mut reset, 0, 1), 0x02);
        assert_eq!(write(&mut reset, 0, 0x06, 1), Some(StopRequest::Reset));
        assert_eq!(read(&mut reset, 0, 1), 0x02, "RST_CPU reads clear");
        assert_eq!(
            write(&mut reset, 0, 0x0e, 2),
            Some(StopRequest::Reset),
            "wide"
        );
        assert_eq!(write(&mut reset, 1, 0x04, 1), None, "past the register");
        assert_eq!(read(&mut reset, 0, 4), 0x0a);
    }

    #[test]
    fn odd_widths_and_offsets_do_not_panic_and_read_zero_past_the_end() {
        let (mut timer, _) = timer();
        let mut devices: [Box<dyn BusDevice>; 4] = [
            Box::new(PmTimer::new(TestClock::default())),
            Box::new(Pm1Event::default()),
            Box::new(Pm1Control::default()),
            Box::new(ResetControl::default()),
        ];
        for device in devices.iter_mut() {
            for offset in [0, 3, 4, 7, u64::MAX - 1, u64::MAX] {
                assert_eq!(read(device.as_mut(), offset, 8) >> 32, 0);
                assert_eq!(device.access(offset, Access::Read(&mut [])), None);
                assert_eq!(device.access(offset, Access::Write(&[])), None);
                assert_eq!(write(device.as_mut(), offset, 0, 3), None);
            }
        }
        assert_eq!(read(&mut timer, 3, 1), 0);
    }

    /// xorshift64: a fixed sequence, so a failure reproduces.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_accesses_never_panic() {
        let clock = TestClock::default();
        let mut devices: [Box<dyn BusDevice>; 4] = [
            Box::new(PmTimer::new(clock.clone())),
            Box::new(Pm1Event::default()),
            Box::new(Pm1Control::default()),
            Box::new(ResetControl::default()),
        ];
        let mut state = 0x2545_f491_4f6c_dd1d;
        for device in devices.iter_mut() {
            for _ in 0..10_000 {
                let random = xorshift(&mut state);
                let offset = match random & 0xf {
                    0 => xorshift(&mut state),
                    low => low % 9,
                };
                let len = (random >> 8 & 7) as usize + usize::from(random & 0x10 != 0);
                let data = xorshift(&mut state).to_le_bytes();
                clock.advance(random >> 40);
                let mut buffer = data;
                let access = match random >> 16 & 1 {
                    0 => Access::Read(&mut buffer[..len]),
                    _ => Access::Write(&data[..len]),
                };
                let _ = device.access(offset, access);
            }
        }
    }
}
