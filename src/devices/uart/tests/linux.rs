//! The register sequences of Linux's 8250 driver (drivers/tty/serial/8250/8250_port.c),
//! written out as accesses: autoconfig's probes and the THRE checks of startup.

use super::*;

/// What `autoconfig` picks, by the port type's name.
fn linux_port_type<W: Write + Send>(uart: &mut Uart<W>) -> &'static str {
    // Existence: IER's low nibble holds what is written.
    let saved_ier = read(uart, IER);
    write(uart, IER, 0);
    let cleared = read(uart, IER) & 0x0f;
    write(uart, IER, 0x0f);
    let set = read(uart, IER) & 0x0f;
    write(uart, IER, saved_ier);
    if cleared != 0 || set != 0x0f {
        return "none";
    }
    // Loopback: RTS and OUT2 come back as CTS and DCD.
    let saved_mcr = read(uart, MCR);
    let saved_lcr = read(uart, LCR);
    write(uart, MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS);
    let status = read(uart, MSR) & 0xf0;
    write(uart, MCR, saved_mcr);
    if status != MSR_DCD | MSR_CTS {
        return "none";
    }
    // EFR cleared with LCR = 0xbf (on a 16550A that is an FCR write), then FIFOs on.
    write(uart, LCR, 0xbf);
    write(uart, FCR, 0);
    write(uart, LCR, 0);
    write(uart, FCR, FCR_ENABLE);
    let kind = match read(uart, IIR) >> 6 {
        0 => scratch_kind(uart),
        1 => "unknown",
        2 => "16550",
        _ => kind_with_fifos(uart),
    };
    write(uart, LCR, saved_lcr);
    // The reset that follows detection.
    write(uart, MCR, saved_mcr);
    write(uart, FCR, FCR_ENABLE);
    write(uart, FCR, FCR_ENABLE | FCR_CLEAR_RX | FCR_CLEAR_TX);
    write(uart, FCR, 0);
    read(uart, RBR);
    write(uart, IER, 0);
    kind
}

fn scratch_kind<W: Write + Send>(uart: &mut Uart<W>) -> &'static str {
    write(uart, SCR, 0xa5);
    let first = read(uart, SCR);
    write(uart, SCR, 0x5a);
    match (first, read(uart, SCR)) {
        (0xa5, 0x5a) => "16450",
        _ => "8250",
    }
}

/// `autoconfig_16550a`: every test for a later chip must fail.
fn kind_with_fifos<W: Write + Send>(uart: &mut Uart<W>) -> &'static str {
    // An EFR (reads 0) at offset 2 with DLAB set, or with LCR = 0xbf.
    write(uart, LCR, LCR_DLAB);
    if read(uart, IIR) == 0 {
        return "16650";
    }
    write(uart, LCR, 0xbf);
    if read(uart, IIR) == 0 {
        return "16650V2";
    }
    if national_semiconductor(uart) {
        return "NS16550A";
    }
    // A TI16750 sets IIR bit 5 for the 64-byte FIFO, with DLAB only.
    write(uart, LCR, 0);
    write(uart, FCR, FCR_ENABLE | 0x20);
    let without_dlab = read(uart, IIR) >> 5;
    write(uart, FCR, FCR_ENABLE);
    write(uart, LCR, LCR_DLAB);
    write(uart, FCR, FCR_ENABLE | 0x20);
    let with_dlab = read(uart, IIR) >> 5;
    write(uart, FCR, FCR_ENABLE);
    write(uart, LCR, 0);
    if without_dlab == 6 && with_dlab == 7 {
        return "16750";
    }
    // An XScale keeps IER bit 6.
    let saved_ier = read(uart, IER);
    write(uart, IER, saved_ier | 0x40);
    let xscale = read(uart, IER) & 0x40 != 0;
    write(uart, IER, saved_ier);
    if xscale {
        return "XScale";
    }
    match size_fifo(uart) {
        64 => "U6_16550A",
        _ => "16550A",
    }
}

/// A SuperIO chip shows MCR's loop bit in EXCR1 (offset 2 with LCR = 0xe0).
fn national_semiconductor<W: Write + Send>(uart: &mut Uart<W>) -> bool {
    write(uart, LCR, 0);
    let mcr = read(uart, MCR);
    write(uart, LCR, 0xe0);
    if (read(uart, IIR) ^ mcr) & MCR_LOOP != 0 {
        return false;
    }
    write(uart, LCR, 0);
    write(uart, MCR, mcr ^ MCR_LOOP);
    write(uart, LCR, 0xe0);
    let excr1 = read(uart, IIR);
    write(uart, LCR, 0);
    write(uart, MCR, mcr);
    (excr1 ^ mcr) & MCR_LOOP != 0
}

