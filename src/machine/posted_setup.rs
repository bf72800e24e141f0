//! Posted writes for a live run: the latch zones registered with KVM for the whole run,
//! the bounded zones handed to a [`BoundedDrain`] that registers them only while the
//! guest writes them (`coalesced::bounded`), and the drain's timer the event loop
//! waits on.

use std::sync::Arc;

use super::{Coalescing, MachineConfig, MachineError};
use crate::bus::{AddressSpace, Flush, IoBuses, PostedZone};
use crate::event_loop::DrainTimerFd;
use crate::kvm::{Vcpu, Vm};
use crate::posted::{BoundedDrain, PostedWrites};

/// What posting needs at run time.
pub(super) struct Posted {
    pub writes: PostedWrites,
    pub coalescing: Coalescing,
    /// The bounded drain's timer, for the event loop (`None`: no bounded zone is used).
    pub drain_timer: Option<Arc<DrainTimerFd>>,
}

impl Posted {
    fn off(coalescing: Coalescing) -> Self {
        Self {
            writes: PostedWrites::disabled(),
            coalescing,
            drain_timer: None,
        }
    }
}

/// Posted writes as `config` asks: none with `--no-coalesce`; the latch zones; and the
/// bounded zones unless `--posted-drain-us 0` (then nothing bounds their delay, so they
/// are never posted).
pub(super) fn posted_writes(
    config: &MachineConfig,
    vm: &Vm,
    boot_vcpu: &Vcpu,
    buses: &IoBuses,
) -> Result<Posted, MachineError> {
    if !config.cures.coalesce {
        return Ok(Posted::off(Coalescing::Off));
    }
    let posted = enable(vm, boot_vcpu, buses, config.cures.posted_drain)?;
    if posted.coalescing == Coalescing::Unsupported {
        eprintln!("hushvm: warning: KVM cannot post port writes (no KVM_CAP_COALESCED_PIO); running without coalescing");
    }
    Ok(posted)
}

/// Registers every latch zone with KVM and prepares the bounded ones (registered on
/// their first exited write), or says why posting is off.
fn enable(
    vm: &Vm,
    vcpu: &Vcpu,
    buses: &IoBuses,
    drain: Option<std::time::Duration>,
) -> Result<Posted, MachineError> {
    let used: Vec<PostedZone> = buses
        .posted_zones()
        .into_iter()
        .filter(|zone| drain.is_some() || zone.flush == Flush::BeforeNextAccess)
        .collect();
    if used
        .iter()
        .any(|zone| !vm.supports_posted_writes(zone.space))
    {
        return Ok(Posted::off(Coalescing::Unsupported));
    }
    let Some(ring) = vcpu.map_posted_write_ring()? else {
        return Ok(Posted::off(Coalescing::Unsupported));
    };
    // Every zone whose writes may be posted, registered now or on first use.
    let postable = used
        .iter()
        .filter(|zone| zone.space == AddressSpace::Pio)
        .map(|zone| (zone.addr, zone.size))
        .collect();
    let (bounded, latches): (Vec<PostedZone>, Vec<PostedZone>) = used
        .into_iter()
        .partition(|zone| zone.flush == Flush::Bounded);
    for zone in &latches {
        vm.register_posted_zone(zone)?;
    }
    let mut writes = PostedWrites::new(Arc::new(ring));
    let mut drain_timer = None;
    if let (Some(period), false) = (drain, bounded.is_empty()) {
        let timer = Arc::new(DrainTimerFd::new().map_err(MachineError::EventLoop)?);
        let switch = Box::new(vm.coalesced_zones());
        writes = writes.with_bounded(BoundedDrain::new(bounded, period, switch, timer.clone()));
        drain_timer = Some(timer);
    }
    Ok(Posted {
        writes,
        coalescing: Coalescing::On(postable),
        drain_timer,
    })
}
