//! A 16550A UART (COM1) that Linux's 8250 driver detects as `PORT_16550A`, and whose
//! transmit register can be posted.
//!
//! Why not `vm-superio`'s `Serial` (0.8): its IIR always claims FIFOs, whatever FCR
//! says, but its loopback fills a 64-byte buffer, so Linux's `size_fifo` counts 64 and
//! names the port a U6_16550A rather than a 16550A. Its
//! interrupt is an event, not a level: it triggers on every THR write and on every IER
//! write, and its IIR read forgets every pending source (received data included). FCR
//! is ignored (FIFOs are never cleared), and a byte the host output refuses is lost
//! while THRE still reads set. Its fields are private, so a wrapper cannot change any
//! of that, and a posted burst of THR writes applied at once needs the 16550's own
//! rules: one interrupt source per condition, each with the datasheet's priority and
//! acknowledgement.
//!
//! The model:
//! - The interrupt output is the level "some enabled source is pending"; the ISA line
//!   is edge-triggered, so the device pulses its [`InterruptLine`] on each rising edge,
//!   as QEMU's 16550 raises and lowers its pin.
//! - The transmitter runs at the host's speed: a THR write moves the byte through the
//!   FIFO and the shift register to the output before the access returns. Bytes stay
//!   only while the output refuses them (`WouldBlock`: the machine's destinations are
//!   non-blocking, so a full pipe refuses rather than blocking the vCPU under this
//!   device's lock); then THRE and TEMT read clear, the FIFO fills (16 bytes, plus the
//!   shift register) and the guest's driver waits, as behind a slow line: that is the
//!   back-pressure. Every later access retries, and so does [`Uart::flush_transmit`],
//!   which the machine calls when the destination has room again; THRE and its
//!   interrupt follow.
//! - A write into a full FIFO is lost, as on the chip, and counted
//!   ([`Uart::lost_bytes`]). A driver that honours THRE never makes one, posted THR
//!   writes included: it reads LSR first, that read exits and drains the ring, so it
//!   sees the FIFO's true level, and it then writes at most a FIFO's worth. Growing the
//!   FIFO instead would hide a driver's bug and let a guest make the host buffer
//!   without bound.
//! - The THR-empty source is set when THRE goes from clear to set, and when IER.ETBEI
//!   goes from 0 to 1 while THRE is set (what `serial8250_start_tx` relies on); it is
//!   cleared by an IIR read that reports it, by a THR write, and by clearing ETBEI.
//!   A THR write lowers the line before the byte leaves, so each transmitted byte can
//!   make an edge, as each byte does on a 16550 whose FIFO drains between writes.
//! - The receiver holds up to [`RX_CAPACITY`] bytes of host input: the guest sees a
//!   16-byte FIFO ([`RX_FIFO_DEPTH`]; 1 byte with FIFOs off) and the rest waits as on a
//!   flow-controlled line. Loopback (MCR bit 4) sends THR bytes to the receiver, where
//!   they overrun (LSR.OE) past the FIFO's depth, so Linux's `size_fifo` counts 16.
//!
//! Posting THR (offset 0, one byte) is safe: a posted write only latches. With DLAB
//! clear it queues a byte: the host output and a looped-back byte are seen only through
//! a later access, which drains the ring first, and the THR-empty edge comes when the
//! ring is drained instead of at the write, which to the guest is a slower transmitter
//! (the machine bounds that delay: see [`Uart::flush_transmit`]). With DLAB set the same
//! write is a DLL write, which only latches too. So offset 0 can be posted whatever LCR
//! says; posted-ness is fixed when the machine is built, so
//! [`UartOptions::post_transmit`] switches it.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::sync::Arc;

use crate::bus::{Access, BusDevice, PostedRegister, StopRequest};
use crate::irq::{CountingLine, InterruptLine};

mod regs;
use regs::*;
mod state;
pub use state::SavedUart;

/// Bytes in the transmit FIFO (the shift register holds one more).
pub const TX_FIFO_DEPTH: usize = 16;
/// Bytes in the receive FIFO, as the guest sees it.
pub const RX_FIFO_DEPTH: usize = 16;
/// Host input the receiver holds, FIFO included.
pub const RX_CAPACITY: usize = 64;

