use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A clock the test moves by hand.
#[derive(Clone, Default)]
struct TestClock(Arc<AtomicU64>);

impl TestClock {
    fn at(seconds: u64, nanos: u64) -> Self {
        let clock = Self::default();
        clock.set(seconds, nanos);
        clock
    }
    fn set(&self, seconds: u64, nanos: u64) {
        self.0
            .store(seconds * 1_000_000_000 + nanos, Ordering::SeqCst);
    }
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// 2026-11-21 21:06:40 UTC, a Saturday.
const SATURDAY_EVENING: u64 = 1_795_295_200;

fn rtc() -> (Rtc<TestClock>, TestClock) {
    let clock = TestClock::at(SATURDAY_EVENING, 0);
    (Rtc::new(clock.clone()), clock)
}

fn read(rtc: &mut Rtc<TestClock>, index: u8) -> u8 {
    rtc.access(0, Access::Write(&[index]));
    let mut data = [0u8];
    rtc.access(1, Access::Read(&mut data));
    data[0]
}

fn write(rtc: &mut Rtc<TestClock>, index: u8, value: u8) {
    rtc.access(0, Access::Write(&[index]));
    rtc.access(1, Access::Write(&[value]));
}

fn time_registers(rtc: &mut Rtc<TestClock>) -> [u8; 8] {
    [
        reg::SECONDS,
        reg::MINUTES,
        reg::HOURS,
        reg::WEEKDAY,
        reg::DAY,
        reg::MONTH,
        reg::YEAR,
        reg::CENTURY,
    ]
    .map(|index| read(rtc, index))
}

#[test]
fn time_reads_in_bcd_24_hour_by_default() {
    let (mut rtc, _) = rtc();
    assert_eq!(
        time_registers(&mut rtc),
        [0x40, 0x06, 0x21, 0x07, 0x21, 0x11, 0x26, 0x20]
    );
}

#[test]
fn time_reads_in_binary() {
    let (mut rtc, _) = rtc();
    write(&mut rtc, reg::B, B_24_HOUR | B_BINARY);
    assert_eq!(time_registers(&mut rtc), [40, 6, 21, 7, 21, 11, 26, 20]);
}

#[test]
fn twelve_hour_mode_sets_the_pm_bit() {
    let (mut rtc, clock) = rtc();
    write(&mut rtc, reg::B, 0);
    assert_eq!(read(&mut rtc, reg::HOURS), 0x80 | 0x09, "21h is 9 PM");
    clock.set(SATURDAY_EVENING - 21 * 3600, 0);
    assert_eq!(read(&mut rtc, reg::HOURS), 0x12, "midnight is 12 AM");
    clock.set(SATURDAY_EVENING - 9 * 3600, 0);
    assert_eq!(read(&mut rtc, reg::HOURS), 0x80 | 0x12, "noon is 12 PM");
    write(&mut rtc, reg::B, B_BINARY);
    assert_eq!(read(&mut rtc, reg::HOURS), 0x80 | 12);
    write(&mut rtc, reg::HOURS, 0x80 | 3);
    write(&mut rtc, reg::B, B_BINARY | B_24_HOUR);
    assert_eq!(
        read(&mut rtc, reg::HOURS),
        15,
        "3 PM written in 12-hour mode"
    );
}

#[test]
fn the_clock_runs_and_written_time_keeps_running() {
    let (mut rtc, clock) = rtc();
    clock.advance(Duration::from_secs(5));
    assert_eq!(read(&mut rtc, reg::SECONDS), 0x45);
    write(&mut rtc, reg::MINUTES, 0x30);
    assert_eq!(read(&mut rtc, reg::MINUTES), 0x30);
    clock.advance(Duration::from_secs(60));
    assert_eq!(read(&mut rtc, reg::MINUTES), 0x31);
    assert_eq!(read(&mut rtc, reg::SECONDS), 0x45);
}

#[test]
fn set_bit_freezes_the_clock_and_applies_fields_together() {
    let (mut rtc, clock) = rtc();
    write(&mut rtc, reg::B, B_SET | B_24_HOUR | B_UIE);
    assert_eq!(read(&mut rtc, reg::B) & B_UIE, 0, "SET clears UIE");
    // Set 2024-02-29 from 2026-11-21: day 29 is invalid in November's month order
    // until the month is written too, which must not matter while SET is on.
    write(&mut rtc, reg::DAY, 0x29);
    write(&mut rtc, reg::MONTH, 0x02);
    write(&mut rtc, reg::YEAR, 0x24);
    clock.advance(Duration::from_secs(10));
    assert_eq!(read(&mut rtc, reg::SECONDS), 0x40, "frozen while SET");
    write(&mut rtc, reg::B, B_24_HOUR);
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        time_registers(&mut rtc),
        [0x42, 0x06, 0x21, 0x05, 0x29, 0x02, 0x24, 0x20]
    );
}

