//! Dispatch alone, from a recorded trace: the cost of hushvm's exit path with no KVM, no
//! guest and no host noise but the CPU's. `cargo bench`.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn trace(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/traces")
        .join(format!("{name}.trace"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay-dispatch");
    for name in ["rtc", "tick", "doorbell"] {
        let bytes = trace(name);
        let exits = hushvm::replay::replay(&bytes).expect("trace replays").exits;
        let mut run = hushvm::replay::dispatch_only(&bytes).expect("trace decodes");
        group.throughput(Throughput::Elements(exits));
        group.bench_function(name, |b| b.iter(&mut run));
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
