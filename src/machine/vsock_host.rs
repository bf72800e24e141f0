//! The vsock device's host side, Firecracker's hybrid design: the listening Unix socket
//! at `uds_path`, bound when the machine is built, and the connect the device makes for
//! each guest connection to host port P (`<uds_path>_P`).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use super::MachineError;

/// Binds the vsock device's host socket. An existing path is refused rather than
/// removed (it may be another VM's); the user removes a stale one.
pub(super) fn listen_vsock(path: &Path) -> Result<UnixListener, MachineError> {
    let error = |problem| MachineError::VsockSocket {
        path: path.to_path_buf(),
        problem,
    };
    if path.symlink_metadata().is_ok() {
        return Err(error(VsockProblem::Exists));
    }
    UnixListener::bind(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => error(VsockProblem::NoDirectory),
        _ => error(VsockProblem::Bind(e)),
    })
}

/// Connects a new non-blocking Unix stream socket to `path` without waiting: what the
/// vsock device calls, under its lock, for a guest connection. std's `UnixStream` can
/// only connect blocking (and a Unix connect blocks while the listener's backlog is
/// full), hence the hand-made socket.
pub fn connect_unix_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero `sockaddr_un` is a valid (empty) address.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= address.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a Unix socket path",
        ));
    }
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, kind, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just made and owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let length = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `address` is a valid `sockaddr_un` of at least `length` bytes, which
    // connect(2) only reads; `socket` is open for the call.
    let result = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_un).cast(),
            length as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

/// Why the vsock device's host socket cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum VsockProblem {
    #[error("the path exists (remove a stale socket first)")]
    Exists,
    #[error("its directory does not exist")]
    NoDirectory,
    #[error("cannot listen there")]
    Bind(#[source] io::Error),
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn a_vsock_connect_does_not_wait_and_gives_a_non_blocking_stream() {
        let path = std::env::temp_dir().join(format!("hushvm-connect-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        assert!(connect_unix_nonblocking(&path).is_err(), "no listener");
        let listener = UnixListener::bind(&path).unwrap();
        let mut stream = connect_unix_nonblocking(&path).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let mut byte = [0u8; 1];
        let error = stream.read(&mut byte).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        peer.write_all(b"x").unwrap();
        assert_eq!(stream.read(&mut byte).unwrap(), 1);
        let long = std::path::PathBuf::from("/".repeat(200));
        assert!(connect_unix_nonblocking(&long).is_err());
        let _ = std::fs::remove_file(path);
    }
}
