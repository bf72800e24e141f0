use super::*;
use crate::bus::Flush;
use crate::trace::format::{ExitDirection, TraceWriter};
use crate::trace::MachineDescription;

/// A trace of a 64 MiB, one-vCPU machine (with virtio-rng if `rng`) and `records`.
fn trace(rng: bool, records: &[Record]) -> Vec<u8> {
    let machine = MachineDescription {
        memory: 64 << 20,
        cpus: 1,
        rng,
        console: false,
        pci: false,
        event_idx: false,
        disk_bytes: 0,
        clock_start: 1_700_000_000_000_000_000,
        virtio: Vec::new(),
    };
    let mut writer = TraceWriter::new(Vec::new(), &machine).unwrap();
    for record in records {
        writer.write(record).unwrap();
    }
    writer.finish().unwrap()
}

fn exit(direction: ExitDirection, addr: u64, size: u8, data: &[u8]) -> Record {
    Record::Exit {
        vcpu: 0,
        direction,
        addr,
        size,
        data: data.to_vec(),
    }
}

fn outb(port: u16, value: u8) -> Record {
    exit(ExitDirection::PioOut, u64::from(port), 1, &[value])
}

fn inb(port: u16, value: u8) -> Record {
    exit(ExitDirection::PioIn, u64::from(port), 1, &[value])
}

fn mmio_write(addr: u64, value: u32) -> Record {
    exit(ExitDirection::MmioWrite, addr, 4, &value.to_le_bytes())
}

fn advise_on(rng: bool, records: &[Record]) -> Advice {
    advise(&trace(rng, records)).unwrap()
}

fn verdict(advice: &Advice, device: &str, offset: u64, size: u8) -> Option<Verdict> {
    let row = advice.register(device, offset, size);
    row.unwrap_or_else(|| panic!("no row for {device}+{offset}: {advice:#?}"))
        .verdict
}

#[test]
fn the_rtc_index_is_a_latch_although_data_reads_depend_on_it() {
    let mut records = Vec::new();
    for index in 0x20..0x28 {
        records.push(outb(0x70, index));
        records.push(inb(0x71, 0));
    }
    let advice = advise_on(false, &records);
    assert_eq!(advice.divergences, 0, "NVRAM 0x20.. reads 0");
    let index = advice.register("rtc", 0, 1).unwrap();
    assert_eq!(index.verdict, Some(Verdict::Latch));
    assert_eq!(
        (index.writes, index.exited_writes, index.exits_saved),
        (8, 8, 8)
    );
    assert_eq!(index.register, "rtc 0x70+0 (1 byte)");
    let data = advice.register("rtc", 1, 1).unwrap();
    assert_eq!((data.reads, data.writes, data.verdict), (8, 0, None));
    assert_eq!(advice.registers[0].device, "rtc", "most exits saved first");
    assert!(index.declared_posted.is_some() && data.declared_posted.is_none());
    assert_eq!(advice.contradictions().count(), 0);
}

#[test]
fn a_declared_posted_register_with_effects_is_a_contradiction() {
    let mut advice = advise_on(false, &[outb(0x70, 0x20), outb(0x3f8, b'x')]);
    assert_eq!(advice.contradictions().count(), 0);
    let thr = advice.registers.iter_mut().find(|r| r.device == "com1");
    let thr = thr.unwrap();
    // Posted with a bounded flush, an output effect is what the rule allows.
    thr.declared_posted = Some(Flush::Bounded);
    assert_eq!(advice.contradictions().count(), 0);
    assert!(advice
        .render()
        .contains("output 1; declared posted, bounded"));
    let thr = advice.registers.iter_mut().find(|r| r.device == "com1");
    thr.unwrap().declared_posted = Some(Flush::BeforeNextAccess);
    let found: Vec<&str> = advice.contradictions().map(|r| r.device).collect();
    assert_eq!(found, ["com1"]);
    assert!(advice.render().contains("output 1; declared posted"));
}

