//! The API socket. dbs-uhttp (Firecracker's micro-http, as the Dragonball project publishes
//! it) parses each connection's bytes ([`HttpConnection`]) and writes the responses; the
//! loop around the connections is ours, because dbs-uhttp's own `HttpServer` answers 500 to
//! a request that arrives in pieces more than ~0.6 ms apart (it treats EAGAIN in the middle
//! of a request as a read error after 32 busy retries) and spins the thread meanwhile.
//!
//! One thread, non-blocking sockets in one level-triggered epoll: a connection's partial
//! request waits in its buffer until more bytes come, so a slow client holds only its own
//! connection. At most [`MAX_CONNECTIONS`]; when full, the connection idle longest is closed
//! to make room (a thousand held connections cannot lock other clients out), and any
//! connection idle for [`IDLE_LIMIT`] is closed. Bodies over the payload limit are refused
//! by the parser.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbs_uhttp::{
    Body, ConnectionError, HttpConnection, MediaType, Request, Response, StatusCode, Version,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::routes::{self, Reply};
use super::types::LogLevel;
use super::Instance;
use crate::seccomp::{Filters, SeccompError, ThreadKind};

/// Firecracker's default `--http-api-max-payload-size`.
pub const DEFAULT_MAX_PAYLOAD: usize = 51200;

/// The API thread's name (in seccomp reports and log lines).
pub const API_THREAD: &str = "fc_api";

/// Open connections at most (Firecracker's micro-http keeps 256 too).
pub const MAX_CONNECTIONS: usize = 256;

/// A connection that sent nothing and had nothing to receive for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// Binding or serving the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the API socket {}: {source}", path.display())]
    Bind {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the API thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the API socket's epoll failed: {0}")]
    Epoll(#[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// A bound, listening API socket with its epoll.
pub struct ApiSocket {
    listener: UnixListener,
    epoll: Epoll,
    max_payload: usize,
    clients: HashMap<RawFd, Client>,
}

struct Client {
    connection: HttpConnection<UnixStream>,
    last_active: Instant,
    /// Answered a request the parser refused: closed once the answer is written.
    closing: bool,
}

/// Binds `path` (before any thread is filtered: binding makes a socket).
pub fn bind(path: &Path, max_payload: usize) -> Result<ApiSocket, ServerError> {
    let bind_error = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let epoll = Epoll::new().map_err(ServerError::Epoll)?;
    let fd = listener.as_raw_fd();
    epoll
        .ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, fd as u64),
        )
        .map_err(ServerError::Epoll)?;
    Ok(ApiSocket {
        listener,
        epoll,
        max_payload,
        clients: HashMap::new(),
    })
}

fn warn(message: &str) {
    super::logger::log(LogLevel::Warning, module_path!(), message);
}

impl ApiSocket {
    /// Accepts every waiting connection.
    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) => return warn(&format!("API socket: cannot accept: {error}")),
            };
            if self.clients.len() >= MAX_CONNECTIONS {
                self.evict_idlest();
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            let event = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, fd as u64);
            if self.epoll.ctl(ControlOperation::Add, fd, event).is_err() {
                continue;
            }
            let mut connection = HttpConnection::new(stream);
            connection.set_payload_max_size(self.max_payload);
            let client = Client {
                connection,
                last_active: Instant::now(),
                closing: false,
            };
            self.clients.insert(fd, client);
        }
    }

    fn evict_idlest(&mut self) {
        let idlest = self
            .clients
            .iter()
            .min_by_key(|(_, client)| client.last_active)
            .map(|(fd, _)| *fd);
        if let Some(fd) = idlest {
            self.close(fd);
        }
    }

    fn close(&mut self, fd: RawFd) {
        if self.clients.remove(&fd).is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    /// Reads what `fd` sent, answers every complete request, writes what it can.
    fn serve_client(&mut self, fd: RawFd, events: EventSet, instance: &Instance) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        client.last_active = Instant::now();
        let mut open = true;
        if events.contains(EventSet::IN) {
            open = read_requests(client, instance);
        }
        if open && client.connection.pending_write() {
            open = write_responses(client);
        }
        let hung_up = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        let done = client.closing && !client.connection.pending_write();
        if !open || done || (hung_up && !client.connection.pending_write()) {
            return self.close(fd);
        }
        let mut wanted = EventSet::IN | EventSet::READ_HANG_UP;
        if client.connection.pending_write() {
            wanted |= EventSet::OUT;
        }
        let _ = self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(wanted, fd as u64),
        );
    }

    fn close_idle(&mut self) {
        let idle: Vec<RawFd> = self
            .clients
            .iter()
            .filter(|(_, client)| client.last_active.elapsed() > IDLE_LIMIT)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in idle {
            self.close(fd);
        }
    }
}

