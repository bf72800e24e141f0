//! virtio-net's own saved state: the features the driver accepted (the offload checks
//! and the tap's offloads follow them; the transport core does not activate a restored
//! device again) and its counters. Waiting (a full tap, a starved receive queue) is not
//! saved: the restored machine's event loop looks at the tap and the queues afresh. The
//! limiters start full again, as after a boot.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{Net, NetBackend, NetCounters};
use crate::devices::persist::{check_bits, StateError};
use crate::devices::virtio::state::DeviceState;
use crate::devices::virtio::VirtioDevice;
use crate::sync::LockExt;

/// What a [`Net`] saves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNet {
    /// The features the driver accepted (0 before it did).
    pub acked: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub rx_dropped: u64,
}

impl NetCounters {
    fn save_into(&self, saved: &mut SavedNet) {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        saved.rx_frames = load(&self.rx_frames);
        saved.rx_bytes = load(&self.rx_bytes);
        saved.tx_frames = load(&self.tx_frames);
        saved.tx_bytes = load(&self.tx_bytes);
        saved.tx_dropped = load(&self.tx_dropped);
        saved.rx_dropped = load(&self.rx_dropped);
    }

    fn restore_from(&self, saved: &SavedNet) {
        self.rx_frames.store(saved.rx_frames, Ordering::Relaxed);
        self.rx_bytes.store(saved.rx_bytes, Ordering::Relaxed);
        self.tx_frames.store(saved.tx_frames, Ordering::Relaxed);
        self.tx_bytes.store(saved.tx_bytes, Ordering::Relaxed);
        self.tx_dropped.store(saved.tx_dropped, Ordering::Relaxed);
        self.rx_dropped.store(saved.rx_dropped, Ordering::Relaxed);
    }
}

impl<B: NetBackend> DeviceState for Net<B> {
    type Saved = SavedNet;

    fn save_device(&self) -> SavedNet {
        let mut saved = SavedNet {
            acked: self.acked.load(Ordering::Relaxed),
            ..SavedNet::default()
        };
        self.counters.save_into(&mut saved);
        saved
    }

    fn check_device(&self, kind: &'static str, saved: &SavedNet) -> Result<(), StateError> {
        check_bits(
            kind,
            "virtio-net's accepted features",
            saved.acked,
            self.features(),
        )
    }

    fn restore_device(&self, saved: &SavedNet) {
        self.acked.store(saved.acked, Ordering::Relaxed);
        self.tx_blocked.store(false, Ordering::Relaxed);
        self.rx_starved.store(false, Ordering::Relaxed);
        self.counters.restore_from(saved);
        if saved.acked == 0 {
            return;
        }
        if let Err(error) = self.backend.set_features(saved.acked) {
            self.warnings
                .locked()
                .warn(|| format!("virtio-net: the backend refused the restored offloads: {error}"));
        }
    }
}
