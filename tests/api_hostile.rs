//! Firecracker mode against hostile clients (a byte at a time, bodies over the limit,
//! garbage, a thousand connections), and every thread of a running microVM under a
//! seccomp filter.

mod api_common;
mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use api_common::{configure_rtc, read_response, request, rtc_fields, Firecracker};
use common::kvm_available;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn slow_oversized_garbage_and_many_clients_block_no_one() {
    let vm = Firecracker::start("hostile", &["--http-api-max-payload-size", "1024"]);
    // A client sending a byte every 100 ms holds only its own connection.
    let mut slow = UnixStream::connect(&vm.socket).unwrap();
    slow.write_all(b"GE").unwrap();
    let started = Instant::now();
    assert_eq!(vm.call("GET", "/", "").0, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    for byte in b"T / HTTP/1.1\r\n\r\n" {
        slow.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(vm.call("GET", "/version", "").0, 200);
    }
    // The request that came a byte at a time is answered as any other.
    let (status, body) = read_response(&mut slow);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Not started"), "{body}");
    // A body over the limit, and garbage, are refused; the server goes on.
    let big = format!(r#"{{"kernel_image_path":"{}"}}"#, "x".repeat(4096));
    let (status, _) = vm.call("PUT", "/boot-source", &big);
    assert!((400..500).contains(&status), "{status}");
    let mut garbage = UnixStream::connect(&vm.socket).unwrap();
    garbage
        .write_all(b"\x00\x01 not http at all\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut garbage).0 >= 400);
    // A thousand connections held open (each with half a request): the server keeps a
    // bounded number, closing the idlest to make room, so a new client is still served.
    let mut held: Vec<UnixStream> = Vec::new();
    for _ in 0..1000 {
        let mut stream = UnixStream::connect(&vm.socket).unwrap();
        let _ = stream.write_all(b"GET / HT");
        held.push(stream);
    }
    let started = Instant::now();
    assert_eq!(request(&vm.socket, "GET", "/", "").0, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(held);
    assert_eq!(request(&vm.socket, "GET", "/version", "").0, 200);
}

/// Each thread of `pid` and its seccomp mode (2: a filter), from /proc.
fn thread_filters(pid: u32) -> Vec<(String, u32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        threads.push((field("Name:"), field("Seccomp:").parse().unwrap_or(0)));
    }
    threads
}

#[test]
fn every_thread_of_a_running_microvm_is_filtered_and_hostile_clients_do_not_slow_the_guest() {
    if !kvm_available() {
        return;
    }
    let vm = Firecracker::start("threads", &[]);
    // Before the start the API and metrics threads are filtered; main still builds.
    std::thread::sleep(Duration::from_millis(100));
    let before = thread_filters(vm.child.id());
    assert!(
        before
            .iter()
            .any(|(name, mode)| name == "fc_api" && *mode == 2),
        "{before:?}"
    );
    configure_rtc(&vm, 60000);
    assert_eq!(
        vm.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#)
            .0,
        204
    );
    // Hostile clients while the guest runs: a thousand half-requests and garbage.
    let mut held: Vec<UnixStream> = Vec::new();
    for _ in 0..1000 {
        let mut stream = UnixStream::connect(&vm.socket).unwrap();
        let _ = stream.write_all(b"PUT /actions HTTP/1.1\r\nContent-Length: 99\r\n\r\n{");
        held.push(stream);
    }
    // main, fc_api, fc_metrics, the event loop and vcpu0 (main seals itself right after
    // it starts the machine's threads, so give it a moment).
    let started = Instant::now();
    let threads = loop {
        let threads = thread_filters(vm.child.id());
        let sealed = threads.len() >= 5 && threads.iter().all(|(_, mode)| *mode == 2);
        if sealed || started.elapsed() > Duration::from_secs(2) {
            break threads;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(threads.len() >= 5, "{threads:?}");
    assert!(threads.iter().all(|(_, mode)| *mode == 2), "{threads:?}");
    let (code, out, err) = vm.wait(LIMIT);
    drop(held);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(rtc_fields(&out), (60000, 0));
}
