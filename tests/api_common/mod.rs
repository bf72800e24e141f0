//! A hushvm in Firecracker mode and a small HTTP client for its socket (the test's side;
//! the server parses with dbs-uhttp).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Firecracker {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub child: Child,
}

impl Firecracker {
    /// Starts `hushvm firecracker --api-sock DIR/api.sock EXTRA...` and waits for the socket.
    pub fn start(name: &str, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("hushvm-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (guest, image) in hushvm::guests::GUESTS {
            std::fs::write(dir.join(format!("{guest}.elf")), image).unwrap();
        }
        let socket = dir.join("api.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_hushvm"))
            .arg("firecracker")
            .arg("--api-sock")
            .arg(&socket)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hushvm starts");
        let started = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "no API socket");
            std::thread::sleep(Duration::from_millis(5));
        }
        Self { dir, socket, child }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    pub fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        request(&self.socket, method, path, body)
    }

    /// Waits for the process to end; its status code and standard output.
    pub fn wait(mut self, limit: Duration) -> (i32, String, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                let mut err = String::new();
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.code().unwrap_or(-1), out, err);
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("hushvm firecracker still running after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Firecracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request on a new connection: the status and the body.
pub fn request(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let text = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).unwrap();
    read_response(&mut stream)
}

/// Reads one response: its status and body.
pub fn read_response(stream: &mut UnixStream) -> (u16, String) {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => bytes.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&bytes).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The rtc guest's `iterations=` and `errors=`.
pub fn rtc_fields(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("rtc:"))
        .unwrap_or_else(|| panic!("no rtc line in {out:?}"));
    let value = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    (value("iterations="), value("errors="))
}

/// One vCPU, 64 MiB and the rtc guest with `iterations`.
pub fn configure_rtc(vm: &Firecracker, iterations: u32) {
    let kernel = vm.path("rtc.elf");
    let calls = [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#.to_string(),
        ),
        (
            "PUT",
            "/boot-source",
            format!(
                r#"{{"kernel_image_path": "{kernel}", "boot_args": "iterations={iterations}"}}"#
            ),
        ),
    ];
    for (method, path, body) in calls {
        assert_eq!(vm.call(method, path, &body), (204, String::new()), "{path}");
    }
}