/// Counts what 256 looped-back bytes leave in the receive FIFO.
fn size_fifo<W: Write + Send>(uart: &mut Uart<W>) -> usize {
    let saved_lcr = read(uart, LCR);
    write(uart, LCR, 0);
    let saved_fcr = read(uart, IIR);
    let saved_mcr = read(uart, MCR);
    write(uart, FCR, FCR_ENABLE | FCR_CLEAR_RX | FCR_CLEAR_TX);
    write(uart, MCR, MCR_LOOP);
    write(uart, LCR, LCR_DLAB);
    let divisor = (read(uart, DLL), read(uart, DLM));
    write(uart, DLL, 1);
    write(uart, DLM, 0);
    write(uart, LCR, 0x03);
    for byte in 0..=255 {
        write(uart, THR, byte);
    }
    let mut count = 0;
    while count < 256 && read(uart, LSR) & LSR_DR != 0 {
        read(uart, RBR);
        count += 1;
    }
    write(uart, FCR, saved_fcr);
    write(uart, MCR, saved_mcr);
    write(uart, LCR, LCR_DLAB);
    write(uart, DLL, divisor.0);
    write(uart, DLM, divisor.1);
    write(uart, LCR, saved_lcr);
    count
}

#[test]
fn linux_autoconfig_detects_a_16550a() {
    let (mut uart, line) = counted(Vec::new());
    assert_eq!(linux_port_type(&mut uart), "16550A");
    assert!(uart.output().is_empty(), "the probes transmitted nothing");
    assert_eq!(
        line.pulses(),
        1,
        "one edge: the existence test's IER = 0x0f enables THRI with THR empty"
    );
    assert_eq!(read(&mut uart, LCR), 0x03, "LCR restored");
    assert_eq!(read(&mut uart, MCR), MCR_OUT2, "MCR restored");
    write(&mut uart, LCR, LCR_DLAB);
    assert_eq!((read(&mut uart, DLL), read(&mut uart, DLM)), (0x0c, 0));
}

#[test]
fn a_64_byte_receive_fifo_would_be_a_u6_16550a() {
    // size_fifo() is why the receive FIFO the guest sees is 16 bytes deep.
    let mut uart = Uart::new(Vec::new());
    write(&mut uart, FCR, FCR_ENABLE);
    assert_eq!(size_fifo(&mut uart), RX_FIFO_DEPTH);
}

#[test]
fn linux_startup_finds_thre_reasserted_and_the_transmitter_sane() {
    let (mut uart, _) = counted(Vec::new());
    linux_port_type(&mut uart);
    // UART_BUG_THRE: THRI enabled twice, each time IIR must report THR empty.
    write(&mut uart, IER, IER_THRI);
    let first = read(&mut uart, IIR);
    write(&mut uart, IER, 0);
    write(&mut uart, IER, IER_THRI);
    let second = read(&mut uart, IIR);
    write(&mut uart, IER, 0);
    assert_eq!(first & IIR_NONE, 0);
    assert_eq!(second & IIR_NONE, 0, "THRE reasserted");
    // UART_BUG_TXEN: with TEMT set, enabling THRI must show an interrupt.
    write(&mut uart, IER, IER_THRI);
    let lsr = read(&mut uart, LSR);
    let iir = read(&mut uart, IIR);
    write(&mut uart, IER, 0);
    assert_eq!(lsr & LSR_TEMT, LSR_TEMT);
    assert_eq!(iir & 0x0f, IIR_THRI);
}

#[test]
fn linux_console_write_needs_one_lsr_read_per_16_bytes() {
    let mut uart = Uart::new(Vec::new());
    linux_port_type(&mut uart);
    write(&mut uart, FCR, FCR_ENABLE | 0x80);
    let message: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
    let mut lsr_reads = 0;
    for chunk in message.chunks(TX_FIFO_DEPTH) {
        lsr_reads += 1;
        assert_ne!(read(&mut uart, LSR) & LSR_THRE, 0);
        for byte in chunk {
            write(&mut uart, THR, *byte);
        }
    }
    assert_eq!(
        read(&mut uart, LSR) & 0x60,
        LSR_THRE | LSR_TEMT,
        "both empty"
    );
    assert_eq!(lsr_reads, 7);
    assert_eq!(uart.output(), &message);
}
