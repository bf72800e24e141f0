//! Networking's host side: the tap backend (tap.rs) and the `--net` options
//! (config.rs). The virtio-net device itself belongs in `devices/virtio/` and reaches
//! the tap through the machine, as the other devices reach their backends.

pub mod backend;
pub mod config;
pub mod tap;