/// Whether the connection is still open.
fn read_requests(client: &mut Client, instance: &Instance) -> bool {
    match client.connection.try_read() {
        Ok(()) => {}
        Err(ConnectionError::StreamReadError(error))
            if error.errno() == libc::EAGAIN || error.errno() == libc::EINTR => {}
        Err(ConnectionError::ParseError(error)) => {
            let reply = Reply::fault(400, &format!("the request is not valid HTTP: {error}"));
            client.connection.enqueue_response(response(reply));
            client.closing = true;
        }
        Err(_) => return false,
    }
    while let Some(request) = client.connection.pop_parsed_request() {
        client
            .connection
            .enqueue_response(to_response(instance, &request));
    }
    true
}

/// Whether the connection is still open.
fn write_responses(client: &mut Client) -> bool {
    while client.connection.pending_write() {
        match client.connection.try_write() {
            Ok(()) => {}
            Err(ConnectionError::InvalidWrite) => break,
            Err(_) => return false,
        }
    }
    true
}

fn method_name(request: &Request) -> &'static str {
    request.method().to_str()
}

fn to_response(instance: &Instance, request: &Request) -> Response {
    let body = request.body.as_ref().map_or(&[][..], |body| body.raw());
    let path = request.uri().get_abs_path().to_string();
    let reply = routes::handle(instance, method_name(request), &path, body);
    response(reply)
}

fn response(reply: Reply) -> Response {
    let status = match reply.status {
        200 => StatusCode::OK,
        204 => StatusCode::NoContent,
        _ => StatusCode::BadRequest,
    };
    let mut response = Response::new(Version::Http11, status);
    response.set_server("hushvm API");
    if let Some(body) = reply.body {
        response.set_content_type(MediaType::ApplicationJson);
        response.set_body(Body::new(body));
    }
    response
}

/// Serves the socket until the process ends; installs the `api` filter first.
fn serve(mut socket: ApiSocket, instance: &Instance, filters: &Filters) -> Result<(), ServerError> {
    filters.install(ThreadKind::Api, API_THREAD)?;
    let mut events = vec![EpollEvent::default(); 64];
    let listener = socket.listener.as_raw_fd();
    loop {
        let ready = match socket.epoll.wait(1000, &mut events) {
            Ok(ready) => ready,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(ServerError::Epoll(error)),
        };
        for event in &events[..ready] {
            let fd = event.fd();
            match fd == listener {
                true => socket.accept(),
                false => socket.serve_client(fd, event.event_set(), instance),
            }
        }
        socket.close_idle();
    }
}

/// Starts the API thread on a bound socket.
pub fn spawn(
    socket: ApiSocket,
    instance: Arc<Instance>,
    filters: Arc<Filters>,
) -> Result<std::thread::JoinHandle<Result<(), ServerError>>, ServerError> {
    std::thread::Builder::new()
        .name(API_THREAD.to_string())
        .spawn(move || serve(socket, &instance, &filters))
        .map_err(ServerError::Spawn)
}

/// Starts the metrics thread: a flush every [`super::metrics::FLUSH_PERIOD`], under the
/// `api` filter.
pub fn spawn_metrics(
    instance: Arc<Instance>,
    filters: Arc<Filters>,
) -> Result<std::thread::JoinHandle<Result<(), ServerError>>, ServerError> {
    std::thread::Builder::new()
        .name("fc_metrics".to_string())
        .spawn(move || {
            filters.install(ThreadKind::Api, "fc_metrics")?;
            loop {
                std::thread::sleep(super::metrics::FLUSH_PERIOD);
                let _ = instance.metrics.flush();
            }
        })
        .map_err(ServerError::Spawn)
}