#[test]
fn century_register_sets_the_century() {
    let (mut rtc, _) = rtc();
    write(&mut rtc, reg::CENTURY, 0x19);
    assert_eq!(read(&mut rtc, reg::YEAR), 0x26);
    assert_eq!(read(&mut rtc, reg::CENTURY), 0x19);
}

#[test]
fn nvram_holds_bytes_and_the_index_keeps_the_nmi_bit_apart() {
    let (mut rtc, _) = rtc();
    for index in 0x0eu8..0x80 {
        if index != reg::CENTURY {
            write(&mut rtc, index | NMI_DISABLE, index ^ 0x5a);
        }
    }
    assert!(rtc.state().nmi_disabled);
    for index in 0x0eu8..0x80 {
        if index != reg::CENTURY {
            assert_eq!(read(&mut rtc, index), index ^ 0x5a);
        }
    }
    assert!(!rtc.state().nmi_disabled);
    assert_eq!(rtc.state().index, 0x7f);
    let mut data = [0u8];
    rtc.access(0, Access::Read(&mut data));
    assert_eq!(data, [0xff], "the index port reads as 0xff");
}

#[test]
fn status_registers_a_and_d() {
    let (mut rtc, _) = rtc();
    assert_eq!(read(&mut rtc, reg::A), 0x26);
    write(&mut rtc, reg::A, 0xaf);
    assert_eq!(read(&mut rtc, reg::A), 0x2f, "UIP is read-only");
    assert_eq!(read(&mut rtc, reg::D), 0x80);
    write(&mut rtc, reg::D, 0);
    assert_eq!(read(&mut rtc, reg::D), 0x80, "D is read-only");
}

#[test]
fn update_in_progress_shows_244us_before_each_second() {
    let (mut rtc, clock) = rtc();
    clock.set(SATURDAY_EVENING, 999_755_999);
    assert_eq!(read(&mut rtc, reg::A) & A_UIP, 0);
    clock.set(SATURDAY_EVENING, 999_756_000);
    assert_eq!(read(&mut rtc, reg::A) & A_UIP, A_UIP);
    write(&mut rtc, reg::A, 0x06);
    assert_eq!(
        read(&mut rtc, reg::A) & A_UIP,
        0,
        "no update while the divider is stopped"
    );
    write(&mut rtc, reg::A, 0x26);
    write(&mut rtc, reg::B, B_SET | B_24_HOUR);
    assert_eq!(read(&mut rtc, reg::A) & A_UIP, 0, "no update while SET");
}

#[test]
fn register_c_reports_events_once_and_clears_on_read() {
    let (mut rtc, clock) = rtc();
    assert_eq!(read(&mut rtc, reg::C), 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(read(&mut rtc, reg::C), C_PF, "1024 Hz period elapsed");
    assert_eq!(read(&mut rtc, reg::C), 0, "cleared by the read");
    write(&mut rtc, reg::B, B_24_HOUR | 0x40 | B_UIE);
    write(&mut rtc, reg::SECONDS_ALARM, 0x41);
    write(&mut rtc, reg::MINUTES_ALARM, ALARM_ANY);
    write(&mut rtc, reg::HOURS_ALARM, ALARM_ANY);
    clock.advance(Duration::from_secs(1));
    assert_eq!(read(&mut rtc, reg::C), C_IRQF | C_PF | C_AF | C_UF);
    write(&mut rtc, reg::A, 0x20);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        read(&mut rtc, reg::C),
        C_IRQF | C_UF,
        "no rate, no alarm match"
    );
}

#[test]
fn memory_size_is_recorded_in_cmos() {
    let (mut rtc, _) = rtc();
    rtc.set_memory_size(64 << 20);
    assert_eq!(read(&mut rtc, 0x15), 0x80);
    assert_eq!(read(&mut rtc, 0x16), 0x02);
    assert_eq!(
        u16::from_le_bytes([read(&mut rtc, 0x17), read(&mut rtc, 0x18)]),
        63 * 1024
    );
    assert_eq!(
        u16::from_le_bytes([read(&mut rtc, 0x34), read(&mut rtc, 0x35)]),
        48 * 16
    );
}

fn rtc_with_line() -> (Rtc<TestClock>, TestClock, Arc<CountingLine>) {
    let (mut rtc, clock) = rtc();
    let line = Arc::new(CountingLine::default());
    rtc.connect_interrupt(line.clone());
    (rtc, clock, line)
}

