//! The 16550 UART (COM1) from `vm-superio`, adapted to the bus.

use std::io::Write;

use vm_superio::{serial::NoEvents, Serial, Trigger};

use crate::bus::{Access, BusDevice, StopRequest};

/// An interrupt line that goes nowhere, until the UART is wired to the irqchip.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// COM1: eight byte-wide registers.
pub struct SerialPort<W: Write + Send> {
    uart: Serial<NoInterrupt, NoEvents, W>,
}

impl<W: Write + Send> std::fmt::Debug for SerialPort<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialPort")
    }
}

/// Ports the UART occupies.
pub const SERIAL_PORT_COUNT: u16 = 8;

impl<W: Write + Send> SerialPort<W> {
    /// A UART whose transmitted bytes go to `out`.
    pub fn new(out: W) -> Self {
        Self {
            uart: Serial::new(NoInterrupt, out),
        }
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
