//! Handling one exit: apply posted writes, dispatch the decoded access on a bus, and say
//! whether the VM goes on. No KVM here, so it is tested with hand-built exits.

use crate::access::DeviceAccess;
use crate::bus::{Access, AddressSpace, Dispatch, StopRequest};
use crate::exit::VmExit;
use crate::profile::ExitProfile;
use crate::ratelimit::RateLimiter;
use crate::trace::{ExitDirection, Record};

use super::{GuestFault, VmStop};

/// What the run loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    /// Enter the guest again.
    Continue,
    /// Check whether the VM was asked to stop, then enter again.
    Interrupted,
    /// The VM is over.
    Stop(VmStop),
}

/// What the exit path needs from the machine. Everything here is shared read-only
/// between vCPUs, except the per-vCPU profile and warning limiter.
#[derive(Debug)]
pub struct ExitContext<'a> {
    /// The buses, the coalesced ring and its ordering lock, the trace if one is made.
    pub access: &'a DeviceAccess,
    /// This vCPU's profile.
    pub profile: &'a mut ExitProfile,
    /// This vCPU's limiter for guest-triggered warnings.
    pub warnings: &'a mut RateLimiter,
    /// This vCPU's index, for the trace.
    pub vcpu: u8,
}

impl ExitContext<'_> {
    /// Handles `exit`. Posted writes are applied before anything is dispatched: the
    /// access that caused this exit came after every write already in the ring.
    pub fn handle(&mut self, exit: VmExit<'_>) -> ExitOutcome {
        let access = self.access;
        let written = written_address(&exit);
        let outcome = access.operation(|stop| match stop {
            // A posted write stopped the VM (a reset to 0xcf9): the exit is moot.
            Some(request) => ExitOutcome::Stop(VmStop::Guest(request)),
            None => self.handle_exit(exit),
        });
        // After the write was served, and outside the traced operation (so no lock is
        // held): a write to a bounded zone that exited activates the zone. One atomic
        // load when it needs nothing.
        if let Some((space, addr)) = written {
            if let Err(error) = access.posted.exited_write(space, addr) {
                self.warnings
                    .warn(|| format!("{}; its writes keep exiting", crate::errors::chain(&error)));
            }
        }
        outcome
    }

    fn handle_exit(&mut self, exit: VmExit<'_>) -> ExitOutcome {
        match exit {
            VmExit::Io {
                port,
                size,
                mut access,
            } => {
                let (space, addr) = (AddressSpace::Pio, u64::from(port));
                let outcome =
                    self.dispatch_elements(space, addr, usize::from(size), access.reborrow());
                self.record(space, addr, size, &access);
                outcome
            }
            VmExit::Mmio { addr, mut access } => {
                let len = access.len().max(1);
                let outcome =
                    self.dispatch_elements(AddressSpace::Mmio, addr, len, access.reborrow());
                self.record(AddressSpace::Mmio, addr, len as u8, &access);
                outcome
            }
            VmExit::Interrupted => ExitOutcome::Interrupted,
            // With the in-kernel irqchip KVM handles HLT itself; one that reaches us has
            // nothing to wake it.
            VmExit::Halt => ExitOutcome::Stop(VmStop::Fault(GuestFault::Halted)),
            VmExit::Shutdown => ExitOutcome::Stop(VmStop::Fault(GuestFault::TripleFault)),
            VmExit::InternalError { suberror, .. } => {
                ExitOutcome::Stop(VmStop::Fault(GuestFault::InternalError { suberror }))
            }
            VmExit::FailEntry { reason } => {
                ExitOutcome::Stop(VmStop::Fault(GuestFault::FailEntry { reason }))
            }
            VmExit::SystemEvent { kind } => {
                ExitOutcome::Stop(VmStop::Fault(GuestFault::SystemEvent { kind }))
            }
            VmExit::Unexpected { reason } => {
                ExitOutcome::Stop(VmStop::Fault(GuestFault::UnexpectedExit { reason }))
            }
        }
    }

    /// Records a handled exit, with what the guest wrote or what it was answered.
    fn record(&self, space: AddressSpace, addr: u64, size: u8, access: &Access<'_>) {
        self.access.record(|| Record::Exit {
            vcpu: self.vcpu,
            direction: ExitDirection::of(space, access.is_write()),
            addr,
            size,
            data: access.bytes().to_vec(),
        });
    }

    /// Dispatches `access` as consecutive elements of `size` bytes at the same address,
    /// in order: one element for ordinary I/O, `count` for string I/O.
    fn dispatch_elements(
        &mut self,
        space: AddressSpace,
        addr: u64,
        size: usize,
        access: Access<'_>,
    ) -> ExitOutcome {
        // One element (every exit but string I/O): no splitting iterator.
        if access.len() == size {
            return self.dispatch_element(space, addr, size, access);
        }
        for element in access.into_elements(size) {
            let outcome = self.dispatch_element(space, addr, size, element);
            if outcome != ExitOutcome::Continue {
                return outcome;
            }
        }
        ExitOutcome::Continue
    }

    #[inline]
    fn dispatch_element(
        &mut self,
        space: AddressSpace,
        addr: u64,
        size: usize,
        element: Access<'_>,
    ) -> ExitOutcome {
        let is_write = element.is_write();
        let result = self.access.buses.dispatch(space, addr, element);
        match self.account(space, addr, is_write, size, result) {
            Some(request) => ExitOutcome::Stop(VmStop::Guest(request)),
            None => ExitOutcome::Continue,
        }
    }

    fn account(
        &mut self,
        space: AddressSpace,
        addr: u64,
        is_write: bool,
        size: usize,
        result: Dispatch,
    ) -> Option<StopRequest> {
        match result {
            Dispatch::Handled(stop) => stop,
            Dispatch::Unclaimed => {
                self.unclaimed(space, addr, is_write, size);
                None
            }
        }
    }

    /// Counts and warns about an access no device claimed: off the hot path's pages.
    #[cold]
    #[inline(never)]
    fn unclaimed(&mut self, space: AddressSpace, addr: u64, is_write: bool, size: usize) {
        self.profile.unclaimed += 1;
        self.warnings.warn(|| {
            let direction = if is_write { "write to" } else { "read of" };
            format!("guest {direction} unclaimed {space:?} address {addr:#x} ({size} bytes)")
        });
    }
}

