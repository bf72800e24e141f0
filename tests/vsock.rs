//! virtio-vsock driven by the vsock test guest on both transports, with host programs
//! on the Unix sockets of Firecracker's hybrid design: host to guest (the guest echoes)
//! and guest to host (the host echoes), many connections at once, each side closing
//! first, a host side that never answers, a guest that ignores credit. Every byte is
//! checked end to end.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::{guest_config, kvm_available, run, serial_text};
use hushvm::bench::guest_fields;
use hushvm::config::{VirtioTransport, VsockConfig};
use hushvm::machine::RunReport;

const TRANSPORTS: [VirtioTransport; 2] = [VirtioTransport::Mmio, VirtioTransport::Pci];

fn uds(name: &str) -> PathBuf {
    let dir = common::scratch_dir();
    let path = dir.join(format!("vsock-{name}"));
    let _ = std::fs::remove_file(&path);
    path
}

/// Runs the vsock guest with `cmdline` and a vsock device at `uds` in a thread.
fn start(uds: &Path, transport: VirtioTransport, cmdline: &str) -> thread::JoinHandle<RunReport> {
    let transport_arg = match transport {
        VirtioTransport::Pci => " transport=pci",
        VirtioTransport::Mmio => "",
    };
    let mut config = guest_config("vsock", &format!("{cmdline}{transport_arg}"));
    config.devices.transport = transport;
    config.devices.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: uds.to_path_buf(),
        vsock_id: None,
        transport: None,
    });
    thread::spawn(move || run(&config))
}

