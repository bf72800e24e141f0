//! hushvm driven like Firecracker: a guest booted entirely through the API (with curl, with
//! a Python client, with this test's own client), the same VM from `--config-file`, every
//! endpoint's errors, pause and resume through `PATCH /vm`, `bench api`. Hostile clients
//! and the threads' filters: tests/api_hostile.rs.

mod api_common;
mod common;

use std::process::Command;
use std::time::Duration;

use api_common::{configure_rtc, rtc_fields, Firecracker};
use common::kvm_available;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_guest_boots_through_the_api_and_the_process_ends_with_it() {
    if !kvm_available() {
        return;
    }
    let vm = Firecracker::start("boot", &[]);
    let (status, info) = vm.call("GET", "/", "");
    assert_eq!(status, 200);
    assert!(info.contains(r#""state":"Not started""#), "{info}");
    configure_rtc(&vm, 1000);
    let (status, config) = vm.call("GET", "/vm/config", "");
    assert_eq!(status, 200);
    assert!(config.contains(r#""mem_size_mib":64"#), "{config}");
    assert_eq!(
        vm.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#)
            .0,
        204
    );
    // A second start, and a pre-boot call after the start, are refused as Firecracker does.
    let (status, body) = vm.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(status, 400);
    assert!(body.contains("not supported after starting"), "{body}");
    let (code, out, err) = vm.wait(LIMIT);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(rtc_fields(&out), (1000, 0), "{out}");
}

#[test]
fn the_getting_started_calls_work_with_curl() {
    if !kvm_available() {
        return;
    }
    let vm = Firecracker::start("curl", &[]);
    let disk = vm.path("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let socket = vm.socket.display().to_string();
    let curl = |method: &str, path: &str, body: &str| -> String {
        let output = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(&socket)
            .args(["-X", method, &format!("http://localhost{path}")])
            .args([
                "-H",
                "Accept: application/json",
                "-H",
                "Content-Type: application/json",
            ])
            .args(["-d", body])
            .output()
            .expect("curl runs (scripts/install-curl.sh installs it)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let kernel = vm.path("rtc.elf");
    let boot = format!(r#"{{"kernel_image_path": "{kernel}", "boot_args": "iterations=500"}}"#);
    assert_eq!(curl("PUT", "/boot-source", &boot), "204");
    let drive = format!(
        r#"{{"drive_id": "rootfs", "path_on_host": "{disk}", "is_root_device": true, "is_read_only": false}}"#
    );
    assert_eq!(curl("PUT", "/drives/rootfs", &drive), "204");
    let scratch = vm.path("scratch.img");
    std::fs::write(&scratch, vec![0u8; 4096]).unwrap();
    let second = format!(
        r#"{{"drive_id": "scratch", "path_on_host": "{scratch}", "is_root_device": false, "is_read_only": true}}"#
    );
    assert_eq!(curl("PUT", "/drives/scratch", &second), "204");
    assert_eq!(
        curl("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        "204"
    );
    let (code, out, err) = vm.wait(LIMIT);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(rtc_fields(&out), (500, 0));
}

#[test]
fn a_python_client_boots_the_guest() {
    if !kvm_available() {
        return;
    }
    let vm = Firecracker::start("python", &[]);
    let script = r#"
import http.client, json, socket, sys
class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)
def call(method, path, body=None):
    connection = UnixConnection(sys.argv[1])
    connection.request(method, path, json.dumps(body) if body is not None else None,
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    return response.status, data
assert call("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 32})[0] == 204
assert call("PUT", "/boot-source", {"kernel_image_path": sys.argv[2], "boot_args": "iterations=300"})[0] == 204
status, data = call("GET", "/machine-config")
assert status == 200 and json.loads(data)["vcpu_count"] == 2, data
assert call("PUT", "/actions", {"action_type": "InstanceStart"})[0] == 204
print("python ok")
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&vm.socket)
        .arg(vm.path("rtc.elf"))
        .output()
        .expect("python3 runs");
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        said.contains("python ok"),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (code, out, err) = vm.wait(LIMIT);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(rtc_fields(&out), (300, 0));
}

#[test]
fn the_same_vm_boots_from_a_config_file_without_the_api() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hushvm-api-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("rtc.elf");
    std::fs::write(&kernel, hushvm::guests::image("rtc").unwrap()).unwrap();
    let metrics = dir.join("metrics.json");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "iterations=400"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}},
                "metrics": {{"metrics_path": "{}"}}}}"#,
            kernel.display(),
            metrics.display()
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args(["firecracker", "--no-api", "--config-file"])
        .arg(&config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(rtc_fields(&out), (400, 0));
    // The final flush has hushvm's counters beside Firecracker's names.
    let line = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(last["vcpu"]["exit_io_in"], 400, "{line}");
    assert_eq!(last["hushvm"]["userspace_exits"]["pio_in"], 400, "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_endpoint_refuses_bad_requests_with_a_fault_message() {
    let vm = Firecracker::start("errors", &[]);
    let kernel = vm.path("rtc.elf");
    let disk = vm.path("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("PUT", "/machine-config", "{".into(), "not valid JSON"),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":64,"x":1}"#.into(),
            "unknown field",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":"one","mem_size_mib":64}"#.into(),
            "invalid type",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":0,"mem_size_mib":64}"#.into(),
            "vcpu_count",
        ),
        ("PATCH", "/machine-config", r#"{"smt":true}"#.into(), "smt"),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path":"/nonexistent/k"}"#.into(),
            "cannot open the kernel",
        ),
        (
            "PUT",
            "/drives/a",
            format!(r#"{{"drive_id":"b","path_on_host":"{disk}","is_root_device":false}}"#),
            "differ",
        ),
        (
            "PUT",
            "/drives/a",
            r#"{"drive_id":"a","path_on_host":"/nonexistent","is_root_device":false}"#.into(),
            "cannot open the drive",
        ),
        (
            "PATCH",
            "/drives/a",
            r#"{"drive_id":"a"}"#.into(),
            "before starting",
        ),
        (
            "PATCH",
            "/vm",
            r#"{"state":"Paused"}"#.into(),
            "before starting",
        ),
        (
            "PATCH",
            "/vm",
            r#"{"state":"Sleeping"}"#.into(),
            "unknown variant",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"FlushMetrics"}"#.into(),
            "metrics",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"SendCtrlAltDel"}"#.into(),
            "before starting",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#.into(),
            "no kernel",
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid":2,"uds_path":"/tmp/v"}"#.into(),
            "reserved",
        ),
        (
            "PUT",
            "/balloon",
            r#"{"amount_mib":1,"deflate_on_oom":true}"#.into(),
            "does not offer /balloon",
        ),
        ("PUT", "/mmds", "{}".into(), "does not offer /mmds"),
        (
            "PUT",
            "/snapshot/create",
            "{}".into(),
            "does not offer /snapshot",
        ),
        (
            "DELETE",
            "/machine-config",
            String::new(),
            "Invalid request method",
        ),
        (
            "GET",
            "/nothing-here",
            String::new(),
            "Invalid request method",
        ),
    ];
    for (method, path, body, expected) in &cases {
        let (status, answer) = vm.call(method, path, body);
        assert_eq!(status, 400, "{method} {path} {body}: {answer}");
        assert!(answer.contains("fault_message"), "{answer}");
        assert!(
            answer.contains(expected),
            "{method} {path}: {answer} lacks {expected}"
        );
    }
    // Duplicates: a second drive on the same file, a second root device.
    let drive = |id: &str, root: bool| {
        format!(r#"{{"drive_id":"{id}","path_on_host":"{disk}","is_root_device":{root}}}"#)
    };
    assert_eq!(vm.call("PUT", "/drives/a", &drive("a", true)).0, 204);
    let (status, answer) = vm.call("PUT", "/drives/b", &drive("b", false));
    assert_eq!(status, 400);
    assert!(answer.contains("already used"), "{answer}");
    let (status, answer) = vm.call("PUT", "/drives/com1", &drive("com1", false));
    assert_eq!(status, 400);
    assert!(answer.contains("another device"), "{answer}");
    let other = vm.path("other.img");
    std::fs::write(&other, vec![0u8; 4096]).unwrap();
    let second_root =
        format!(r#"{{"drive_id":"c","path_on_host":"{other}","is_root_device":true}}"#);
    let (status, answer) = vm.call("PUT", "/drives/c", &second_root);
    assert_eq!(status, 400);
    assert!(answer.contains("root block device"), "{answer}");
    let second = format!(r#"{{"drive_id":"c","path_on_host":"{other}","is_root_device":false}}"#);
    assert_eq!(vm.call("PUT", "/drives/c", &second).0, 204);
    let (_, config) = vm.call("GET", "/vm/config", "");
    assert!(config.contains(r#""drive_id":"c""#), "{config}");
    let iface = |id: &str| format!(r#"{{"iface_id":"{id}","host_dev_name":"tap0"}}"#);
    assert_eq!(
        vm.call("PUT", "/network-interfaces/eth0", &iface("eth0")).0,
        204
    );
    let (status, answer) = vm.call("PUT", "/network-interfaces/eth1", &iface("eth1"));
    assert_eq!(status, 400, "{answer}");
    // Rate limiters are accepted in Firecracker's shape, and checked.
    let limited = r#"{"iface_id":"eth0","host_dev_name":"tap0","rx_rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}"#;
    assert_eq!(vm.call("PUT", "/network-interfaces/eth0", limited).0, 204);
    let bad = r#"{"iface_id":"eth0","host_dev_name":"tap0","rx_rate_limiter":{"bandwidth":{"size":1000}}}"#;
    assert_eq!(vm.call("PUT", "/network-interfaces/eth0", bad).0, 400);
    // The logger and the metrics take their configuration once.
    let metrics = format!(r#"{{"metrics_path":"{}"}}"#, vm.path("m.json"));
    assert_eq!(vm.call("PUT", "/metrics", &metrics).0, 204);
    assert_eq!(vm.call("PUT", "/metrics", &metrics).0, 400);
    assert_eq!(
        vm.call("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#)
            .0,
        204
    );
    let flushed = std::fs::read_to_string(vm.path("m.json")).unwrap();
    assert!(flushed.contains("put_api_requests"), "{flushed}");
    // An interface on a tap that does not exist: the machine does not start, and says why.
    let boot = format!(r#"{{"kernel_image_path":"{kernel}"}}"#);
    assert_eq!(vm.call("PUT", "/boot-source", &boot).0, 204);
    let (status, answer) = vm.call("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    assert_eq!(status, 400);
    assert!(answer.contains("tap0"), "{answer}");
}

#[test]
fn pause_and_resume_through_patch_vm_leave_the_guest_result_unchanged() {
    if !kvm_available() {
        return;
    }
    let vm = Firecracker::start("pause", &[]);
    configure_rtc(&vm, 20000);
    assert_eq!(
        vm.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#)
            .0,
        204
    );
    let mut pauses = 0;
    for _ in 0..5 {
        let (status, answer) = vm.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
        if status != 204 {
            break; // the guest finished
        }
        pauses += 1;
        let (_, info) = vm.call("GET", "/", "");
        assert!(info.contains(r#""state":"Paused""#), "{info} {answer}");
        let (status, answer) = vm.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
        assert_eq!(status, 400, "{answer}");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(vm.call("PATCH", "/vm", r#"{"state": "Resumed"}"#).0, 204);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(pauses >= 1, "no pause landed while the guest ran");
    let (code, out, err) = vm.wait(LIMIT);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(rtc_fields(&out), (20000, 0));
}

#[test]
fn a_link_named_firecracker_is_firecracker_mode() {
    let dir = std::env::temp_dir().join(format!("hushvm-api-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("firecracker");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hushvm"), &link).unwrap();
    let output = Command::new(&link).arg("--version").output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(said.contains("Firecracker API"), "{said}");
    let output = Command::new(&link).arg("--no-api").output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert!(said.contains("--config-file"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_api_runs_and_prints_its_json() {
    if !kvm_available() {
        return;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_hushvm"))
        .args([
            "bench",
            "api",
            "--repeat",
            "1",
            "--iterations",
            "5",
            "--json",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["get_root"]["requests"], 5, "{text}");
    assert_eq!(report["put_machine_config"]["requests"], 5, "{text}");
    assert!(
        report["spawn_to_socket_accepting_ms"]["median"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        report["start_request_to_first_output_ms"]["median"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}
