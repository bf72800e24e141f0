//! The tap as a virtio-net backend.

use std::io;

use vm_memory::VolatileSlice;

use super::tap::{offload_flags, Tap};
use crate::devices::virtio::net::NetBackend;

impl NetBackend for Tap {
    fn read_frame(&self, buffers: &[VolatileSlice<'_, ()>]) -> io::Result<usize> {
        self.readv(buffers)
    }

    fn write_frame(&self, buffers: &[VolatileSlice<'_, ()>]) -> io::Result<usize> {
        self.writev(buffers)
    }

    fn set_features(&self, features: u64) -> io::Result<()> {
        self.set_offload(offload_flags(features))
            .map_err(io::Error::other)
    }
}
