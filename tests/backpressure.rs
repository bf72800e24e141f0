//! Back-pressure from COM1's destination (issue 17): a destination that stops reading
//! stalls the guest's output as a slow line would (the bytes wait in the UART's FIFO,
//! THRE stays clear), while the VM itself goes on and can be stopped; once reading
//! starts, every byte arrives, in order. Only a reader that is gone drops bytes, counted.

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kvm_available;

/// The console guest's payload: byte i is '\n' every 64th, else 'A' + i % 26.
fn expected(bytes: u32) -> Vec<u8> {
    (0..bytes)
        .map(|i| match i % 64 {
            63 => b'\n',
            _ => b'A' + (i % 26) as u8,
        })
        .collect()
}

/// The console guest printing `bytes` through COM1 to a pipe of one page that the test
/// does not read yet.
fn printing(bytes: u32) -> Child {
    printing_for(bytes, "120")
}

/// The same, with `--timeout timeout`.
fn printing_for(bytes: u32, timeout: &str) -> Child {
    let guest = common::guest_file("console");
    let child = Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args(["run", "--kernel", guest.to_str().unwrap()])
        .args(["--cmdline", &format!("bytes={bytes} pattern=fifo")])
        .args(["--serial", "stdio", "--timeout", timeout])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hushvm starts");
    let pipe = child.stdout.as_ref().unwrap().as_raw_fd();
    // SAFETY: fcntl on our end of the child's stdout pipe; F_SETPIPE_SZ reads no memory.
    let size = unsafe { libc::fcntl(pipe, libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096, "the pipe's size: {size}");
    child
}

/// Waits up to `limit` for the child to end.
fn ends_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    stderr
}

#[test]
fn a_destination_nobody_reads_stalls_the_output_and_then_gets_every_byte() {
    if !kvm_available() {
        return;
    }
    let bytes = 20_000;
    let mut child = printing(bytes);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the guest waits for THRE while the pipe is full"
    );
    let mut output = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut output)
        .unwrap();
    let status = ends_within(&mut child, Duration::from_secs(60)).expect("the guest finishes");
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(1), "the guest's exit(0): {stderr}");
    let begin = b"console-begin\n";
    let start = output
        .windows(begin.len())
        .position(|w| w == begin)
        .expect("the begin marker")
        + begin.len();
    assert_eq!(output[start..start + bytes as usize], expected(bytes));
    let tail = String::from_utf8_lossy(&output[start + bytes as usize..]);
    assert!(tail.starts_with("\nconsole: "), "{tail}");
    let fields = hushvm::bench::guest_fields(tail.as_bytes(), "console:");
    assert_eq!(fields.get("bytes"), Some(&u64::from(bytes)), "{tail}");
    assert_eq!(fields.get("errors"), Some(&0), "{tail}");
    assert!(!stderr.contains("dropped"), "{stderr}");
}

#[test]
fn a_vm_whose_destination_is_full_still_stops_on_a_signal() {
    if !kvm_available() {
        return;
    }
    let mut child = printing(50_000);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the output stalled");
    // No vCPU sits in write(): the stop reaches them all, though nobody ever reads.
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid; it touches no memory.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = ends_within(&mut child, Duration::from_secs(20));
    let stderr = stderr_of(&mut child);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(128 + libc::SIGTERM),
        "{stderr}"
    );
    assert!(
        stderr.contains("COM1's destination took no more output"),
        "the held bytes are given up after the grace period: {stderr}"
    );
}

#[test]
fn a_vm_whose_destination_is_full_still_times_out() {
    if !kvm_available() {
        return;
    }
    // The event loop keeps its deadline: nothing it serves waits on COM1's destination.
    let mut child = printing_for(50_000, "1");
    let status = ends_within(&mut child, Duration::from_secs(20));
    let stderr = stderr_of(&mut child);
    assert_eq!(status.and_then(|s| s.code()), Some(124), "{stderr}");
}

#[test]
fn a_destination_whose_reader_is_gone_drops_bytes_and_says_how_many() {
    if !kvm_available() {
        return;
    }
    let mut child = printing(1000);
    drop(child.stdout.take());
    let status = ends_within(&mut child, Duration::from_secs(60)).expect("the guest finishes");
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bytes of COM1 output were dropped: its reader had gone"),
        "{stderr}"
    );
}