#[test]
fn posted_writes_count_as_writes_but_save_no_exits() {
    let posted = Record::PostedWrite {
        space: AddressSpace::Pio,
        addr: 0x70,
        data: vec![0x21],
    };
    let advice = advise_on(
        false,
        &[posted.clone(), inb(0x71, 0), posted, outb(0x70, 0x22)],
    );
    let index = advice.register("rtc", 0, 1).unwrap();
    assert_eq!((index.posted_writes, index.exited_writes), (2, 1));
    assert_eq!(
        (index.exits_saved, index.verdict),
        (1, Some(Verdict::Latch))
    );
}

#[test]
fn an_rtc_register_b_write_that_enables_interrupts_is_time_bound() {
    // Periodic interrupts enabled; the interrupt itself comes from the later tick and is
    // not blamed on the write, but the write re-armed the RTC's timer.
    let records = [
        outb(0x70, 0x0b),
        outb(0x71, 0x42),
        Record::Clock(1_700_000_001_000_000_000),
        Record::RtcTick,
    ];
    let advice = advise_on(false, &records);
    assert_eq!(verdict(&advice, "rtc", 0, 1), Some(Verdict::Latch));
    let data = advice.register("rtc", 1, 1).unwrap();
    assert_eq!(data.verdict, Some(Verdict::TimeBound));
    assert_eq!(data.effects.timer_rearms, 1);
    assert_eq!(
        data.effects.interrupts, 0,
        "the tick's interrupt is the tick's"
    );
    // NVRAM writes alone touch nothing outside: this trace cannot tell them apart.
    let nvram = advise_on(false, &[outb(0x70, 0x40), outb(0x71, 0x55)]);
    assert_eq!(verdict(&nvram, "rtc", 1, 1), Some(Verdict::Latch));
}

#[test]
fn several_traces_give_each_register_its_worst_verdict() {
    let nvram = trace(false, &[outb(0x70, 0x40), outb(0x71, 0x55)]);
    let timer = trace(false, &[outb(0x70, 0x0b), outb(0x71, 0x42)]);
    let advice = advise_all(&[&nvram, &timer]).unwrap();
    assert_eq!(advice.traces, 2);
    let data = advice.register("rtc", 1, 1).unwrap();
    assert_eq!((data.writes, data.verdict), (2, Some(Verdict::TimeBound)));
    assert_eq!(verdict(&advice, "rtc", 0, 1), Some(Verdict::Latch));
}

#[test]
fn com1_thr_writes_are_time_bound_by_their_output() {
    let mut records = vec![outb(0x3fb, 0x03)];
    records.extend(b"hello\n".iter().map(|byte| outb(0x3f8, *byte)));
    let advice = advise_on(false, &records);
    let thr = advice.register("com1", 0, 1).unwrap();
    assert_eq!(thr.verdict, Some(Verdict::TimeBound));
    assert_eq!((thr.effects.output, thr.exits_saved), (6, 6));
    assert_eq!(verdict(&advice, "com1", 3, 1), Some(Verdict::Latch), "LCR");
    // The same offset with DLAB set holds the divisor: no output, a latch there.
    let divisor = advise_on(false, &[outb(0x3fb, 0x80), outb(0x3f8, 0x01)]);
    assert_eq!(verdict(&divisor, "com1", 0, 1), Some(Verdict::Latch));
}

#[test]
fn com1_ier_write_that_raises_an_interrupt_is_time_bound() {
    let advice = advise_on(false, &[outb(0x3f9, 0x02)]);
    let ier = advice.register("com1", 1, 1).unwrap();
    assert_eq!(ier.verdict, Some(Verdict::TimeBound));
    assert_eq!(ier.effects.interrupts, 1, "THR already empty");
}

