//! The UART's saved state: its registers, both FIFOs and its interrupt state. Where the
//! bytes go and the interrupt line are the machine's wiring; [`UartOptions`] are its
//! configuration, so a state restores into a UART built with the same options.
//!
//! [`UartOptions`]: super::UartOptions

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::regs::{IER_MASK, MCR_MASK, MSR_DCTS, MSR_DDCD, MSR_DDSR, MSR_TERI, TRIGGER_LEVELS};
use super::{Uart, RX_CAPACITY, TX_FIFO_DEPTH};
use crate::devices::persist::{check_bits, check_len, Persist, StateError};

const KIND: &str = "uart";

/// What a [`Uart`] saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedUart {
    pub ier: u8,
    pub lcr: u8,
    pub mcr: u8,
    pub scr: u8,
    /// DLL, DLM.
    pub divisor: [u8; 2],
    pub fifos_on: bool,
    /// The receive FIFO's trigger level in bytes (1, 4, 8 or 14).
    pub trigger: usize,
    /// Bytes the output has not taken yet, the shift register's first.
    pub tx: Vec<u8>,
    /// Bytes received and not read, the FIFO's first.
    pub rx: Vec<u8>,
    /// LSR.OE, not yet read.
    pub overrun: bool,
    /// The THR-empty interrupt source.
    pub thre_pending: bool,
    /// MSR's delta bits, not yet read.
    pub msr_deltas: u8,
    /// The interrupt output as last signalled.
    pub line_high: bool,
    /// Transmitted bytes lost so far.
    pub lost: u64,
}

impl<W: Write + Send> Persist for Uart<W> {
    const KIND: &'static str = KIND;
    const VERSION: u32 = 1;
    type State = SavedUart;

    fn save(&self) -> SavedUart {
        SavedUart {
            ier: self.ier,
            lcr: self.lcr,
            mcr: self.mcr,
            scr: self.scr,
            divisor: self.divisor,
            fifos_on: self.fifos_on,
            trigger: self.trigger,
            tx: self.tx.iter().copied().collect(),
            rx: self.rx.iter().copied().collect(),
            overrun: self.overrun,
            thre_pending: self.thre_pending,
            msr_deltas: self.msr_deltas,
            line_high: self.line_high,
            lost: self.lost,
        }
    }

