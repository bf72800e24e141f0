//! The SIGSYS handler that reports a denied syscall. With `--seccomp kill` a filter
//! answers a syscall outside its list with SECCOMP_RET_TRAP, so the kernel sends SIGSYS
//! to the thread that made it; this handler writes one line naming the thread and the
//! syscall, then ends the process with [`VIOLATION_STATUS`]. SECCOMP_RET_KILL_PROCESS
//! would end it as surely but silently (as Firecracker, hushvm prefers a report).
//!
//! The handler only does async-signal-safe things: it reads a thread-local byte array
//! (const-initialised, so no lazy initialisation runs), formats into a stack buffer, and
//! calls `write` and `_exit` (`exit_group`), both allowed by every filter. If SIGSYS
//! were blocked or its handler replaced, the kernel would kill the process instead.

use std::cell::Cell;

use vmm_sys_util::signal::register_signal_handler;

/// The status of a process a filter stopped: 128 + SIGSYS, as a shell reports a process
/// that SIGSYS killed.
pub const VIOLATION_STATUS: i32 = 128 + libc::SIGSYS;

/// `si_code` of a SIGSYS sent by seccomp.
const SYS_SECCOMP: i32 = 1;

thread_local! {
    /// This thread's name (up to 15 bytes, as Linux keeps thread names), for the report.
    static NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// The SIGSYS fields of `siginfo_t` on x86_64: the common header, then the `_sigsys`
/// member of the union (`<asm-generic/siginfo.h>`).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

/// Names the calling thread in reports.
pub fn set_thread_name(name: &str) {
    let mut bytes = [0u8; 16];
    let len = name.len().min(15);
    bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
    NAME.with(|cell| cell.set(bytes));
}

/// Installs the handler (process-wide; idempotent).
pub fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(libc::SIGSYS, on_sigsys)
}

/// A line being formatted without allocating.
struct Line {
    bytes: [u8; 160],
    len: usize,
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        let room = self.bytes.len() - self.len;
        let take = text.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&text[..take]);
        self.len += take;
    }

    fn push_number(&mut self, value: i64) {
        if value < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

/// The report for a SIGSYS with `code` (seccomp's or another sender's) for `syscall`.
fn format(thread: &[u8], code: i32, syscall: i32) -> Line {
    let mut line = Line {
        bytes: [0; 160],
        len: 0,
    };
    let end = thread.iter().position(|b| *b == 0).unwrap_or(thread.len());
    let thread = if end == 0 { &b"?"[..] } else { &thread[..end] };
    line.push(b"hushvm: seccomp: thread ");
    line.push(thread);
    if code == SYS_SECCOMP {
        line.push(b" made syscall ");
        line.push_number(i64::from(syscall));
        line.push(b", which its filter does not allow\n");
    } else {
        line.push(b" received a SIGSYS that seccomp did not send\n");
    }
    line
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t (128 bytes) to an SA_SIGINFO handler;
    // SigsysInfo describes its first 32 bytes for SIGSYS and is read, never written.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    let line = format(&NAME.with(Cell::get), info.code, info.syscall);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer lives on this
    // stack for the call.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(VIOLATION_STATUS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(line: &Line) -> &str {
        std::str::from_utf8(&line.bytes[..line.len]).unwrap()
    }

    #[test]
    fn the_report_names_the_thread_and_the_syscall() {
        let line = format(b"vcpu0\0\0\0", SYS_SECCOMP, 110);
        assert_eq!(
            text(&line),
            "hushvm: seccomp: thread vcpu0 made syscall 110, which its filter does not allow\n"
        );
        let line = format(&[0; 16], 0, 0);
        assert_eq!(
            text(&line),
            "hushvm: seccomp: thread ? received a SIGSYS that seccomp did not send\n"
        );
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut line = Line {
            bytes: [0; 160],
            len: 0,
        };
        for value in [0, 7, 435, -1, i64::from(i32::MIN)] {
            line.push_number(value);
            line.push(b" ");
        }
        assert_eq!(text(&line), "0 7 435 -1 -2147483648 ");
    }

    #[test]
    fn the_thread_name_keeps_fifteen_bytes() {
        set_thread_name("a-very-long-thread-name");
        assert_eq!(&NAME.with(Cell::get)[..], b"a-very-long-thr\0");
    }
}