/// Connects to the device's socket once the machine made it.
fn connect(uds: &Path) -> UnixStream {
    let start = Instant::now();
    loop {
        match UnixStream::connect(uds) {
            Ok(stream) => return stream,
            Err(e) if start.elapsed() > Duration::from_secs(30) => panic!("{uds:?}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// What the host sends on connection `n`.
fn host_bytes(n: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (j * 13 + n * 5 + (j >> 9)) as u8)
        .collect()
}

/// What the guest's client sends on its connection `c` (guests/vsock.c `pattern`).
fn guest_bytes(c: u32, len: u32) -> Vec<u8> {
    (0..len)
        .map(|j| (j.wrapping_mul(31) + c * 7 + (j >> 8)) as u8)
        .collect()
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).expect("the handshake's answer") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// A host program: CONNECT to guest `port`, send `data` and shut down sending (the host
/// closes first), read the echo to the end.
fn echo_through_guest(uds: &Path, port: u32, data: Vec<u8>) -> Vec<u8> {
    let mut stream = connect(uds);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    let ok = read_line(&mut stream);
    assert!(ok.starts_with("OK "), "answer {ok:?}");
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).unwrap();
    sender.join().unwrap();
    echoed
}

fn guest_result(report: &RunReport) -> std::collections::BTreeMap<String, u64> {
    let fields = guest_fields(&report.serial, "vsock:");
    assert!(
        fields.contains_key("errors"),
        "no result: {}",
        serial_text(report)
    );
    fields
}

fn counter(report: &RunReport, name: &str) -> u64 {
    let device = report.devices.iter().find(|d| d.id == "vsock0").unwrap();
    device
        .counters
        .iter()
        .find(|(key, _)| *key == name)
        .map_or(0, |(_, value)| *value)
}

#[test]
fn host_connections_are_echoed_by_the_guest_many_at_once() {
    if !kvm_available() {
        return;
    }
    for transport in TRANSPORTS {
        let path = uds(&format!("echo-{transport:?}"));
        let machine = start(&path, transport, "mode=echo port=52 conns=6");
        // A host program that connects and never says CONNECT blocks nobody.
        let silent = connect(&path);
        let hosts: Vec<_> = (0..6)
            .map(|n| {
                let path = path.clone();
                thread::spawn(move || {
                    let data = host_bytes(n, 40_000 + n * 1000);
                    assert_eq!(
                        echo_through_guest(&path, 52, data.clone()),
                        data,
                        "conn {n}"
                    );
                })
            })
            .collect();
        let hosts: Vec<_> = hosts.into_iter().map(|host| host.join()).collect();
        let report = machine.join().unwrap();
        drop(silent);
        if hosts.iter().any(Result::is_err) {
            let counters = &report
                .devices
                .iter()
                .find(|d| d.id == "vsock0")
                .unwrap()
                .counters;
            panic!("{transport:?}: {counters:?}\n{}", serial_text(&report));
        }
        let fields = guest_result(&report);
        assert_eq!(fields["errors"], 0, "{transport:?}");
        assert_eq!(fields["conns"], 6);
        let sent: u64 = (0..6).map(|n| 40_000 + n * 1000).sum();
        assert_eq!(fields["bytes"], sent);
        assert_eq!(counter(&report, "packets_dropped"), 0);
        assert_eq!(counter(&report, "credit_violations"), 0);
    }
}

/// A host listener for guest connections to `port`: each connection's bytes echoed
/// back until the guest closes (the guest closes first).
fn host_echo_server(path: &Path, port: u32, conns: usize) -> thread::JoinHandle<Vec<Vec<u8>>> {
    let mut listener_path = path.as_os_str().to_owned();
    listener_path.push(format!("_{port}"));
    let _ = std::fs::remove_file(&listener_path);
    let listener = UnixListener::bind(&listener_path).unwrap();
    thread::spawn(move || {
        let servers: Vec<_> = (0..conns)
            .map(|_| {
                let (mut stream, _) = listener.accept().unwrap();
                thread::spawn(move || {
                    let mut all = Vec::new();
                    let mut buffer = [0u8; 8192];
                    loop {
                        match stream.read(&mut buffer) {
                            Ok(0) | Err(_) => return all,
                            Ok(n) => {
                                all.extend_from_slice(&buffer[..n]);
                                if stream.write_all(&buffer[..n]).is_err() {
                                    return all;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        servers.into_iter().map(|s| s.join().unwrap()).collect()
    })
}

#[test]
fn guest_connections_reach_a_host_listener_many_at_once() {
    if !kvm_available() {
        return;
    }
    for transport in TRANSPORTS {
        let path = uds(&format!("client-{transport:?}"));
        let server = host_echo_server(&path, 7000, 8);
        let machine = start(
            &path,
            transport,
            "mode=client port=7000 conns=8 bytes=30000",
        );
        let report = machine.join().unwrap();
        let fields = guest_result(&report);
        assert_eq!(
            fields["errors"],
            0,
            "{transport:?}: {}",
            serial_text(&report)
        );
        assert_eq!((fields["conns"], fields["refused"]), (8, 0));
        assert_eq!(fields["bytes"], 8 * 30000);
        let mut got = server.join().unwrap();
        got.sort_by_key(|bytes| bytes.first().copied());
        let mut wanted: Vec<Vec<u8>> = (0..8).map(|c| guest_bytes(c, 30000)).collect();
        wanted.sort_by_key(|bytes| bytes.first().copied());
        assert_eq!(got, wanted, "what the host received");
    }
}

#[test]
fn a_port_nobody_listens_on_is_refused() {
    if !kvm_available() {
        return;
    }
    let path = uds("refused");
    let machine = start(&path, VirtioTransport::Pci, "mode=client port=7001 conns=2");
    let report = machine.join().unwrap();
    let fields = guest_result(&report);
    assert_eq!((fields["refused"], fields["errors"]), (2, 0));
    assert_eq!(counter(&report, "connections_refused"), 2);
}

#[test]
fn a_guest_that_ignores_credit_is_reset() {
    if !kvm_available() {
        return;
    }
    let path = uds("greedy");
    let mut listener_path = path.as_os_str().to_owned();
    listener_path.push("_7002");
    let _ = std::fs::remove_file(&listener_path);
    let listener = UnixListener::bind(&listener_path).unwrap();
    // The host accepts and never reads.
    let holder = thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let machine = start(
        &path,
        VirtioTransport::Mmio,
        "mode=greedy port=7002 bytes=8000000",
    );
    let report = machine.join().unwrap();
    let fields = guest_result(&report);
    assert_eq!(fields["resets"], 1, "{}", serial_text(&report));
    assert_eq!(counter(&report, "credit_violations"), 1);
    drop(holder.join().unwrap());
}

#[test]
fn the_bench_runs_with_few_messages() {
    if !kvm_available() {
        return;
    }
    let report = hushvm::bench::vsock::run(
        8,
        1,
        VirtioTransport::Mmio,
        hushvm::seccomp::SeccompAction::Kill,
    )
    .unwrap();
    assert_eq!(report.variants.len(), 2);
    for variant in &report.variants {
        assert!(variant.passed, "{}", report.render());
        assert!(variant.bytes_per_second > 0.0, "{}", report.render());
    }
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["workload"], "vsock");
    assert_eq!(json["variants"][0]["name"], "guest-to-host");
}

#[test]
fn bad_vsock_options_are_clear_errors() {
    let probe = common::guest_file("probe");
    let probe = probe.to_str().unwrap();
    let run = |vsock: &str| common::hushvm(&["run", "--multiboot", probe, "--vsock", vsock]);
    common::assert_clear_error(&run("cid=2,uds=/tmp/x"), "CID 2");
    common::assert_clear_error(&run("uds=/tmp/x"), "cid= missing");
    common::assert_clear_error(&run("cid=3,uds=/tmp/x,port=9"), "invalid --vsock option");
    common::assert_clear_error(
        &run("cid=3,uds=/no/such/dir/v.sock"),
        "directory does not exist",
    );
    // An existing path is refused, not removed (it may be another VM's socket).
    let taken = uds("taken");
    std::fs::write(&taken, b"").unwrap();
    let output = run(&format!("cid=3,uds={}", taken.display()));
    common::assert_clear_error(&output, "the path exists");
    assert!(taken.exists());
    // A vsock device cannot be recorded: host programs' bytes are not in a trace.
    let trace = uds("trace");
    let fresh = uds("fresh");
    let output = common::hushvm(&[
        "run",
        "--multiboot",
        probe,
        "--vsock",
        &format!("cid=3,uds={}", fresh.display()),
        "--record",
        trace.to_str().unwrap(),
    ]);
    common::assert_clear_error(&output, "vsock");
}
