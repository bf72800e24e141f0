//! What the vCPU thread's seccomp filter adds to each `ioctl(KVM_RUN)`, the one syscall a
//! vCPU makes per exit: the call timed in threads without a filter and in threads with
//! hushvm's vCPU filter (as `--seccomp kill` installs it), interleaved, medians.
//! `cargo bench --bench seccomp`. The call is made on fd -1, so it does no KVM work: the
//! kernel runs the filter, allows the call, and fails it with EBADF.

use std::thread;
use std::time::Instant;

use hushvm::seccomp::{Filters, SeccompAction, ThreadKind};

/// `KVM_RUN`, `_IO(KVMIO, 0x80)`.
const KVM_RUN: libc::c_ulong = 0xae80;
const CALLS: u32 = 1_000_000;
const ROUNDS: usize = 9;

/// Nanoseconds per `ioctl(-1, KVM_RUN, 0)` on this thread.
fn time_kvm_run() -> f64 {
    let start = Instant::now();
    for _ in 0..CALLS {
        // SAFETY: an ioctl on fd -1 touches no memory of this process; it fails (EBADF).
        let result = unsafe { libc::ioctl(-1, KVM_RUN, 0) };
        std::hint::black_box(result);
    }
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

/// Times the call in a new thread, with the vCPU filter installed first if `filters`.
fn in_thread(filters: Option<Filters>) -> f64 {
    thread::spawn(move || {
        if let Some(filters) = filters {
            filters
                .install(ThreadKind::Vcpu, "bench")
                .expect("the vCPU filter installs");
        }
        time_kvm_run()
    })
    .join()
    .expect("the timing thread ends")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let filters = Filters::new(SeccompAction::Kill).expect("the filters compile");
    let (mut bare, mut filtered) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare.push(in_thread(None));
        filtered.push(in_thread(Some(filters.clone())));
    }
    let (bare, filtered) = (median(bare), median(filtered));
    println!("ioctl(KVM_RUN), {ROUNDS} rounds of {CALLS} calls, medians:");
    println!("  no filter          {bare:7.1} ns");
    println!("  hushvm vCPU filter {filtered:7.1} ns");
    println!("  the filter adds    {:7.1} ns per exit", filtered - bare);
}
