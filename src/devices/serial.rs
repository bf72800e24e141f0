//! The 16550 UART (COM1) from `vm-superio`, adapted to the bus.

use std::io::Write;
use std::sync::Arc;

use vm_superio::{serial::NoEvents, Serial, Trigger};

use crate::bus::{Access, BusDevice, StopRequest};
use crate::irq::{CountingLine, InterruptLine};

/// The UART's interrupt (IRQ 4): vm-superio triggers it on each THR-empty or
/// received-data event the guest enabled.
#[derive(Clone)]
pub struct UartInterrupt(Arc<dyn InterruptLine>);

impl Trigger for UartInterrupt {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.pulse();
        Ok(())
    }
}

/// COM1: eight byte-wide registers.
pub struct SerialPort<W: Write + Send> {
    uart: Serial<UartInterrupt, NoEvents, W>,
}

impl<W: Write + Send> std::fmt::Debug for SerialPort<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialPort")
    }
}

impl<W: Write + Send> SerialPort<W> {
    /// A UART whose transmitted bytes go to `out`, with an interrupt line that only counts.
    pub fn new(out: W) -> Self {
        Self::with_interrupt(out, Arc::new(CountingLine::default()))
    }

    /// A UART whose transmitted bytes go to `out` and whose interrupt drives `irq`.
    pub fn with_interrupt(out: W, irq: Arc<dyn InterruptLine>) -> Self {
        Self {
            uart: Serial::new(UartInterrupt(irq), out),
        }
    }

    /// Queues host input for the guest to read; returns how many bytes fitted in the
    /// receive FIFO (the rest are the caller's to keep or drop).
    pub fn receive(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    /// Where transmitted bytes went.
    pub fn output(&self) -> &W {
        self.uart.writer()
    }
}

impl<W: Write + Send> BusDevice for SerialPort<W> {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        // Registers are byte-wide; a wider access touches consecutive registers.
        match access {
            Access::Read(data) => {
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte = self.uart.read((offset as usize + i) as u8);
                }
            }
            Access::Write(data) => {
                for (i, byte) in data.iter().enumerate() {
                    // The host side failing (a closed pipe) must not stop the guest.
                    let _ = self.uart.write((offset as usize + i) as u8, *byte);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const LCR: u64 = 3;
    const LSR: u64 = 5;

    #[test]
    fn transmitted_bytes_reach_the_output() {
        let mut port = SerialPort::new(Vec::new());
        for byte in b"hi\n" {
            port.access(THR, Access::Write(&[*byte]));
        }
        assert_eq!(port.output(), b"hi\n");
    }

    #[test]
    fn line_status_says_the_transmitter_is_empty() {
        let mut port = SerialPort::new(Vec::new());
        let mut data = [0u8];
        port.access(LSR, Access::Read(&mut data));
        assert_eq!(data[0] & 0x60, 0x60);
    }

    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;

    #[test]
    fn received_bytes_raise_the_interrupt_when_enabled_and_read_back() {
        let line = Arc::new(CountingLine::default());
        let mut port = SerialPort::with_interrupt(Vec::new(), line.clone());
        assert_eq!(port.receive(b"a"), 1);
        assert_eq!(line.pulses(), 0, "receive interrupt not enabled");
        port.access(IER, Access::Write(&[0x01]));
        assert_eq!(port.receive(b"bc"), 2);
        assert_eq!(line.pulses(), 1);
        let mut data = [0u8];
        for expected in b"abc" {
            port.access(RBR, Access::Read(&mut data));
            assert_eq!(data[0], *expected);
        }
        port.access(LSR, Access::Read(&mut data));
        assert_eq!(data[0] & 0x01, 0, "no more data ready");
    }

    #[test]
    fn transmitter_empty_interrupt_fires_when_enabled() {
        let line = Arc::new(CountingLine::default());
        let mut port = SerialPort::with_interrupt(Vec::new(), line.clone());
        port.access(IER, Access::Write(&[0x02]));
        assert_eq!(line.pulses(), 1, "enabling it with THR already empty");
        let mut iir = [0u8];
        port.access(IIR, Access::Read(&mut iir));
        assert_eq!(
            iir[0] & 0x0f,
            0x02,
            "THR empty identified, and acknowledged by this read"
        );
        port.access(THR, Access::Write(b"x"));
        assert_eq!(line.pulses(), 2, "THR empty again after a write");
    }

    #[test]
    fn divisor_latch_does_not_transmit() {
        let mut port = SerialPort::new(Vec::new());
        port.access(LCR, Access::Write(&[0x80]));
        port.access(THR, Access::Write(&[0x01]));
        port.access(LCR, Access::Write(&[0x03]));
        port.access(THR, Access::Write(b"x"));
        assert_eq!(port.output(), b"x");
        let mut data = [0u8];
        port.access(LCR, Access::Read(&mut data));
        assert_eq!(data[0], 0x03);
    }
}
