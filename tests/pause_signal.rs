//! A stop signal ends a paused VM: the paused event loop still serves the stop signals.
//! A test binary of its own, with one test: the signal handlers are process-wide, and the
//! signal would stop whichever machine of the process read it first.

mod common;

use common::{guest_config, kvm_available};
use hushvm::machine::{self, VmControl};
use hushvm::run_loop::VmStop;

#[test]
fn sigterm_stops_a_paused_vm_as_a_power_off_does() {
    if !kvm_available() {
        return;
    }
    machine::install_signal_handlers().expect("handlers");
    let control = VmControl::new();
    let config = guest_config("rtc", "iterations=100000000");
    let machine = {
        let control = control.clone();
        std::thread::spawn(move || machine::run_controlled(&config, &control))
    };
    control.pause().expect("pause");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let report = machine.join().unwrap().expect("the machine ran");
    assert_eq!(report.stop, VmStop::Signal(libc::SIGTERM));
    assert_eq!(report.stop.exit_status(), 143);
}
