//! Register-level device models. No `unsafe` and no KVM here: each device is a state
//! machine behind [`crate::bus::BusDevice`], testable on its own.

pub mod acpi_pm;
pub mod calendar;
pub mod data_port;
pub mod debug_exit;
pub mod fw_cfg;
pub mod i8042;
pub mod pci;
pub mod persist;
pub mod post_code;
pub mod rtc;
pub mod uart;
pub mod virtio;
