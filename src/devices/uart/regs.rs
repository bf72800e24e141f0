//! The 16550A's register offsets and bits, named as in Linux's `serial_reg.h`.

/// Register offsets (DLL and DLM share 0 and 1 when LCR.DLAB is set).
pub(super) mod reg {
    pub const DATA: u8 = 0;
    pub const IER: u8 = 1;
    pub const IIR_FCR: u8 = 2;
    pub const LCR: u8 = 3;
    pub const MCR: u8 = 4;
    pub const LSR: u8 = 5;
    pub const MSR: u8 = 6;
    pub const SCR: u8 = 7;
}

pub(super) const IER_RDI: u8 = 0x01;
pub(super) const IER_THRI: u8 = 0x02;
pub(super) const IER_RLSI: u8 = 0x04;
pub(super) const IER_MSI: u8 = 0x08;
/// A 16550A has only the low four IER bits (Linux's XScale probe checks bit 6 reads 0).
pub(super) const IER_MASK: u8 = 0x0f;

pub(super) const IIR_NONE: u8 = 0x01;
pub(super) const IIR_MSI: u8 = 0x00;
pub(super) const IIR_THRI: u8 = 0x02;
pub(super) const IIR_RDI: u8 = 0x04;
pub(super) const IIR_RLSI: u8 = 0x06;
pub(super) const IIR_TIMEOUT: u8 = 0x0c;
pub(super) const IIR_FIFOS_ON: u8 = 0xc0;

pub(super) const FCR_ENABLE: u8 = 0x01;
pub(super) const FCR_CLEAR_RX: u8 = 0x02;
pub(super) const FCR_CLEAR_TX: u8 = 0x04;

pub(super) const LCR_DLAB: u8 = 0x80;

pub(super) const MCR_DTR: u8 = 0x01;
pub(super) const MCR_RTS: u8 = 0x02;
pub(super) const MCR_OUT1: u8 = 0x04;
pub(super) const MCR_OUT2: u8 = 0x08;
pub(super) const MCR_LOOP: u8 = 0x10;
pub(super) const MCR_MASK: u8 = 0x1f;

pub(super) const LSR_DR: u8 = 0x01;
pub(super) const LSR_OE: u8 = 0x02;
pub(super) const LSR_THRE: u8 = 0x20;
pub(super) const LSR_TEMT: u8 = 0x40;

pub(super) const MSR_DCTS: u8 = 0x01;
pub(super) const MSR_DDSR: u8 = 0x02;
pub(super) const MSR_TERI: u8 = 0x04;
pub(super) const MSR_DDCD: u8 = 0x08;
pub(super) const MSR_CTS: u8 = 0x10;
pub(super) const MSR_DSR: u8 = 0x20;
pub(super) const MSR_RI: u8 = 0x40;
pub(super) const MSR_DCD: u8 = 0x80;
/// What the far end asserts outside loopback: carrier, data set ready, clear to send.
pub(super) const MSR_CONNECTED: u8 = MSR_DCD | MSR_DSR | MSR_CTS;

/// Receive trigger levels selected by FCR bits 7:6.
pub(super) const TRIGGER_LEVELS: [usize; 4] = [1, 4, 8, 14];
