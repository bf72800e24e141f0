use std::sync::mpsc;
use std::thread;

use super::*;
use crate::bus::{Access, AddressSpace, BusDevice, IoBuses, StopRequest};
use crate::exit::VmExit;
use crate::posted::{MemoryRing, PostedWrite, PostedWriteRing, PostedWrites};
use crate::profile::ExitProfile;
use crate::run_loop::ExitContext;
use crate::services::LevelTriggered;
use crate::trace::{MachineDescription, Recorder};

/// A device that, when a write reaches it, tells `entered` and then takes its time:
/// whoever applied the write holds the drain lock that long.
struct SlowDevice {
    entered: Mutex<mpsc::Sender<()>>,
}

impl BusDevice for SlowDevice {
    fn access(&mut self, _offset: u64, access: Access<'_>) -> Option<StopRequest> {
        if access.is_write() {
            let _ = self.entered.locked().send(());
            thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

#[derive(Default)]
struct Resampled(u32);

impl LevelTriggered for Resampled {
    fn resample(&mut self) {
        self.0 += 1;
    }
}

fn recording_access(name: &str, entered: mpsc::Sender<()>) -> (DeviceAccess, Arc<MemoryRing>) {
    let mut buses = IoBuses::default();
    let slow = SlowDevice {
        entered: Mutex::new(entered),
    };
    buses
        .pio
        .insert("slow", 0x80, 1, Arc::new(Mutex::new(slow)))
        .unwrap();
    let ring = Arc::new(MemoryRing::default());
    let path = std::env::temp_dir().join(format!("hushvm-{name}-{}.trace", std::process::id()));
    let machine = MachineDescription {
        memory: 1 << 20,
        cpus: 1,
        rng: false,
        console: false,
        pci: true,
        event_idx: false,
        disk_bytes: 0,
        clock_start: 0,
        virtio: Vec::new(),
    };
    let access = DeviceAccess {
        buses: Arc::new(buses),
        posted: Arc::new(PostedWrites::new(ring.clone())),
        recorder: Some(Recorder::create(&path, &machine).unwrap()),
        stops: None,
    };
    let _ = std::fs::remove_file(path);
    (access, ring)
}

/// Issue 17 item 1. With `--record`, the event loop's INTx resample drained the ring
/// outside a traced operation: it held the drain lock while recording the applied write
/// took the recorder's lock, and a vCPU's exit takes the recorder's lock first, the
/// drain lock inside. The slow device holds the event loop in the drain long enough for
/// the vCPU to take the recorder's lock: before the fix both waited forever.
#[test]
fn an_intx_resample_and_an_exit_do_not_deadlock_while_recording() {
    let (entered_tx, entered) = mpsc::channel();
    let (access, ring) = recording_access("resample", entered_tx);
    ring.push(PostedWrite {
        space: AddressSpace::Pio,
        addr: 0x80,
        len: 1,
        data: [1, 0, 0, 0, 0, 0, 0, 0],
    });
    let device = Arc::new(Mutex::new(Resampled::default()));
    let resample = IntxResample::new(
        EventFd::new(EFD_NONBLOCK).unwrap(),
        device.clone(),
        access.clone(),
    );
    let (done_tx, done) = mpsc::channel();
    let event_loop_done = done_tx.clone();
    thread::spawn(move || {
        resample.serve();
        let _ = event_loop_done.send("event loop");
    });
    entered.recv_timeout(Duration::from_secs(5)).unwrap();
    thread::spawn(move || {
        let (mut profile, mut warnings) = (ExitProfile::default(), RateLimiter::default());
        let mut data = [0u8];
        ExitContext {
            access: &access,
            profile: &mut profile,
            warnings: &mut warnings,
            vcpu: 0,
        }
        .handle(VmExit::Io {
            port: 0x81,
            size: 1,
            access: Access::Read(&mut data),
        });
        let _ = done_tx.send("vcpu");
    });
    for _ in 0..2 {
        done.recv_timeout(Duration::from_secs(5))
            .expect("the event loop and the vCPU deadlocked on the drain and recorder locks");
    }
    assert_eq!(device.locked().0, 1, "the device was resampled");
    assert!(ring.is_empty());
}