#[test]
fn rate_select_sets_the_period() {
    let (mut rtc, _) = rtc();
    for (rate, hz) in [(1u8, 256u64), (2, 128), (3, 8192), (6, 1024), (15, 2)] {
        write(&mut rtc, reg::A, 0x20 | rate);
        assert_eq!(
            rtc.periodic_period(),
            Some(Duration::from_nanos(1_000_000_000 / hz))
        );
    }
    write(&mut rtc, reg::A, 0x20);
    assert_eq!(rtc.periodic_period(), None);
}

#[test]
fn periodic_interrupts_follow_reads_of_register_c() {
    let (mut rtc, clock, line) = rtc_with_line();
    write(&mut rtc, reg::B, B_24_HOUR | B_PIE);
    assert_eq!(line.pulses(), 0, "no period has passed");
    let period = Duration::from_nanos(976_562);
    assert!(rtc.next_event().unwrap() <= period);
    for tick in 1..=5 {
        clock.advance(period);
        rtc.tick();
        assert_eq!(line.pulses(), tick, "one edge per period");
        rtc.tick();
        assert_eq!(line.pulses(), tick, "nothing new until C is read");
        assert_eq!(read(&mut rtc, reg::C), C_IRQF | C_PF);
        assert!(rtc.next_event().is_some());
    }
}

#[test]
fn no_storm_after_a_long_host_pause() {
    let (mut rtc, clock, line) = rtc_with_line();
    write(&mut rtc, reg::B, B_24_HOUR | B_PIE | B_UIE);
    clock.advance(Duration::from_secs(30));
    rtc.tick();
    rtc.tick();
    assert_eq!(
        line.pulses(),
        1,
        "30 s of missed periods give one interrupt"
    );
    assert_eq!(read(&mut rtc, reg::C), C_IRQF | C_PF | C_UF);
    assert_eq!(read(&mut rtc, reg::C), 0);
    assert_eq!(line.pulses(), 1);
}

#[test]
fn events_without_their_enable_set_flags_but_no_interrupt() {
    let (mut rtc, clock, line) = rtc_with_line();
    clock.advance(Duration::from_secs(1));
    rtc.tick();
    assert_eq!(line.pulses(), 0);
    assert_eq!(rtc.next_event(), None, "nothing enabled, no timer needed");
    // Enabling an interrupt whose event is already pending raises the line at once.
    write(&mut rtc, reg::B, B_24_HOUR | B_UIE);
    assert_eq!(line.pulses(), 1);
    assert_eq!(read(&mut rtc, reg::C), C_IRQF | C_PF | C_UF);
}

#[test]
fn update_and_alarm_interrupts_come_once_a_second() {
    let (mut rtc, clock, line) = rtc_with_line();
    write(&mut rtc, reg::A, 0x20);
    write(&mut rtc, reg::SECONDS_ALARM, 0x42);
    write(&mut rtc, reg::MINUTES_ALARM, ALARM_ANY);
    write(&mut rtc, reg::HOURS_ALARM, ALARM_ANY);
    write(&mut rtc, reg::B, B_24_HOUR | B_AIE);
    clock.set(SATURDAY_EVENING, 400_000_000);
    assert_eq!(rtc.next_event(), Some(Duration::from_millis(600)));
    clock.set(SATURDAY_EVENING + 1, 0);
    rtc.tick();
    assert_eq!(line.pulses(), 0, "21:06:41 does not match the alarm");
    clock.set(SATURDAY_EVENING + 2, 0);
    rtc.tick();
    assert_eq!(line.pulses(), 1, "21:06:42 does");
    assert_eq!(read(&mut rtc, reg::C), C_IRQF | C_AF | C_UF);
    write(&mut rtc, reg::B, B_24_HOUR | B_UIE);
    clock.set(SATURDAY_EVENING + 3, 0);
    rtc.tick();
    assert_eq!(line.pulses(), 2);
}

#[test]
fn the_rearm_notifier_hears_of_changes_to_a_and_b_only() {
    let (mut rtc, clock, _line) = rtc_with_line();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    rtc.set_rearm_notifier(Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    write(&mut rtc, reg::B, B_24_HOUR | B_PIE);
    write(&mut rtc, reg::A, 0x26);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    read(&mut rtc, reg::C);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "reading C with the line low"
    );
    clock.advance(Duration::from_millis(1));
    rtc.tick();
    read(&mut rtc, reg::C);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "acknowledging an interrupt costs no re-arm"
    );
}

#[test]
fn the_index_port_is_posted() {
    let (rtc, _) = rtc();
    assert_eq!(rtc.posted_registers(), &[PostedRegister::latch(0, 1)]);
}
