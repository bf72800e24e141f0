//! Metrics as Firecracker writes them: one JSON object per line on each flush, to the file
//! of `--metrics-path` or `PUT /metrics`; its API request counters under its names, and
//! hushvm's own counters (userspace exits by kind, doorbells, interrupts and every
//! device's counters by id, KVM's statistics)
//! under `hushvm` once the run has them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::machine::RunReport;
use crate::sync::LockExt;

use super::types;
use super::ApiError;

/// Firecracker's period between two automatic flushes.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(60);

/// One API request counter group (`get_api_requests`, ...), by Firecracker's names.
#[derive(Default)]
struct Counters(Mutex<BTreeMap<String, u64>>);

impl Counters {
    fn add(&self, name: &str) {
        *self.0.locked().entry(name.to_string()).or_default() += 1;
    }

    fn json(&self) -> Value {
        let map: Map<String, Value> = self
            .0
            .locked()
            .iter()
            .map(|(name, count)| (name.clone(), json!(count)))
            .collect();
        Value::Object(map)
    }
}

/// Where metrics go, and what they count.
pub struct MetricsSink {
    id: String,
    file: Mutex<Option<(File, types::Metrics)>>,
    get: Counters,
    put: Counters,
    patch: Counters,
    /// Requests the server could not parse or route.
    bad_requests: AtomicU64,
    /// hushvm's counters from the run, once it ended.
    run: Mutex<Option<Value>>,
}

impl MetricsSink {
    pub fn new(id: String) -> Self {
        Self {
            id,
            file: Mutex::new(None),
            get: Counters::default(),
            put: Counters::default(),
            patch: Counters::default(),
            bad_requests: AtomicU64::new(0),
            run: Mutex::new(None),
        }
    }

    /// Opens (creates or appends to) the metrics file: once, as in Firecracker.
    pub fn open(&self, config: &types::Metrics) -> Result<(), ApiError> {
        let mut file = self.file.locked();
        if file.is_some() {
            return Err(ApiError::Invalid(
                "Reinitialization of metrics not allowed.".into(),
            ));
        }
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.metrics_path)
            .map_err(|source| ApiError::File {
                what: "metrics",
                path: config.metrics_path.clone(),
                source,
            })?;
        *file = Some((opened, config.clone()));
        Ok(())
    }

    /// Counts one request: `group` is get, put or patch; `name` Firecracker's counter.
    pub fn count(&self, method: &str, name: &str) {
        match method {
            "get" => self.get.add(name),
            "put" => self.put.add(name),
            "patch" => self.patch.add(name),
            _ => {
                self.bad_requests.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records the run's counters for the flushes after it.
    pub fn record_run(&self, report: &RunReport) {
        let mut exits: BTreeMap<String, u64> = BTreeMap::new();
        for (key, stats) in report.profile.entries() {
            let kind = serde_json::to_value(key.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            *exits.entry(kind).or_default() += stats.count;
        }
        let count = |kind: &str| exits.get(kind).copied().unwrap_or(0);
        let vcpu = json!({
            "exit_io_in": count("pio_in"),
            "exit_io_out": count("pio_out"),
            "exit_mmio_read": count("mmio_read"),
            "exit_mmio_write": count("mmio_write"),
            "failures": count("internal_error") + count("fail_entry") + count("unexpected"),
        });
        let interrupts: BTreeMap<&str, u64> = report
            .devices
            .iter()
            .map(|device| (device.id.as_str(), device.counter("interrupts")))
            .collect();
        let devices: BTreeMap<&str, BTreeMap<&str, u64>> = report
            .devices
            .iter()
            .map(|device| {
                (
                    device.id.as_str(),
                    device.counters.iter().copied().collect(),
                )
            })
            .collect();
        let hushvm = json!({
            "userspace_exits": exits,
            "userspace_exits_total": report.profile.total_exits(),
            "doorbells_served": report.virtio_notifications,
            "interrupts": interrupts,
            "devices": devices,
            "kvm": report.kvm_stats,
            "wall_ms": report.wall.as_millis() as u64,
        });
        *self.run.locked() = Some(json!({ "vcpu": vcpu, "hushvm": hushvm }));
    }

    /// The object one flush writes.
    pub fn snapshot(&self, emit_id: bool) -> Value {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut object = json!({
            "utc_timestamp_ms": timestamp,
            "api_server": {
                "bad_requests": self.bad_requests.load(Ordering::Relaxed),
            },
            "get_api_requests": self.get.json(),
            "put_api_requests": self.put.json(),
            "patch_api_requests": self.patch.json(),
        });
        if let (Some(Value::Object(run)), Some(map)) =
            (self.run.locked().clone(), object.as_object_mut())
        {
            map.extend(run);
        }
        if emit_id {
            object["id"] = json!(self.id);
        }
        object
    }

    /// Writes one line; `Ok(false)` when no metrics file is configured.
    pub fn flush(&self) -> Result<bool, ApiError> {
        let mut file = self.file.locked();
        let Some((file, config)) = file.as_mut() else {
            return Ok(false);
        };
        let mut object = self.snapshot(config.emit_id == Some(true));
        if let Some(properties) = &config.properties {
            object["properties"] = json!(properties);
        }
        let mut line = object.to_string();
        line.push('\n');
        file.write_all(line.as_bytes())
            .map_err(|source| ApiError::File {
                what: "metrics",
                path: config.metrics_path.clone(),
                source,
            })?;
        Ok(true)
    }
}