/// The space and address an exit writes, if it is a write.
fn written_address(exit: &VmExit<'_>) -> Option<(AddressSpace, u64)> {
    match exit {
        VmExit::Io {
            port,
            access: Access::Write(_),
            ..
        } => Some((AddressSpace::Pio, u64::from(*port))),
        VmExit::Mmio {
            addr,
            access: Access::Write(_),
        } => Some((AddressSpace::Mmio, *addr)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{BusDevice, IoBuses, PostedRegister};
    use crate::devices::debug_exit::DebugExit;
    use crate::posted::{MemoryRing, PostedWrite, PostedWrites};
    use std::sync::{Arc, Mutex};

    /// A data port that records what it got and answers reads from a counter.
    #[derive(Default)]
    struct DataPort {
        written: Vec<u8>,
        next: u8,
        latched: u8,
    }

    impl BusDevice for DataPort {
        fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
            match (offset, access) {
                (0, Access::Write(data)) => self.latched = data[0],
                (_, Access::Write(data)) => self.written.extend_from_slice(data),
                (_, Access::Read(data)) => {
                    for byte in data {
                        *byte = self.next.wrapping_add(self.latched);
                        self.next += 1;
                    }
                }
            }
            None
        }

        fn posted_registers(&self) -> &[PostedRegister] {
            const POSTED: [PostedRegister; 1] = [PostedRegister::latch(0, 1)];
            &POSTED
        }
    }

    struct Machine {
        access: DeviceAccess,
        port: Arc<Mutex<DataPort>>,
        ring: Arc<MemoryRing>,
        profile: ExitProfile,
        warnings: RateLimiter,
    }

    impl Machine {
        fn new() -> Self {
            let mut buses = IoBuses::default();
            let port = Arc::new(Mutex::new(DataPort::default()));
            buses.pio.insert("data", 0x1f0, 8, port.clone()).unwrap();
            buses
                .pio
                .insert("exit", 0xf4, 4, Arc::new(Mutex::new(DebugExit)))
                .unwrap();
            let ring = Arc::new(MemoryRing::default());
            let posted = PostedWrites::new(ring.clone());
            Self {
                access: DeviceAccess {
                    buses: Arc::new(buses),
                    posted: Arc::new(posted),
                    recorder: None,
                    stops: None,
                },
                port,
                ring,
                profile: ExitProfile::default(),
                warnings: RateLimiter::default(),
            }
        }

        fn handle(&mut self, exit: VmExit<'_>) -> ExitOutcome {
            ExitContext {
                access: &self.access,
                profile: &mut self.profile,
                warnings: &mut self.warnings,
                vcpu: 0,
            }
            .handle(exit)
        }
    }

    #[test]
    fn string_output_is_dispatched_element_by_element_in_one_exit() {
        let mut machine = Machine::new();
        let data = [1, 0, 2, 0, 3, 0];
        let exit = VmExit::Io {
            port: 0x1f1,
            size: 2,
            access: Access::Write(&data),
        };
        assert_eq!(machine.handle(exit), ExitOutcome::Continue);
        assert_eq!(machine.port.lock().unwrap().written, data);
    }

    #[test]
    fn string_input_fills_every_element() {
        let mut machine = Machine::new();
        let mut data = [0u8; 4];
        let exit = VmExit::Io {
            port: 0x1f1,
            size: 1,
            access: Access::Read(&mut data),
        };
        assert_eq!(machine.handle(exit), ExitOutcome::Continue);
        assert_eq!(data, [0, 1, 2, 3]);
    }

    #[test]
    fn posted_writes_are_applied_before_the_exit_is_dispatched() {
        let mut machine = Machine::new();
        let mut write = PostedWrite {
            space: AddressSpace::Pio,
            addr: 0x1f0,
            len: 1,
            data: [0; 8],
        };
        write.data[0] = 0x40;
        machine.ring.push(write);
        let mut data = [0u8; 1];
        let exit = VmExit::Io {
            port: 0x1f1,
            size: 1,
            access: Access::Read(&mut data),
        };
        machine.handle(exit);
        assert_eq!(data, [0x40], "the read saw the posted write");
        assert_eq!(machine.access.posted.applied(), 1);
    }

    #[test]
    fn debug_exit_stops_the_vm_with_its_value() {
        let mut machine = Machine::new();
        let exit = VmExit::Io {
            port: 0xf4,
            size: 1,
            access: Access::Write(&[0x10]),
        };
        assert_eq!(
            machine.handle(exit),
            ExitOutcome::Stop(VmStop::Guest(StopRequest::Exit(0x10)))
        );
        assert_eq!(VmStop::Guest(StopRequest::Exit(0x10)).exit_status(), 0x21);
    }

    #[test]
    fn unclaimed_accesses_read_all_ones_are_counted_and_do_not_stop() {
        let mut machine = Machine::new();
        let mut data = [0u8; 4];
        let exit = VmExit::Mmio {
            addr: 0xd000_0000,
            access: Access::Read(&mut data),
        };
        assert_eq!(machine.handle(exit), ExitOutcome::Continue);
        assert_eq!(data, [0xff; 4]);
        let exit = VmExit::Io {
            port: 0x1234,
            size: 1,
            access: Access::Write(&[1, 2]),
        };
        assert_eq!(machine.handle(exit), ExitOutcome::Continue);
        assert_eq!(
            machine.profile.unclaimed, 3,
            "one MMIO read and two string elements"
        );
    }

    #[test]
    fn fatal_exits_stop_the_vm() {
        let mut machine = Machine::new();
        assert_eq!(
            machine.handle(VmExit::Shutdown),
            ExitOutcome::Stop(VmStop::Fault(GuestFault::TripleFault))
        );
        assert_eq!(
            machine.handle(VmExit::InternalError {
                suberror: 1,
                instruction: None
            }),
            ExitOutcome::Stop(VmStop::Fault(GuestFault::InternalError { suberror: 1 }))
        );
        assert_eq!(
            machine.handle(VmExit::Interrupted),
            ExitOutcome::Interrupted
        );
    }
}