#[test]
fn stops_are_never_posted() {
    let advice = advise_on(false, &[outb(0x64, 0xaa), outb(0x64, 0xfe), outb(0xf4, 0)]);
    let command = advice.register("i8042", 4, 1).unwrap();
    assert_eq!(command.verdict, Some(Verdict::Never));
    assert_eq!((command.writes, command.effects.stops), (2, 1));
    let debug_exit = advice.register("isa-debug-exit", 0, 1).unwrap();
    assert_eq!(debug_exit.verdict, Some(Verdict::Never));
    assert_eq!(debug_exit.effects.summary(), "stop 1");
}

#[test]
fn doorbells_are_never_posted_even_when_they_find_no_work() {
    let notify = 0xc000_1000 + crate::devices::virtio::mmio::QUEUE_NOTIFY;
    let records = [
        mmio_write(0xc000_1030, 0),
        mmio_write(notify, 0),
        exit(ExitDirection::PioOut, 0xb04, 4, &0u32.to_le_bytes()),
    ];
    let advice = advise_on(true, &records);
    assert_eq!(
        verdict(&advice, "virtio-rng", 0x30, 4),
        Some(Verdict::Latch)
    );
    let mmio = advice.register("virtio-rng", 0x50, 4).unwrap();
    assert_eq!(mmio.verdict, Some(Verdict::Never));
    assert_eq!(mmio.effects.doorbells, 1);
    assert_eq!(mmio.register, "virtio-rng 0xc0001000+0x50 (4 bytes)");
    let pio = advice
        .registers
        .iter()
        .find(|row| row.space == "pio" && row.device == "virtio-rng")
        .unwrap();
    assert_eq!(pio.verdict, Some(Verdict::Never));
}

#[test]
fn a_latch_that_is_not_the_rtc_is_found() {
    // The data port queues what is written and hands it back on reads of the same
    // port: an effect seen only through the device itself.
    let records = [
        exit(ExitDirection::PioOut, 0x1f0, 2, &[1, 2, 3, 4]),
        outb(0x1f0, 5),
        exit(ExitDirection::PioIn, 0x1f0, 1, &[1, 2, 3, 4, 5]),
    ];
    let advice = advise_on(false, &records);
    assert_eq!(advice.divergences, 0);
    assert_eq!(verdict(&advice, "data-port", 0, 2), Some(Verdict::Latch));
    assert_eq!(verdict(&advice, "data-port", 0, 1), Some(Verdict::Latch));
    let reads = advice.register("data-port", 0, 1).unwrap();
    assert_eq!((reads.reads, reads.writes), (1, 1));
}

#[test]
fn unclaimed_addresses_are_named_so() {
    let advice = advise_on(false, &[outb(0x2f8, 1)]);
    let row = &advice.registers[0];
    assert_eq!((row.device, row.base), ("unclaimed", 0x2f8));
    assert_eq!(row.verdict, Some(Verdict::Latch));
}

#[test]
fn the_table_has_every_row_and_json_the_same_rows() {
    let advice = advise_on(false, &[outb(0x70, 0x20), inb(0x71, 0), outb(0x3f8, b'x')]);
    let table = advice.render();
    assert!(table.contains("rtc 0x70+0 (1 byte)"), "{table}");
    assert!(table.contains("time-bound"), "{table}");
    assert_eq!(table.lines().count(), 1 + advice.registers.len() + 1);
    let json = serde_json::to_value(&advice).unwrap();
    assert_eq!(json["registers"].as_array().unwrap().len(), 3);
    assert_eq!(json["registers"][0]["verdict"], "latch");
}

#[test]
fn broken_traces_are_errors_not_panics() {
    let bytes = trace(true, &[outb(0x70, 0x20), inb(0x71, 0), outb(0xf4, 0)]);
    for cut in 0..bytes.len() {
        let _ = advise(&bytes[..cut]);
    }
    assert!(advise(b"not a trace").is_err());
    let mut bad = bytes.clone();
    bad.push(0xee);
    assert!(matches!(
        advise(&bad),
        Err(AdviseError::Replay(ReplayError::Trace(_)))
    ));
}
