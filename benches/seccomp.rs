//! What the vCPU thread's seccomp filter adds to each `ioctl(KVM_RUN)`, the one syscall a
//! vCPU makes per exit: the call timed in threads without a filter, with hushvm's vCPU
//! filter (as `--seccomp kill` installs it), and with a filter that allows every call
//! whatever its arguments (so the kernel's per-syscall cache skips the program: what is
//! left is the seccomp entry path any filter costs), interleaved, medians.
//! `cargo bench --bench seccomp`. The call is made on fd -1, so it does no KVM work: the
//! kernel runs the filter, allows the call, and fails it with EBADF.

use std::thread;
use std::time::Instant;

use hushvm::seccomp::{Filters, SeccompAction, ThreadKind};
use seccompiler::{BpfProgram, SeccompFilter, TargetArch};

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

/// What a timing thread installs first.
#[derive(Clone)]
enum Filter {
    None,
    Vcpu(Filters),
    AllowAll(BpfProgram),
}

/// Times the call in a new thread, with `filter` installed first.
fn in_thread(filter: Filter) -> f64 {
    thread::spawn(move || {
        match filter {
            Filter::None => {}
            Filter::Vcpu(filters) => filters
                .install(ThreadKind::Vcpu, "bench")
                .expect("the vCPU filter installs"),
            Filter::AllowAll(program) => {
                seccompiler::apply_filter(&program).expect("the allow-all filter installs")
            }
        }
        time_kvm_run()
    })
    .join()
    .expect("the timing thread ends")
}

/// A filter that allows every syscall but `getppid` (seccompiler wants a rule), whatever
/// its arguments: the kernel caches that verdict for `ioctl` and never runs the program.
fn allow_all() -> BpfProgram {
    let rules = [(libc::SYS_getppid, Vec::new())].into_iter().collect();
    let filter = SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Trap,
        TargetArch::x86_64,
    )
    .expect("a one-rule filter");
    BpfProgram::try_from(filter).expect("a one-rule filter compiles")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let vcpu = Filter::Vcpu(Filters::new(SeccompAction::Kill).expect("the filters compile"));
    let kinds = [Filter::None, Filter::AllowAll(allow_all()), vcpu];
    let mut times = vec![Vec::new(); kinds.len()];
    for _ in 0..ROUNDS {
        for (kind, times) in kinds.iter().zip(times.iter_mut()) {
            times.push(in_thread(kind.clone()));
        }
    }
    let [bare, entry, filtered] = [0, 1, 2].map(|i| median(times[i].clone()));
    println!("ioctl(KVM_RUN), {ROUNDS} rounds of {CALLS} calls, medians:");
    println!("  no filter            {bare:7.1} ns");
    println!("  allow-all filter     {entry:7.1} ns (the seccomp entry path alone)");
    println!("  hushvm vCPU filter   {filtered:7.1} ns");
    println!("  the filter adds      {:7.1} ns per exit", filtered - bare);
}
