//! Network namespaces for tests: each `NetNs` is a namespace of its own, uniquely named,
//! with a tap inside (`NetNs::TAP`, address `HOST_IP`/24); nothing outside it is
//! touched, and `Drop` removes it (also when the test panics). The host side of a test
//! runs inside: `ping` through `ip netns exec`, a UDP client on a thread that entered
//! the namespace, and hushvm itself (`in_namespace(|| machine::run(..))`: a tap is
//! looked up in the namespace of the thread that opens it).
//!
//! Needs root, `ip` (iproute2), `ping` (iputils) and /dev/net/tun: scripts/
//! install-net-tools.sh installs the tools. Like KVM tests, these fail without them,
//! unless HUSHVM_SKIP_KVM_TESTS=1 asks to skip; HUSHVM_REQUIRE_KVM=1 always fails.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const NAME_PREFIX: &str = "hushvm-test-";

/// True if the test should go on; false if it may be skipped; panics otherwise.
pub fn netns_available() -> bool {
    let missing = missing_prerequisite();
    let Some(missing) = missing else {
        return true;
    };
    let required = std::env::var("HUSHVM_REQUIRE_KVM").as_deref() == Ok("1");
    let skip = std::env::var("HUSHVM_SKIP_KVM_TESTS").as_deref() == Ok("1");
    if skip && !required {
        eprintln!("SKIPPED: {missing} and HUSHVM_SKIP_KVM_TESTS=1");
        return false;
    }
    panic!("this test needs network namespaces with a tap: {missing} (scripts/install-net-tools.sh installs the tools; set HUSHVM_SKIP_KVM_TESTS=1 to skip)");
}

fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    for tool in ["ip", "ping"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|out| out.status.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// How the namespace's tap is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapKind {
    SingleQueue,
    MultiQueue,
}

/// What `ping` said.
#[derive(Debug)]
pub struct PingReport {
    pub transmitted: u32,
    pub received: u32,
    pub output: String,
}

/// A network namespace with a tap; removed on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// The tap's name inside the namespace.
    pub const TAP: &'static str = "hvtap0";
    pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    /// Where the tests put the guest (the test guest's default, guests/net.c).
    pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    /// A new namespace with lo up and the tap up at HOST_IP/24.
    pub fn new(kind: TapKind) -> NetNs {
        remove_stale_namespaces();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{NAME_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        // From here on, Drop removes the namespace even if a step below panics.
        let ns = NetNs { name };
        // No IPv6: the kernel's own neighbour discovery and MLD frames would mix with
        // what a test sends and counts.
        run_checked(ns.command("sh").args([
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && \
             echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
        ]));
        let mut add_tap = vec!["tuntap", "add", "dev", Self::TAP, "mode", "tap"];
        if kind == TapKind::MultiQueue {
            add_tap.push("multi_queue");
        }
        run_checked(ns.command("ip").args(&add_tap));
        let address = format!("{}/24", Self::HOST_IP);
        run_checked(
            ns.command("ip")
                .args(["addr", "add", &address, "dev", Self::TAP]),
        );
        run_checked(ns.command("ip").args(["link", "set", "lo", "up"]));
        run_checked(ns.command("ip").args(["link", "set", Self::TAP, "up"]));
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` run inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `work` on a thread that has entered the namespace: sockets it makes and taps
    /// it opens are the namespace's. Panics in `work` reach the caller.
    pub fn in_namespace<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                self.enter().expect("enter the test's network namespace");
                work()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn enter(&self) -> io::Result<()> {
        let namespace = File::open(format!("/var/run/netns/{}", self.name))?;
        // SAFETY: setns on an open namespace file; it changes the network namespace of
        // the calling thread only (a thread this module made for the purpose).
        if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `ping -c COUNT -s SIZE` from the namespace, 0.2 s apart, each waiting at most
    /// `wait` seconds for its reply.
    pub fn ping(&self, target: Ipv4Addr, count: u32, size: u32, wait: u32) -> PingReport {
        let output = self
            .command("ping")
            .args(["-n", "-i", "0.2", "-c", &count.to_string()])
            .args(["-s", &size.to_string(), "-W", &wait.to_string()])
            .arg(target.to_string())
            .output()
            .expect("run ping");
        let output = text(&output);
        let (transmitted, received) =
            parse_ping_summary(&output).unwrap_or_else(|| panic!("no ping summary in:\n{output}"));
        PingReport {
            transmitted,
            received,
            output,
        }
    }

    /// Sends each payload to `target` from inside the namespace and waits up to
    /// `timeout` for its echo; returns what came back for each (None: nothing).
    pub fn udp_exchange(
        &self,
        target: SocketAddr,
        payloads: &[Vec<u8>],
        timeout: Duration,
    ) -> Vec<Option<Vec<u8>>> {
        self.in_namespace(|| {
            let socket = UdpSocket::bind((Self::HOST_IP, 0)).expect("bind in the namespace");
            socket
                .set_read_timeout(Some(timeout))
                .expect("read timeout");
            payloads
                .iter()
                .map(|payload| {
                    socket.send_to(payload, target).expect("send");
                    let mut reply = vec![0u8; 65536];
                    match socket.recv_from(&mut reply) {
                        Ok((len, from)) if from == target => Some(reply[..len].to_vec()),
                        _ => None,
                    }
                })
                .collect()
        })
    }

    /// Sends one datagram from inside the namespace, expecting no answer.
    pub fn udp_send(&self, target: SocketAddr, payload: &[u8]) {
        self.in_namespace(|| {
            let socket = UdpSocket::bind((Self::HOST_IP, 0)).expect("bind in the namespace");
            socket.send_to(payload, target).expect("send");
        })
    }

    /// Waits until the tap's link is up: once a queue is attached (a tap opened), the
    /// kernel turns the carrier on at once but starts the transmit queue only when its
    /// link watcher runs, up to a second later; frames sent before are dropped.
    pub fn wait_for_carrier(&self, timeout: Duration) {
        let start = std::time::Instant::now();
        loop {
            let output = self
                .command("cat")
                .arg(format!("/sys/class/net/{}/operstate", Self::TAP))
                .output()
                .expect("read the tap's state");
            let state = text(&output);
            if state.trim() == "up" {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "the tap's link is not up after {timeout:?}: {state}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The tap's (received, transmitted) packet counters, as the host side sees them:
    /// received are frames the guest sent.
    pub fn tap_packets(&self) -> (u64, u64) {
        let read = |which: &str| -> u64 {
            let output = self
                .command("cat")
                .arg(format!(
                    "/sys/class/net/{}/statistics/{which}_packets",
                    Self::TAP
                ))
                .output()
                .expect("read the tap's counters");
            text(&output).trim().parse().expect("a packet count")
        };
        (read("rx"), read("tx"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let deleted = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !deleted.is_ok_and(|status| status.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// `N packets transmitted, M received` from ping's summary.
pub fn parse_ping_summary(output: &str) -> Option<(u32, u32)> {
    let line = output
        .lines()
        .find(|line| line.contains("packets transmitted"))?;
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse::<u32>().ok());
    Some((numbers.next()??, numbers.next()??))
}

/// Namespaces left by test processes that were killed before their Drop ran.
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

fn run_checked(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}",
        text(&output)
    );
}

fn text(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text
}