const POSTED_THR: [PostedRegister; 1] = [PostedRegister::bounded(0, 1)];

/// How the machine wants the UART built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UartOptions {
    /// Declare offset 0 (THR, or DLL with DLAB set) posted, so KVM may queue its writes
    /// in the coalesced ring. The machine must then drain the ring within a bounded
    /// time (see [`Uart::flush_transmit`]).
    pub post_transmit: bool,
}

/// COM1: eight byte-wide registers.
pub struct Uart<W: Write + Send> {
    out: W,
    irq: Arc<dyn InterruptLine>,
    options: UartOptions,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: [u8; 2],
    fifos_on: bool,
    trigger: usize,
    /// Shift register first, then the transmit FIFO: bytes the output has not taken.
    tx: VecDeque<u8>,
    rx: VecDeque<u8>,
    overrun: bool,
    thre_pending: bool,
    msr_deltas: u8,
    /// The interrupt output as last signalled.
    line_high: bool,
    lost: u64,
}

impl<W: Write + Send> std::fmt::Debug for Uart<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uart")
            .field("ier", &self.ier)
            .field("lcr", &self.lcr)
            .field("mcr", &self.mcr)
            .field("tx", &self.tx.len())
            .field("rx", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl<W: Write + Send> Uart<W> {
    /// A UART whose transmitted bytes go to `out`, with an interrupt line that only counts.
    pub fn new(out: W) -> Self {
        Self::with_interrupt(out, Arc::new(CountingLine::default()))
    }

    /// A UART whose transmitted bytes go to `out` and whose interrupt drives `irq`.
    pub fn with_interrupt(out: W, irq: Arc<dyn InterruptLine>) -> Self {
        Self::with_options(out, irq, UartOptions::default())
    }

    /// A UART built with `options`.
    pub fn with_options(out: W, irq: Arc<dyn InterruptLine>, options: UartOptions) -> Self {
        Self {
            out,
            irq,
            options,
            ier: 0,
            lcr: 0x03,
            // OUT2 gates the IRQ onto the ISA bus; guests that never touch MCR expect it on.
            mcr: MCR_OUT2,
            scr: 0,
            // 9600 baud.
            divisor: [0x0c, 0x00],
            fifos_on: false,
            trigger: 1,
            tx: VecDeque::with_capacity(TX_FIFO_DEPTH + 1),
            rx: VecDeque::with_capacity(RX_CAPACITY),
            overrun: false,
            thre_pending: false,
            msr_deltas: 0,
            line_high: false,
            lost: 0,
        }
    }

    /// Queues host input for the guest to read; returns how many bytes fitted (the rest
    /// are the caller's to keep or drop). Nothing fits in loopback, where the serial
    /// input is disconnected.
    pub fn receive(&mut self, input: &[u8]) -> usize {
        if self.mcr & MCR_LOOP != 0 {
            return 0;
        }
        let taken = input.len().min(RX_CAPACITY - self.rx.len());
        self.rx.extend(&input[..taken]);
        self.update_line();
        taken
    }

    /// Where transmitted bytes went.
    pub fn output(&self) -> &W {
        &self.out
    }

    /// Transmitted bytes that were lost: written into a full FIFO (a driver that ignored
    /// THRE), cleared by FCR, or refused by the output with an error other than
    /// `WouldBlock` (the machine's destinations never do: one whose reader is gone takes
    /// and counts the bytes itself).
    pub fn lost_bytes(&self) -> u64 {
        self.lost
    }

    /// Offers the output whatever it refused so far, and raises THR-empty if that
    /// empties the FIFO. The machine calls it when a destination that refused bytes has
    /// room again (`event_loop::OutputRoom`), and at the stop.
    ///
    /// Time bound: a byte the output accepts has left before its THR write returns, so
    /// only bytes refused with `WouldBlock` wait here, and any guest access retries them.
    /// With [`UartOptions::post_transmit`], a THR byte is not in the device at all until
    /// the machine drains the coalesced ring. So the machine's bounded drain must
    /// drain the ring and then call this, at least once per period P: a transmitted
    /// byte the output takes then reaches it (and its THR-empty interrupt the guest)
    /// within P of the write, whatever the guest does next (it may halt in the kernel,
    /// where nothing exits, while it waits for that interrupt).
    pub fn flush_transmit(&mut self) {
        self.transmit();
        self.update_line();
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn looped(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn tx_fifo_depth(&self) -> usize {
        if self.fifos_on {
            TX_FIFO_DEPTH
        } else {
            1
        }
    }

    fn rx_fifo_depth(&self) -> usize {
        if self.fifos_on {
            RX_FIFO_DEPTH
        } else {
            1
        }
    }

    /// THR (or the transmit FIFO) is empty: at most the shift register holds a byte.
    fn thre(&self) -> bool {
        self.tx.len() <= 1
    }

    /// The highest-priority enabled source, as IIR bits 3:0.
    fn pending(&self) -> u8 {
        let visible = self.rx.len().min(self.rx_fifo_depth());
        if self.ier & IER_RLSI != 0 && self.overrun {
            IIR_RLSI
        } else if self.ier & IER_RDI != 0 && visible > 0 {
            // Host input arrives whole, so a FIFO below its trigger level has already
            // waited out the character timeout.
            if self.fifos_on && visible < self.trigger {
                IIR_TIMEOUT
            } else {
                IIR_RDI
            }
        } else if self.ier & IER_THRI != 0 && self.thre_pending {
            IIR_THRI
        } else if self.ier & IER_MSI != 0 && self.msr_deltas != 0 {
            IIR_MSI
        } else {
            IIR_NONE
        }
    }

    /// Signals a rising edge of the interrupt output.
    fn update_line(&mut self) {
        let high = self.pending() != IIR_NONE;
        if high && !self.line_high {
            self.irq.pulse();
        }
        self.line_high = high;
    }

    /// Hands the output what it takes, oldest first; sets THR-empty if THRE rose.
    fn transmit(&mut self) {
        let was_empty = self.thre();
        let mut sent = false;
        while !self.tx.is_empty() {
            let (head, _) = self.tx.as_slices();
            match self.out.write(head) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx.drain(..n);
                    sent = true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // The host side failing (a closed pipe) must not stop the guest.
                Err(_) => {
                    self.lost += self.tx.len() as u64;
                    self.tx.clear();
                }
            }
        }
        if sent {
            let _ = self.out.flush();
        }
        if !was_empty && self.thre() {
            self.thre_pending = true;
        }
    }

    fn write_thr(&mut self, value: u8) {
        self.thre_pending = false;
        self.update_line();
        if self.looped() {
            self.loop_back(value);
        } else if self.tx.len() > self.tx_fifo_depth() {
            self.lost += 1;
        } else {
            self.tx.push_back(value);
            self.transmit();
        }
        if self.thre() {
            self.thre_pending = true;
        }
    }

    /// Loopback: the byte goes straight to the receiver, which overruns past its depth.
    fn loop_back(&mut self, value: u8) {
        if self.rx.len() < self.rx_fifo_depth() {
            self.rx.push_back(value);
        } else {
            self.overrun = true;
        }
    }

    fn write_ier(&mut self, value: u8) {
        let enabled = !self.ier & value & IER_THRI != 0;
        self.ier = value & IER_MASK;
        if enabled && self.thre() {
            self.thre_pending = true;
        } else if self.ier & IER_THRI == 0 {
            self.thre_pending = false;
        }
    }

    fn write_fcr(&mut self, value: u8) {
        let on = value & FCR_ENABLE != 0;
        if on != self.fifos_on {
            // Switching between FIFO and 16450 mode empties both FIFOs.
            self.clear_rx();
            self.clear_tx();
            self.fifos_on = on;
        }
        // The other bits are programmed only together with the enable bit.
        if on {
            if value & FCR_CLEAR_RX != 0 {
                self.clear_rx();
            }
            if value & FCR_CLEAR_TX != 0 {
                self.clear_tx();
            }
            self.trigger = TRIGGER_LEVELS[usize::from(value >> 6)];
        }
    }

    fn clear_rx(&mut self) {
        self.rx.clear();
        self.overrun = false;
    }

    fn clear_tx(&mut self) {
        let was_empty = self.thre();
        self.lost += self.tx.len() as u64;
        self.tx.clear();
        if !was_empty {
            self.thre_pending = true;
        }
    }

    /// MSR bits 7:4: in loopback the modem outputs (DTR, RTS, OUT1, OUT2) feed them.
    fn modem_status(mcr: u8) -> u8 {
        if mcr & MCR_LOOP == 0 {
            return MSR_CONNECTED;
        }
        [
            (MCR_DTR, MSR_DSR),
            (MCR_RTS, MSR_CTS),
            (MCR_OUT1, MSR_RI),
            (MCR_OUT2, MSR_DCD),
        ]
        .iter()
        .filter(|(out, _)| mcr & out != 0)
        .fold(0, |status, (_, input)| status | input)
    }

    fn write_mcr(&mut self, value: u8) {
        let before = Self::modem_status(self.mcr);
        self.mcr = value & MCR_MASK;
        let after = Self::modem_status(self.mcr);
        let changed = before ^ after;
        for (input, delta) in [
            (MSR_CTS, MSR_DCTS),
            (MSR_DSR, MSR_DDSR),
            (MSR_DCD, MSR_DDCD),
        ] {
            if changed & input != 0 {
                self.msr_deltas |= delta;
            }
        }
        // RI reports its trailing edge only.
        if before & MSR_RI != 0 && after & MSR_RI == 0 {
            self.msr_deltas |= MSR_TERI;
        }
    }

    /// A register write; `offset` is 0-7.
    fn write(&mut self, offset: u8, value: u8) {
        match offset {
            reg::DATA if self.dlab() => self.divisor[0] = value,
            reg::IER if self.dlab() => self.divisor[1] = value,
            reg::DATA => self.write_thr(value),
            reg::IER => self.write_ier(value),
            reg::IIR_FCR => self.write_fcr(value),
            reg::LCR => self.lcr = value,
            reg::MCR => self.write_mcr(value),
            reg::SCR => self.scr = value,
            // LSR and MSR are read-only.
            _ => {}
        }
    }

    fn read_iir(&mut self) -> u8 {
        let pending = self.pending();
        if pending == IIR_THRI {
            self.thre_pending = false;
        }
        let fifos = if self.fifos_on { IIR_FIFOS_ON } else { 0 };
        fifos | pending
    }

    fn read_lsr(&mut self) -> u8 {
        let mut lsr = 0;
        if !self.rx.is_empty() {
            lsr |= LSR_DR;
        }
        if self.overrun {
            lsr |= LSR_OE;
            self.overrun = false;
        }
        if self.thre() {
            lsr |= LSR_THRE;
        }
        if self.tx.is_empty() {
            lsr |= LSR_TEMT;
        }
        lsr
    }

    fn read_msr(&mut self) -> u8 {
        let msr = Self::modem_status(self.mcr) | self.msr_deltas;
        self.msr_deltas = 0;
        msr
    }

    /// A register read; `offset` is 0-7.
    fn read(&mut self, offset: u8) -> u8 {
        match offset {
            reg::DATA if self.dlab() => self.divisor[0],
            reg::IER if self.dlab() => self.divisor[1],
            // An empty receiver reads 0.
            reg::DATA => self.rx.pop_front().unwrap_or(0),
            reg::IER => self.ier,
            reg::IIR_FCR => self.read_iir(),
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => self.read_lsr(),
            reg::MSR => self.read_msr(),
            reg::SCR => self.scr,
            _ => 0xff,
        }
    }
}

impl<W: Write + Send> BusDevice for Uart<W> {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        // Bytes the output refused get another chance before the guest looks.
        if !self.tx.is_empty() {
            self.transmit();
        }
        // Registers are byte-wide: anything else reads all-ones and writes nothing.
        let register = u8::try_from(offset)
            .ok()
            .filter(|offset| *offset <= reg::SCR);
        match (access, register) {
            (Access::Read([byte]), Some(offset)) => *byte = self.read(offset),
            (Access::Write([value]), Some(offset)) => self.write(offset, *value),
            (Access::Read(data), _) => data.fill(0xff),
            (Access::Write(_), _) => {}
        }
        self.update_line();
        None
    }

    fn posted_registers(&self) -> &[PostedRegister] {
        if self.options.post_transmit {
            &POSTED_THR
        } else {
            &[]
        }
    }
}

#[cfg(test)]
mod tests;