    /// The line is not pulsed again (the interrupt controller's state is restored on its
    /// own); bytes waiting for the output go out at the next access or flush.
    fn restore(&mut self, state: &SavedUart) -> Result<(), StateError> {
        check_bits(KIND, "ier", u64::from(state.ier), u64::from(IER_MASK))?;
        check_bits(KIND, "mcr", u64::from(state.mcr), u64::from(MCR_MASK))?;
        let deltas = MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD;
        check_bits(
            KIND,
            "msr_deltas",
            u64::from(state.msr_deltas),
            u64::from(deltas),
        )?;
        if !TRIGGER_LEVELS.contains(&state.trigger) {
            return Err(StateError::invalid(
                KIND,
                format!(
                    "trigger level {} is none of {TRIGGER_LEVELS:?}",
                    state.trigger
                ),
            ));
        }
        check_len(KIND, "tx", state.tx.len(), TX_FIFO_DEPTH + 1)?;
        check_len(KIND, "rx", state.rx.len(), RX_CAPACITY)?;
        self.ier = state.ier;
        self.lcr = state.lcr;
        self.mcr = state.mcr;
        self.scr = state.scr;
        self.divisor = state.divisor;
        self.fifos_on = state.fifos_on;
        self.trigger = state.trigger;
        self.tx = state.tx.iter().copied().collect();
        self.rx = state.rx.iter().copied().collect();
        self.overrun = state.overrun;
        self.thre_pending = state.thre_pending;
        self.msr_deltas = state.msr_deltas;
        self.line_high = state.line_high;
        self.lost = state.lost;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::persist::testing::{restores_identically, through_json, Step};
    use crate::devices::persist::{open, restore};
    use crate::irq::{CountingLine, InterruptLine};

    const THR: u64 = 0;
    const IER: u64 = 1;
    const FCR_IIR: u64 = 2;
    const LCR: u64 = 3;
    const LSR: u64 = 5;

    /// An output that refuses with `WouldBlock` while closed; what it took is shared.
    #[derive(Clone, Default)]
    struct Valve {
        closed: Arc<AtomicBool>,
        taken: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Valve {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.closed.load(Ordering::SeqCst) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.taken.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn uart(output: &Valve) -> (Uart<Valve>, Arc<CountingLine>) {
        let line = Arc::new(CountingLine::default());
        (Uart::with_interrupt(output.clone(), line.clone()), line)
    }

    fn write(uart: &mut Uart<Valve>, offset: u64, value: u8) {
        crate::bus::BusDevice::access(uart, offset, crate::bus::Access::Write(&[value]));
    }

    #[test]
    fn bytes_in_both_fifos_and_a_pending_interrupt_survive() {
        let output = Valve::default();
        let (mut original, line) = uart(&output);
        // FIFOs on, trigger 8, 115200 baud, receive and THR-empty interrupts.
        write(&mut original, FCR_IIR, 0x81);
        write(&mut original, LCR, 0x83);
        write(&mut original, THR, 0x01);
        write(&mut original, LCR, 0x03);
        write(&mut original, IER, 0x03);
        // The output stops taking bytes: three wait in the transmitter.
        output.closed.store(true, Ordering::SeqCst);
        for byte in *b"abc" {
            write(&mut original, THR, byte);
        }
        assert_eq!(original.receive(b"hello"), 5);
        assert_eq!(
            line.pulses(),
            3,
            "THR-empty at IER and after `a` went to the shift register, then data"
        );

        let fresh_output = Valve {
            closed: Arc::new(AtomicBool::new(true)),
            ..Valve::default()
        };
        let (mut fresh, _) = uart(&fresh_output);
        let steps = [
            Step::Read(FCR_IIR, 1),
            Step::Read(LSR, 1),
            Step::Read(THR, 1),
            Step::Read(THR, 1),
            Step::Read(LCR, 1),
        ];
        let replies = restores_identically(&mut original, &mut fresh, &steps);
        assert_eq!(
            replies[0].0,
            [0xcc],
            "FIFOs on, a character timeout below trigger 8"
        );
        assert_eq!(replies[1].0, [0x01], "data ready, transmitter full");
        assert_eq!(&replies[2].0, b"h");
        assert_eq!(&replies[3].0, b"e");

        // The outputs open: each UART sends what it held, then THR-empty is pending.
        output.closed.store(false, Ordering::SeqCst);
        fresh_output.closed.store(false, Ordering::SeqCst);
        original.flush_transmit();
        fresh.flush_transmit();
        assert_eq!(&*output.taken.lock().unwrap(), b"abc");
        assert_eq!(&*fresh_output.taken.lock().unwrap(), b"abc", "nothing lost");
        let drain = [
            Step::Read(THR, 1),
            Step::Read(THR, 1),
            Step::Read(THR, 1),
            Step::Read(FCR_IIR, 1),
            Step::Read(LSR, 1),
            Step::Read(FCR_IIR, 1),
        ];
        let replies = restores_identically(&mut original, &mut fresh, &drain);
        assert_eq!(&replies[2].0, b"o");
        assert_eq!(replies[3].0, [0xc2], "THR empty");
        assert_eq!(replies[4].0, [0x60]);
        assert_eq!(replies[5].0, [0xc1], "acknowledged by the IIR read");
    }

    #[test]
    fn impossible_states_are_refused_and_change_nothing() {
        let (mut device, _) = uart(&Valve::default());
        write(&mut device, 7, 0x42);
        let good = open::<Uart<Valve>>(&through_json(&device)).unwrap();
        let bad_states = [
            SavedUart {
                ier: 0x10,
                ..good.clone()
            },
            SavedUart {
                mcr: 0x20,
                ..good.clone()
            },
            SavedUart {
                msr_deltas: 0x10,
                ..good.clone()
            },
            SavedUart {
                trigger: 0,
                ..good.clone()
            },
            SavedUart {
                tx: vec![0; TX_FIFO_DEPTH + 2],
                ..good.clone()
            },
            SavedUart {
                rx: vec![0; RX_CAPACITY + 1],
                ..good.clone()
            },
        ];
        let (mut target, _) = uart(&Valve::default());
        write(&mut target, 7, 0x17);
        for bad in bad_states {
            assert!(
                matches!(target.restore(&bad), Err(StateError::Invalid { .. })),
                "{bad:?}"
            );
            assert_eq!(target.scr, 0x17, "unchanged");
        }
        let mut saved = through_json(&device);
        saved.version = 2;
        assert!(matches!(
            restore(&mut target, &saved),
            Err(StateError::Version {
                found: 2,
                expected: 1,
                ..
            })
        ));
    }
}
