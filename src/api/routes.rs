//! Firecracker's endpoints: a method, a path and a body become a call on the
//! [`Instance`], and its result a status and a body (204 on success, 200 with JSON for
//! GETs, 400 with `{"fault_message": ...}` otherwise, as Firecracker answers).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{self, ActionType};
use super::{ApiError, Instance};

/// An answer: the HTTP status and the JSON body, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Option<String>,
}

impl Reply {
    fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    fn json(value: &impl Serialize) -> Self {
        Self {
            status: 200,
            body: Some(serde_json::to_string(value).unwrap_or_else(|_| "{}".into())),
        }
    }

    pub fn fault(status: u16, message: &str) -> Self {
        Self {
            status,
            body: Some(serde_json::json!({ "fault_message": message }).to_string()),
        }
    }
}

/// The endpoints Firecracker has and hushvm does not (a 400 that says so).
const NOT_OFFERED: &[&str] = &[
    "/balloon",
    "/mmds",
    "/pmem",
    "/hotplug",
    "/cpu-config",
    "/snapshot",
];

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(ApiError::Body)
}

/// The id in a path must match the body's (Firecracker refuses a mismatch).
fn same_id(path_id: &str, body_id: &str) -> Result<(), ApiError> {
    if path_id.is_empty() {
        return Err(ApiError::Invalid("the path has no id".into()));
    }
    match path_id == body_id {
        true => Ok(()),
        false => Err(ApiError::Invalid(format!(
            "the id in the path ({path_id}) and in the body ({body_id}) differ"
        ))),
    }
}

/// Answers one request.
pub fn handle(instance: &Instance, method: &str, path: &str, body: &[u8]) -> Reply {
    let path = path.split('?').next().unwrap_or(path);
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    if let Some(prefix) = NOT_OFFERED.iter().find(|p| path.starts_with(**p)) {
        instance.metrics.count("other", "");
        return Reply::fault(400, &format!("hushvm does not offer {prefix}"));
    }
    let (method_group, counter) = counter_name(method, path);
    let result = route(instance, method, path, body);
    match result {
        Ok(reply) => {
            instance
                .metrics
                .count(method_group, &format!("{counter}_count"));
            reply
        }
        Err(Routed::Unknown(reply)) => {
            instance.metrics.count("other", "");
            reply
        }
        Err(Routed::Failed(error)) => {
            instance
                .metrics
                .count(method_group, &format!("{counter}_fails"));
            Reply::fault(400, &error.to_string())
        }
    }
}

/// Firecracker's counter names (`machine_cfg_count`, `drive_fails`, ...).
fn counter_name<'a>(method: &str, path: &'a str) -> (&'static str, &'a str) {
    let group = match method {
        "GET" => "get",
        "PUT" => "put",
        "PATCH" => "patch",
        _ => "other",
    };
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let name = match first {
        "" => "instance_info",
        "machine-config" => "machine_cfg",
        "boot-source" => "boot_source",
        "drives" => "drive",
        "network-interfaces" => "network",
        "vm" if path == "/vm/config" => "vmm_config",
        other => other,
    };
    (group, name)
}

enum Routed {
    /// No such endpoint or method.
    Unknown(Reply),
    Failed(ApiError),
}

impl From<ApiError> for Routed {
    fn from(error: ApiError) -> Self {
        Self::Failed(error)
    }
}

fn route(instance: &Instance, method: &str, path: &str, body: &[u8]) -> Result<Reply, Routed> {
    let (collection, id) = match path.trim_start_matches('/').split_once('/') {
        Some((collection, id)) => (collection, id),
        None => (path.trim_start_matches('/'), ""),
    };
    let call = Call {
        method,
        collection,
        id,
        body,
    };
    if let Some(reply) = route_devices(instance, &call)? {
        return Ok(reply);
    }
    if let Some(reply) = route_control(instance, &call)? {
        return Ok(reply);
    }
    Err(Routed::Unknown(Reply::fault(
        400,
        &format!("Invalid request method and/or path: {method} {path}."),
    )))
}

/// A request, split: `/collection/id`.
struct Call<'a> {
    method: &'a str,
    collection: &'a str,
    id: &'a str,
    body: &'a [u8],
}

fn done(result: Result<(), ApiError>) -> Result<Option<Reply>, Routed> {
    result
        .map(|()| Some(Reply::no_content()))
        .map_err(Routed::from)
}

