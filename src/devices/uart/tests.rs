use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

const THR: u64 = 0;
const RBR: u64 = 0;
const DLL: u64 = 0;
const IER: u64 = 1;
const DLM: u64 = 1;
const IIR: u64 = 2;
const FCR: u64 = 2;
const LCR: u64 = 3;
const MCR: u64 = 4;
const LSR: u64 = 5;
const MSR: u64 = 6;
const SCR: u64 = 7;

fn read<W: Write + Send>(uart: &mut Uart<W>, offset: u64) -> u8 {
    let mut data = [0u8];
    uart.access(offset, Access::Read(&mut data));
    data[0]
}

fn write<W: Write + Send>(uart: &mut Uart<W>, offset: u64, value: u8) {
    uart.access(offset, Access::Write(&[value]));
}

fn counted<W: Write + Send>(out: W) -> (Uart<W>, Arc<CountingLine>) {
    let line = Arc::new(CountingLine::default());
    (Uart::with_interrupt(out, line.clone()), line)
}

/// An output the test can close: closed, it refuses with `WouldBlock`.
#[derive(Default)]
struct Gate {
    closed: Arc<AtomicBool>,
    written: Vec<u8>,
}

impl Write for Gate {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.written.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An output whose reader went away.
struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(ErrorKind::BrokenPipe.into())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn transmitted_bytes_reach_the_output() {
    let mut uart = Uart::new(Vec::new());
    for byte in b"hi\n" {
        write(&mut uart, THR, *byte);
    }
    assert_eq!(uart.output(), b"hi\n");
}

#[test]
fn line_status_says_the_transmitter_is_empty() {
    let mut uart = Uart::new(Vec::new());
    assert_eq!(read(&mut uart, LSR), LSR_THRE | LSR_TEMT);
}

#[test]
fn received_bytes_raise_the_interrupt_when_enabled_and_read_back() {
    let (mut uart, line) = counted(Vec::new());
    assert_eq!(uart.receive(b"a"), 1);
    assert_eq!(line.pulses(), 0, "receive interrupt not enabled");
    write(&mut uart, IER, IER_RDI);
    assert_eq!(line.pulses(), 1, "enabling it with data waiting");
    assert_eq!(uart.receive(b"bc"), 2);
    assert_eq!(line.pulses(), 1, "the line is already high");
    assert_eq!(read(&mut uart, IIR), IIR_RDI, "16450 mode: no FIFO bits");
    for expected in b"abc" {
        assert_eq!(read(&mut uart, LSR) & LSR_DR, LSR_DR);
        assert_eq!(read(&mut uart, RBR), *expected);
    }
    assert_eq!(read(&mut uart, LSR) & LSR_DR, 0, "no more data ready");
    assert_eq!(read(&mut uart, IIR), IIR_NONE);
    assert_eq!(uart.receive(b"d"), 1);
    assert_eq!(line.pulses(), 2, "the line fell when the receiver emptied");
}

#[test]
fn transmitter_empty_interrupt_fires_when_enabled() {
    let (mut uart, line) = counted(Vec::new());
    write(&mut uart, IER, IER_THRI);
    assert_eq!(line.pulses(), 1, "enabling it with THR already empty");
    assert_eq!(read(&mut uart, IIR) & 0x0f, IIR_THRI);
    assert_eq!(
        read(&mut uart, IIR) & 0x0f,
        IIR_NONE,
        "acknowledged by the read"
    );
    write(&mut uart, IER, IER_THRI);
    assert_eq!(line.pulses(), 1, "ETBEI was already set: no new edge");
    write(&mut uart, THR, b'x');
    assert_eq!(line.pulses(), 2, "THR empty again after a write");
}

#[test]
fn thr_empty_edges_follow_acknowledgements_and_enables() {
    let (mut uart, line) = counted(Vec::new());
    write(&mut uart, IER, IER_THRI);
    write(&mut uart, IER, 0);
    assert_eq!(
        read(&mut uart, IIR),
        IIR_NONE,
        "clearing ETBEI drops the source"
    );
    write(&mut uart, IER, IER_THRI);
    assert_eq!(line.pulses(), 2, "each rising edge of ETBEI with THRE set");
    // Each byte leaves before the next arrives, so each write lowers and raises the
    // line: one edge per byte, as a 16550 whose FIFO drains between writes.
    for byte in 0..16 {
        write(&mut uart, THR, byte);
    }
    assert_eq!(line.pulses(), 18);
    // Received data holds the line high: a THR write then makes no edge.
    write(&mut uart, IER, IER_THRI | IER_RDI);
    uart.receive(b"r");
    write(&mut uart, THR, b'x');
    assert_eq!(line.pulses(), 18);
    assert_eq!(
        read(&mut uart, IIR),
        IIR_RDI,
        "received data outranks THR empty"
    );
    read(&mut uart, RBR);
    assert_eq!(read(&mut uart, IIR), IIR_THRI, "still pending under it");
    assert_eq!(read(&mut uart, IIR), IIR_NONE);
}

#[test]
fn divisor_latch_reads_back_and_hides_thr_and_ier() {
    let mut uart = Uart::new(Vec::new());
    write(&mut uart, IER, IER_RDI);
    write(&mut uart, LCR, LCR_DLAB | 0x03);
    assert_eq!((read(&mut uart, DLL), read(&mut uart, DLM)), (0x0c, 0x00));
    write(&mut uart, DLL, 0x01);
    write(&mut uart, DLM, 0x02);
    assert_eq!((read(&mut uart, DLL), read(&mut uart, DLM)), (0x01, 0x02));
    write(&mut uart, LCR, 0x03);
    assert_eq!(
        read(&mut uart, IER),
        IER_RDI,
        "IER untouched by the DLM write"
    );
    write(&mut uart, THR, b'x');
    assert_eq!(uart.output(), b"x", "the DLL write transmitted nothing");
    assert_eq!(read(&mut uart, LCR), 0x03);
}

#[test]
fn fcr_switches_fifos_and_iir_reports_them() {
    let (mut uart, _) = counted(Vec::new());
    assert_eq!(read(&mut uart, IIR), IIR_NONE);
    write(&mut uart, FCR, FCR_ENABLE | 0x40); // trigger level 4
    assert_eq!(read(&mut uart, IIR), IIR_FIFOS_ON | IIR_NONE);
    write(&mut uart, IER, IER_RDI);
    uart.receive(b"abc");
    assert_eq!(
        read(&mut uart, IIR),
        IIR_FIFOS_ON | IIR_TIMEOUT,
        "below trigger"
    );
    uart.receive(b"d");
    assert_eq!(read(&mut uart, IIR), IIR_FIFOS_ON | IIR_RDI, "at trigger");
    write(&mut uart, FCR, FCR_ENABLE | FCR_CLEAR_RX);
    assert_eq!(read(&mut uart, LSR) & LSR_DR, 0, "receive FIFO cleared");
    uart.receive(b"e");
    write(&mut uart, FCR, 0);
    assert_eq!(read(&mut uart, IIR), IIR_NONE, "16450 mode, FIFO emptied");
    assert_eq!(read(&mut uart, LSR) & LSR_DR, 0);
}

#[test]
fn a_burst_of_16_bytes_keeps_the_transmitter_empty_when_the_output_takes_them() {
    let mut uart = Uart::new(Vec::new());
    write(&mut uart, FCR, FCR_ENABLE);
    assert_eq!(
        read(&mut uart, LSR) & (LSR_THRE | LSR_TEMT),
        LSR_THRE | LSR_TEMT
    );
    for byte in 0..16 {
        write(&mut uart, THR, byte);
    }
    assert_eq!(
        read(&mut uart, LSR) & (LSR_THRE | LSR_TEMT),
        LSR_THRE | LSR_TEMT
    );
    assert_eq!(uart.output(), &(0..16).collect::<Vec<u8>>());
}

#[test]
fn a_refusing_output_fills_the_fifo_and_flush_transmit_empties_it() {
    let gate = Gate::default();
    let closed = gate.closed.clone();
    let (mut uart, line) = counted(gate);
    write(&mut uart, FCR, FCR_ENABLE);
    closed.store(true, Ordering::Relaxed);
    write(&mut uart, THR, 0);
    assert_eq!(
        read(&mut uart, LSR) & 0x60,
        LSR_THRE,
        "the byte is in the shift register"
    );
    for byte in 1..=16 {
        assert_eq!(read(&mut uart, LSR) & LSR_THRE != 0, byte == 1);
        write(&mut uart, THR, byte);
    }
    assert_eq!(read(&mut uart, LSR) & 0x60, 0, "FIFO full");
    write(&mut uart, THR, 0xff);
    assert_eq!(uart.lost_bytes(), 1, "a write into a full FIFO is lost");
    write(&mut uart, IER, IER_THRI);
    assert_eq!(line.pulses(), 0, "THR is not empty");
    closed.store(false, Ordering::Relaxed);
    uart.flush_transmit();
    assert_eq!(line.pulses(), 1, "the FIFO emptied");
    assert_eq!(read(&mut uart, LSR) & 0x60, LSR_THRE | LSR_TEMT);
    assert_eq!(uart.output().written, (0..=16).collect::<Vec<u8>>());
}

#[test]
fn an_output_error_loses_bytes_but_not_the_transmitter() {
    let mut uart = Uart::new(Broken);
    write(&mut uart, THR, b'x');
    assert_eq!(uart.lost_bytes(), 1);
    assert_eq!(read(&mut uart, LSR) & 0x60, LSR_THRE | LSR_TEMT);
}

#[test]
fn bytes_leave_in_order_under_interleaved_accesses() {
    let gate = Gate::default();
    let closed = gate.closed.clone();
    let mut uart = Uart::new(gate);
    write(&mut uart, FCR, FCR_ENABLE);
    let mut sent = Vec::new();
    for i in 0..600u32 {
        // The output refuses for a while now and then, as a full pipe does.
        closed.store(i % 97 < 20, Ordering::Relaxed);
        // A driver that waits for THRE, then fills the FIFO (serial8250_console_fifo_write).
        if read(&mut uart, LSR) & LSR_THRE == 0 {
            continue;
        }
        for _ in 0..TX_FIFO_DEPTH {
            let byte = (sent.len() % 251) as u8;
            write(&mut uart, THR, byte);
            sent.push(byte);
        }
        // Other registers in between: DLAB set makes offset 0 the divisor latch.
        write(&mut uart, LCR, LCR_DLAB | 0x03);
        write(&mut uart, DLL, 0xee);
        write(&mut uart, LCR, 0x03);
        write(&mut uart, SCR, i as u8);
        read(&mut uart, IIR);
        uart.receive(b"z");
        read(&mut uart, RBR);
    }
    closed.store(false, Ordering::Relaxed);
    uart.flush_transmit();
    assert!(sent.len() > 10 * TX_FIFO_DEPTH);
    assert_eq!(uart.lost_bytes(), 0);
    assert_eq!(uart.output().written, sent);
}

#[test]
fn loopback_overruns_past_the_fifo_depth() {
    let (mut uart, _) = counted(Vec::new());
    write(&mut uart, FCR, FCR_ENABLE);
    write(&mut uart, MCR, MCR_LOOP);
    assert_eq!(uart.receive(b"host"), 0, "the serial input is disconnected");
    for byte in 0..20 {
        write(&mut uart, THR, byte);
    }
    assert!(uart.output().is_empty(), "looped back, not transmitted");
    write(&mut uart, IER, IER_RLSI | IER_RDI);
    assert_eq!(read(&mut uart, IIR), IIR_FIFOS_ON | IIR_RLSI);
    assert_eq!(read(&mut uart, LSR) & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
    assert_eq!(read(&mut uart, LSR) & LSR_OE, 0, "cleared by the read");
    let received: Vec<u8> = (0..RX_FIFO_DEPTH).map(|_| read(&mut uart, RBR)).collect();
    assert_eq!(received, (0..16).collect::<Vec<u8>>());
    assert_eq!(read(&mut uart, LSR) & LSR_DR, 0);
}

#[test]
fn modem_status_follows_mcr_in_loopback() {
    let (mut uart, line) = counted(Vec::new());
    assert_eq!(read(&mut uart, MSR), MSR_CONNECTED);
    write(&mut uart, IER, IER_MSI);
    write(&mut uart, MCR, MCR_LOOP | MCR_OUT1 | MCR_DTR);
    assert_eq!(line.pulses(), 1);
    assert_eq!(read(&mut uart, IIR), IIR_MSI);
    assert_eq!(
        read(&mut uart, MSR),
        MSR_RI | MSR_DSR | MSR_DCTS | MSR_DDCD,
        "CTS and DCD dropped, DSR stayed"
    );
    assert_eq!(read(&mut uart, IIR), IIR_NONE, "deltas cleared by the read");
    write(&mut uart, MCR, MCR_LOOP | MCR_DTR);
    assert_eq!(
        read(&mut uart, MSR),
        MSR_DSR | MSR_TERI,
        "RI's trailing edge"
    );
}

#[test]
fn odd_widths_and_offsets_read_all_ones_and_write_nothing() {
    let mut uart = Uart::new(Vec::new());
    let mut wide = [0u8; 2];
    uart.access(THR, Access::Read(&mut wide));
    assert_eq!(wide, [0xff, 0xff]);
    uart.access(THR, Access::Write(b"ab"));
    uart.access(THR, Access::Write(&[]));
    uart.access(8, Access::Write(b"c"));
    assert_eq!(read(&mut uart, 8), 0xff);
    assert_eq!(read(&mut uart, u64::MAX), 0xff);
    assert!(uart.output().is_empty());
}

#[test]
fn posting_thr_is_an_option() {
    let uart = Uart::new(Vec::new());
    assert!(uart.posted_registers().is_empty());
    let posted = UartOptions {
        post_transmit: true,
    };
    let uart = Uart::with_options(Vec::new(), Arc::new(CountingLine::default()), posted);
    assert_eq!(uart.posted_registers(), &[PostedRegister::bounded(0, 1)]);
}

#[test]
fn random_accesses_never_panic() {
    let gate = Gate::default();
    let closed = gate.closed.clone();
    let (mut uart, line) = counted(gate);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut data = [0u8; 4];
    for _ in 0..10_000 {
        let r = next();
        let offset = r % 10;
        let len = if r >> 12 & 7 == 0 {
            1 + (r >> 8) as usize % 4
        } else {
            1
        };
        let value = (r >> 16) as u8;
        match r >> 24 & 15 {
            0 => {
                uart.receive(&[value; 5]);
            }
            1 => uart.flush_transmit(),
            2 => closed.store(value & 1 == 0, Ordering::Relaxed),
            3..=8 => {
                uart.access(offset, Access::Read(&mut data[..len]));
            }
            _ => {
                data.fill(value);
                uart.access(offset, Access::Write(&data[..len]));
            }
        }
        assert!(uart.tx.len() <= TX_FIFO_DEPTH + 1);
        assert!(uart.rx.len() <= RX_CAPACITY);
    }
    assert!(line.pulses() <= 10_000);
}

mod linux;
