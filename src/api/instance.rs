//! The microVM behind the API: its configuration before the start, then its control.
//!
//! The API thread configures [`Resources`] and, on InstanceStart, hands the
//! [`MachineConfig`] to the thread that builds and runs machines (the process's main
//! thread, [`Starter`]); it answers once the machine runs, or with the build's error.

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Mutex;

use crate::machine::{ControlError, MachineConfig, VmControl};
use crate::sync::LockExt;

use super::metrics::MetricsSink;
use super::resources::Resources;
use super::types::{self, FullVmConfiguration, InstanceInfo, VmState};
use super::{logger, ApiError};

/// Where the microVM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    NotStarted,
    /// InstanceStart was accepted; the machine is being built.
    Starting,
    Running,
}

struct Inner {
    resources: Resources,
    phase: Phase,
    logger: Option<types::Logger>,
    metrics: Option<types::Metrics>,
}

/// The main thread's side of InstanceStart: receives the machine to run and answers with
/// the build's error if it could not start.
pub struct Starter {
    pub configs: Receiver<MachineConfig>,
    pub failures: SyncSender<String>,
}

/// One microVM, shared by the API thread and the main thread.
pub struct Instance {
    pub id: String,
    pub control: VmControl,
    pub metrics: MetricsSink,
    inner: Mutex<Inner>,
    start: Mutex<Option<SyncSender<MachineConfig>>>,
    failures: Mutex<Receiver<String>>,
}

impl Instance {
    /// A microVM not started yet, and the main thread's end of its start.
    pub fn new(id: String, resources: Resources) -> (Self, Starter) {
        let (config_sender, configs) = std::sync::mpsc::sync_channel(1);
        let (failure_sender, failures) = std::sync::mpsc::sync_channel(1);
        let instance = Self {
            metrics: MetricsSink::new(id.clone()),
            id,
            control: VmControl::new(),
            inner: Mutex::new(Inner {
                resources,
                phase: Phase::NotStarted,
                logger: None,
                metrics: None,
            }),
            start: Mutex::new(Some(config_sender)),
            failures: Mutex::new(failures),
        };
        let starter = Starter {
            configs,
            failures: failure_sender,
        };
        (instance, starter)
    }

    pub fn phase(&self) -> Phase {
        let mut inner = self.inner.locked();
        // A machine the config file started runs without the API having waited for it.
        if inner.phase == Phase::Starting && self.control.is_running() {
            inner.phase = Phase::Running;
        }
        inner.phase
    }

    /// Runs `change` on the resources, refused once InstanceStart was accepted.
    pub fn configure<T>(
        &self,
        change: impl FnOnce(&mut Resources) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut inner = self.inner.locked();
        if inner.phase != Phase::NotStarted {
            return Err(ApiError::AfterStart);
        }
        change(&mut inner.resources)
    }

    /// Reads the resources, in any phase.
    pub fn resources<T>(&self, read: impl FnOnce(&Resources) -> T) -> T {
        read(&self.inner.locked().resources)
    }

    /// A call that needs a running microVM.
    pub fn require_running(&self) -> Result<(), ApiError> {
        match self.phase() {
            Phase::Running => Ok(()),
            _ => Err(ApiError::BeforeStart),
        }
    }

    /// InstanceStart: builds the machine (on the main thread) and returns once it runs.
    pub fn start(&self) -> Result<(), ApiError> {
        let config = {
            let mut inner = self.inner.locked();
            if inner.phase != Phase::NotStarted {
                return Err(ApiError::AfterStart);
            }
            let config = inner.resources.machine_config()?;
            inner.phase = Phase::Starting;
            config
        };
        let sender = self.start.locked().take().ok_or(ApiError::AfterStart)?;
        if sender.send(config).is_err() {
            return Err(ApiError::Start("the machine thread is gone".into()));
        }
        self.wait_running()
    }

    /// Waits for the machine handed to the main thread to run (also used when the
    /// config file started it).
    pub fn wait_running(&self) -> Result<(), ApiError> {
        if self.control.wait_started().is_ok() {
            self.inner.locked().phase = Phase::Running;
            logger::info("The microVM is running");
            return Ok(());
        }
        let failure = self.failures.locked().recv().unwrap_or_default();
        Err(ApiError::Start(failure))
    }

    /// The start went to the main thread without the API (`--config-file`).
    pub fn started_elsewhere(&self) -> Option<SyncSender<MachineConfig>> {
        let sender = self.start.locked().take()?;
        self.inner.locked().phase = Phase::Starting;
        Some(sender)
    }

    /// `PATCH /vm`.
    pub fn set_state(&self, state: VmState) -> Result<(), ApiError> {
        self.require_running()?;
        let result = match state {
            VmState::Paused => self.control.pause().map(|_| ()),
            VmState::Resumed => self.control.resume(),
        };
        result.map_err(|error| match error {
            ControlError::AlreadyPaused | ControlError::NotPaused => {
                ApiError::Invalid(error.to_string())
            }
            other => ApiError::Start(other.to_string()),
        })
    }

    pub fn info(&self) -> InstanceInfo {
        let state = match self.phase() {
            Phase::Running if self.control.is_paused() => "Paused",
            Phase::Running => "Running",
            Phase::NotStarted | Phase::Starting => "Not started",
        };
        InstanceInfo {
            app_name: "hushvm".to_string(),
            id: self.id.clone(),
            state: state.to_string(),
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// `PUT /logger`: once, before the start.
    pub fn set_logger(&self, config: types::Logger) -> Result<(), ApiError> {
        let mut inner = self.inner.locked();
        if inner.phase != Phase::NotStarted {
            return Err(ApiError::AfterStart);
        }
        logger::configure(&config)?;
        inner.logger = Some(config);
        Ok(())
    }

    /// `PUT /metrics`: once.
    pub fn set_metrics(&self, config: types::Metrics) -> Result<(), ApiError> {
        let mut inner = self.inner.locked();
        if inner.phase != Phase::NotStarted {
            return Err(ApiError::AfterStart);
        }
        self.metrics.open(&config)?;
        inner.metrics = Some(config);
        Ok(())
    }

    pub fn full_config(&self) -> FullVmConfiguration {
        let inner = self.inner.locked();
        FullVmConfiguration {
            logger: inner.logger.clone(),
            metrics: inner.metrics.clone(),
            ..inner.resources.full_config()
        }
    }
}