/// The machine and its devices, configured before the start (and the post-boot PATCHes).
fn route_devices(instance: &Instance, call: &Call) -> Result<Option<Reply>, Routed> {
    let (id, body) = (call.id, call.body);
    match (call.method, call.collection, id) {
        ("GET", "machine-config", "") => Ok(Some(Reply::json(
            &instance.resources(|r| r.machine.clone()),
        ))),
        ("PUT", "machine-config", "") => {
            let config = parse(body)?;
            done(instance.configure(|r| r.set_machine(config)))
        }
        ("PATCH", "machine-config", "") => {
            let update = parse(body)?;
            done(instance.configure(|r| r.update_machine(update)))
        }
        ("PUT", "boot-source", "") => {
            let source = parse(body)?;
            done(instance.configure(|r| r.set_boot_source(source)))
        }
        ("PUT", "drives", id) => {
            let drive: types::Drive = parse(body)?;
            same_id(id, &drive.drive_id)?;
            done(instance.configure(|r| r.set_drive(drive)))
        }
        ("PATCH", "drives", id) => {
            let drive: types::PartialDrive = parse(body)?;
            same_id(id, &drive.drive_id)?;
            done(patch_drive(instance, &drive))
        }
        ("PUT", "network-interfaces", id) => {
            let iface: types::NetworkInterface = parse(body)?;
            same_id(id, &iface.iface_id)?;
            done(instance.configure(|r| r.set_network_interface(iface)))
        }
        ("PATCH", "network-interfaces", id) => {
            let iface: types::PartialNetworkInterface = parse(body)?;
            same_id(id, &iface.iface_id)?;
            instance.require_running()?;
            // A running microVM here never has an interface: hushvm cannot start one.
            Err(ApiError::Invalid(format!("no network interface {id}")).into())
        }
        ("PUT", "vsock", "") => {
            let vsock = parse(body)?;
            done(instance.configure(|r| r.set_vsock(vsock)))
        }
        ("PUT", "entropy", "") => {
            let entropy: types::EntropyDevice = parse(body)?;
            done(instance.configure(|r| {
                r.entropy = Some(entropy);
                Ok(())
            }))
        }
        ("PUT", "serial", "") => {
            let serial = parse(body)?;
            done(instance.configure(|r| r.set_serial(serial)))
        }
        _ => Ok(None),
    }
}

/// The instance itself: information, actions, pause and resume, logger and metrics.
fn route_control(instance: &Instance, call: &Call) -> Result<Option<Reply>, Routed> {
    let body = call.body;
    match (call.method, call.collection, call.id) {
        ("GET", "", "") => Ok(Some(Reply::json(&instance.info()))),
        ("GET", "version", "") => Ok(Some(Reply::json(&serde_json::json!({
            "firecracker_version": env!("CARGO_PKG_VERSION"),
        })))),
        ("GET", "vm", "config") => Ok(Some(Reply::json(&instance.full_config()))),
        ("PUT", "logger", "") => done(instance.set_logger(parse(body)?)),
        ("PUT", "metrics", "") => done(instance.set_metrics(parse(body)?)),
        ("PUT", "actions", "") => {
            let action: types::InstanceActionInfo = parse(body)?;
            done(act(instance, action.action_type))
        }
        ("PATCH", "vm", "") => {
            let vm: types::Vm = parse(body)?;
            done(instance.set_state(vm.state))
        }
        _ => Ok(None),
    }
}

/// `PATCH /drives/{id}`: after the start only, as in Firecracker; hushvm cannot swap a
/// disk's backing file or rate limiter while it runs, and says so.
fn patch_drive(instance: &Instance, drive: &types::PartialDrive) -> Result<(), ApiError> {
    instance.require_running()?;
    if !instance.resources(|r| r.drives.iter().any(|d| d.drive_id == drive.drive_id)) {
        return Err(ApiError::Invalid(format!("no drive {}", drive.drive_id)));
    }
    Err(ApiError::Unsupported(
        "updating a drive of a running microVM".into(),
    ))
}

fn act(instance: &Instance, action: ActionType) -> Result<(), ApiError> {
    match action {
        ActionType::InstanceStart => instance.start(),
        ActionType::FlushMetrics => match instance.metrics.flush()? {
            true => Ok(()),
            false => Err(ApiError::Invalid(
                "the metrics system is not initialized: PUT /metrics first".into(),
            )),
        },
        ActionType::SendCtrlAltDel => {
            instance.require_running()?;
            Err(ApiError::Unsupported(
                "SendCtrlAltDel: its i8042 (vm-superio's) has no keyboard to send the keys through"
                    .into(),
            ))
        }
    }
}
