//! `hushvm bench api`: Firecracker mode from outside, as a tool sees it. Each repetition
//! starts `hushvm firecracker` and measures: from the spawn to the API socket accepting;
//! API latency of `GET /` and `PUT /machine-config` (one keep-alive connection); and, with
//! the `probe` guest printing first thing (`action=info`), from the InstanceStart request
//! and from its response to the guest's first COM1 byte on hushvm's standard output (an
//! upper bound of the first guest instruction: it adds the guest's few instructions before
//! its first OUT, the exit, and the pipe).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

/// The bench could not run.
#[derive(Debug, Error)]
pub enum ApiBenchError {
    #[error("bench api: {0}")]
    Io(#[from] io::Error),
    #[error("bench api: {0}")]
    Protocol(String),
}

/// Medians (and the spread) of one measure over the repetitions, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Latency percentiles of one call, microseconds, over every request of every repetition.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiBenchReport {
    pub workload: &'static str,
    pub repeat: u32,
    pub spawn_to_socket_accepting_ms: Spread,
    pub start_request_to_first_output_ms: Spread,
    pub start_response_to_first_output_ms: Spread,
    pub get_root: Latency,
    pub put_machine_config: Latency,
}

impl ApiBenchReport {
    pub fn render(&self) -> String {
        let spread =
            |s: &Spread| format!("{:.3} ms (min {:.3}, max {:.3})", s.median, s.min, s.max);
        let latency = |l: &Latency| format!("p50 {:.1} us, p99 {:.1} us", l.p50_us, l.p99_us);
        format!(
            "api ({} repetitions)\n  spawn -> socket accepting: {}\n  InstanceStart request -> first guest output: {}\n  InstanceStart response -> first guest output: {}\n  GET /: {}\n  PUT /machine-config: {}\n",
            self.repeat,
            spread(&self.spawn_to_socket_accepting_ms),
            spread(&self.start_request_to_first_output_ms),
            spread(&self.start_response_to_first_output_ms),
            latency(&self.get_root),
            latency(&self.put_machine_config),
        )
    }
}

fn spread(mut values: Vec<f64>) -> Spread {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    };
    Spread {
        median,
        min: values.first().copied().unwrap_or(0.0),
        max: values.last().copied().unwrap_or(0.0),
    }
}

fn latency(mut values: Vec<f64>) -> Latency {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((values.len() as f64 - 1.0) * q).round() as usize;
        values.get(index).copied().unwrap_or(0.0)
    };
    Latency {
        p50_us: at(0.5),
        p99_us: at(0.99),
        requests: values.len(),
    }
}

/// A bench-side client: writes one request, reads the status line, the headers up to the
/// blank line and `Content-Length` bytes (all the server sends). Returns the status.
fn call(
    stream: &mut UnixStream,
    method: &str,
    path: &str,
    body: &str,
) -> Result<u16, ApiBenchError> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(ApiBenchError::Protocol(
                "the server closed the connection".into(),
            ));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiBenchError::Protocol(format!("no status in {head:?}")))?;
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(status)
}

fn expect(status: u16, wanted: u16, what: &str) -> Result<(), ApiBenchError> {
    match status == wanted {
        true => Ok(()),
        false => Err(ApiBenchError::Protocol(format!("{what}: status {status}"))),
    }
}

/// Kills the child if a repetition fails half-way.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Repetition {
    socket_ms: f64,
    request_to_output_ms: f64,
    response_to_output_ms: f64,
    get_us: Vec<f64>,
    put_us: Vec<f64>,
}

fn ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(from - to).as_secs_f64() * 1e3,
    }
}

fn repetition(
    exe: &Path,
    dir: &Path,
    kernel: &Path,
    requests: u64,
) -> Result<Repetition, ApiBenchError> {
    let socket = dir.join("api.sock");
    let _ = std::fs::remove_file(&socket);
    let spawned = Instant::now();
    let mut child = Spawned(
        Command::new(exe)
            .arg("firecracker")
            .arg("--api-sock")
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let mut stream = loop {
        match UnixStream::connect(&socket) {
            Ok(stream) => break stream,
            Err(_) if spawned.elapsed() < Duration::from_secs(10) => std::thread::yield_now(),
            Err(error) => return Err(error.into()),
        }
    };
    let socket_ms = ms(spawned, Instant::now());
    let mut stdout = child
        .0
        .stdout
        .take()
        .ok_or_else(|| ApiBenchError::Protocol("no stdout".into()))?;
    let (sender, first_output) = mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let got = stdout.read(&mut byte).map(|n| n > 0).unwrap_or(false);
        let _ = sender.send(got.then(Instant::now));
        let _ = io::copy(&mut stdout, &mut io::sink());
    });
    let (mut get_us, mut put_us) = (Vec::new(), Vec::new());
    for _ in 0..requests {
        let t = Instant::now();
        expect(call(&mut stream, "GET", "/", "")?, 200, "GET /")?;
        get_us.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let config = r#"{"vcpu_count": 1, "mem_size_mib": 64}"#;
        expect(
            call(&mut stream, "PUT", "/machine-config", config)?,
            204,
            "PUT /machine-config",
        )?;
        put_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "action=info"}}"#,
        kernel.display()
    );
    expect(
        call(&mut stream, "PUT", "/boot-source", &boot)?,
        204,
        "PUT /boot-source",
    )?;
    let requested = Instant::now();
    let start = r#"{"action_type": "InstanceStart"}"#;
    expect(
        call(&mut stream, "PUT", "/actions", start)?,
        204,
        "InstanceStart",
    )?;
    let responded = Instant::now();
    let output = first_output
        .recv_timeout(Duration::from_secs(30))
        .ok()
        .flatten()
        .ok_or_else(|| ApiBenchError::Protocol("the guest printed nothing".into()))?;
    let _ = child.0.wait();
    Ok(Repetition {
        socket_ms,
        request_to_output_ms: ms(requested, output),
        response_to_output_ms: ms(responded, output),
        get_us,
        put_us,
    })
}

/// Runs `repeat` repetitions of `requests` calls each, with the hushvm binary `exe`.
pub fn run(exe: &Path, repeat: u32, requests: u64) -> Result<ApiBenchReport, ApiBenchError> {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("hushvm-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kernel = dir.join("probe.elf");
    let image = crate::guests::image("probe")
        .ok_or_else(|| ApiBenchError::Protocol("no probe guest".into()))?;
    std::fs::write(&kernel, image)?;
    let repetitions = (0..repeat)
        .map(|_| repetition(exe, &dir, &kernel, requests))
        .collect::<Result<Vec<_>, _>>();
    let _ = std::fs::remove_dir_all(&dir);
    let repetitions = repetitions?;
    let pick = |f: fn(&Repetition) -> f64| spread(repetitions.iter().map(f).collect());
    let all = |f: fn(&Repetition) -> &Vec<f64>| {
        latency(repetitions.iter().flat_map(|r| f(r).clone()).collect())
    };
    Ok(ApiBenchReport {
        workload: "api",
        repeat,
        spawn_to_socket_accepting_ms: pick(|r| r.socket_ms),
        start_request_to_first_output_ms: pick(|r| r.request_to_output_ms),
        start_response_to_first_output_ms: pick(|r| r.response_to_output_ms),
        get_root: all(|r| &r.get_us),
        put_machine_config: all(|r| &r.put_us),
    })
}
