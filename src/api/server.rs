//! The API socket, served by `dbs-uhttp` (Firecracker's own micro-http, as published by
//! the Dragonball project): one thread, non-blocking sockets in one epoll, at most 256
//! connections (the rest are answered 503 and closed), bodies over the payload limit
//! refused. A slow client only holds its own connection; nothing here waits on one.

use std::path::Path;
use std::sync::Arc;

use dbs_uhttp::{Body, HttpServer, MediaType, Request, Response, StatusCode, Version};

use super::routes::{self, Reply};
use super::Instance;
use crate::seccomp::{Filters, SeccompError, ThreadKind};

/// Firecracker's default `--http-api-max-payload-size`.
pub const DEFAULT_MAX_PAYLOAD: usize = 51200;

/// The API thread's name (in seccomp reports and log lines).
pub const API_THREAD: &str = "fc_api";

/// Binding or serving the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    // dbs-uhttp's error implements Debug only: it is shown, not kept as a source.
    #[error("cannot open the API socket {path}: {problem}")]
    Bind { path: String, problem: String },
    #[error("cannot start the API thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Binds `path` (before any thread is filtered: binding makes a socket).
pub fn bind(path: &Path, max_payload: usize) -> Result<HttpServer, ServerError> {
    let bind_error = |problem: dbs_uhttp::ServerError| ServerError::Bind {
        path: path.display().to_string(),
        problem: format!("{problem:?}"),
    };
    let mut server = HttpServer::new(path).map_err(bind_error)?;
    server.set_payload_max_size(max_payload);
    server.start_server().map_err(bind_error)?;
    Ok(server)
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
fn serve(
    mut server: HttpServer,
    instance: &Instance,
    filters: &Filters,
) -> Result<(), ServerError> {
    filters.install(ThreadKind::Api, API_THREAD)?;
    loop {
        let requests = match server.requests() {
            Ok(requests) => requests,
            Err(error) => {
                super::logger::log(
                    super::types::LogLevel::Warning,
                    module_path!(),
                    &format!("API server: {error:?}"),
                );
                continue;
            }
        };
        let responses = requests
            .iter()
            .map(|request| request.process(|inner| to_response(instance, inner)))
            .collect();
        if let Err(error) = server.enqueue_responses(responses) {
            super::logger::log(
                super::types::LogLevel::Warning,
                module_path!(),
                &format!("API server: cannot answer: {error:?}"),
            );
        }
    }
}

/// Starts the API thread on a bound server.
pub fn spawn(
    server: HttpServer,
    instance: Arc<Instance>,
    filters: Arc<Filters>,
) -> Result<std::thread::JoinHandle<Result<(), ServerError>>, ServerError> {
    std::thread::Builder::new()
        .name(API_THREAD.to_string())
        .spawn(move || serve(server, &instance, &filters))
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
