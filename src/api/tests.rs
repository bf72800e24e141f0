//! The API's routes and resources without a machine: status codes, faults, counters, the
//! config file's sections.

use super::routes::handle;
use super::types::FullVmConfiguration;
use super::{Instance, Phase, Resources};

fn instance() -> Instance {
    Instance::new("test-vm".into(), Resources::default()).0
}

fn call(instance: &Instance, method: &str, path: &str, body: &str) -> (u16, String) {
    let reply = handle(instance, method, path, body.as_bytes());
    (reply.status, reply.body.unwrap_or_default())
}

#[test]
fn get_root_describes_the_instance_and_machine_config_has_firecracker_defaults() {
    let vm = instance();
    let (status, body) = call(&vm, "GET", "/", "");
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["id"], "test-vm");
    assert_eq!(info["state"], "Not started");
    let (_, body) = call(&vm, "GET", "/machine-config", "");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (config["vcpu_count"].clone(), config["mem_size_mib"].clone()),
        (1.into(), 128.into())
    );
    // A trailing slash and a query are the same path.
    assert_eq!(call(&vm, "GET", "/machine-config/?x=1", "").0, 200);
}

#[test]
fn patch_machine_config_changes_only_what_it_names() {
    let vm = instance();
    assert_eq!(
        call(
            &vm,
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":2,"mem_size_mib":64}"#
        )
        .0,
        204
    );
    assert_eq!(
        call(&vm, "PATCH", "/machine-config", r#"{"mem_size_mib":32}"#).0,
        204
    );
    let machine = vm.resources(|r| r.machine.clone());
    assert_eq!((machine.vcpu_count, machine.mem_size_mib), (2, 32));
    // A refused PATCH leaves the configuration as it was.
    assert_eq!(
        call(&vm, "PATCH", "/machine-config", r#"{"vcpu_count":33}"#).0,
        400
    );
    assert_eq!(vm.resources(|r| r.machine.vcpu_count), 2);
}

#[test]
fn faults_are_json_with_a_fault_message_and_counted_as_fails() {
    let vm = instance();
    let (status, body) = call(&vm, "PUT", "/boot-source", r#"{"kernel_image_path": 7}"#);
    assert_eq!(status, 400);
    let fault: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        fault["fault_message"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{body}"
    );
    assert_eq!(
        call(
            &vm,
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":64}"#
        )
        .0,
        204
    );
    let metrics = vm.metrics.snapshot(true);
    assert_eq!(metrics["put_api_requests"]["boot_source_fails"], 1);
    assert_eq!(metrics["put_api_requests"]["machine_cfg_count"], 1);
    assert_eq!(metrics["id"], "test-vm");
}

#[test]
fn the_config_file_refuses_sections_hushvm_does_not_offer_and_unknown_keys() {
    let balloon: FullVmConfiguration =
        serde_json::from_str(r#"{"balloon": {"amount_mib": 1, "deflate_on_oom": false}}"#).unwrap();
    let error = Resources::default()
        .apply_file(balloon)
        .unwrap_err()
        .to_string();
    assert!(error.contains("balloon"), "{error}");
    let unknown = serde_json::from_str::<FullVmConfiguration>(r#"{"boot_source": {}}"#);
    assert!(unknown.unwrap_err().to_string().contains("unknown field"));
}

#[test]
fn start_needs_a_kernel_and_the_vsock_reaches_the_machine() {
    let vm = instance();
    let (status, body) = call(&vm, "PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    assert_eq!(status, 400);
    assert!(body.contains("boot-source"), "{body}");
    assert_eq!(vm.phase(), Phase::NotStarted);
    let vsock = r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#;
    assert_eq!(call(&vm, "PUT", "/vsock", vsock).0, 204);
    let resources = Resources {
        vsock: vm.resources(|r| r.vsock.clone()),
        boot_source: Some(super::types::BootSource {
            kernel_image_path: "/proc/self/exe".into(),
            boot_args: None,
            initrd_path: None,
        }),
        ..Resources::default()
    };
    let config = resources
        .machine_config()
        .expect("a kernel is all a machine needs");
    let vsock = config.devices.vsock.expect("PUT /vsock's device");
    assert_eq!(vsock.guest_cid, 3);
    assert_eq!(vsock.uds_path, std::path::PathBuf::from("/tmp/v.sock"));
}
