//! Firecracker mode: `hushvm firecracker FLAGS`, or hushvm started under the name
//! `firecracker` (a symlink), takes Firecracker's start-up flags and serves its API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use hushvm::api::server::{self, DEFAULT_MAX_PAYLOAD};
use hushvm::api::types::{FullVmConfiguration, LogLevel, Logger, Metrics};
use hushvm::api::{logger, Instance, Resources, Starter};
use hushvm::machine::{self, MachineConfig};
use hushvm::seccomp::{Filters, SeccompAction};

/// Firecracker's flags (those a tool that starts `firecracker` passes).
#[derive(Parser, Debug)]
#[command(
    name = "firecracker",
    version = concat!(env!("CARGO_PKG_VERSION"), " (hushvm, Firecracker API)"),
    about = "hushvm with Firecracker's API and flags"
)]
pub struct FirecrackerArgs {
    /// The API's Unix socket.
    #[arg(long, value_name = "PATH", default_value = "/run/firecracker.socket")]
    api_sock: PathBuf,
    /// A JSON file in the format of `GET /vm/config`: the microVM starts from it at once.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// No API socket (needs --config-file).
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// The microVM's id (in log lines, `GET /` and metrics).
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Accepted; hushvm has no boot-timer device and says so in the log.
    #[arg(long)]
    boot_timer: bool,
    /// The log level: Off, Error, Warning, Info, Debug, Trace.
    #[arg(long)]
    level: Option<LogLevel>,
    /// Where the log (and hushvm's warnings) go.
    #[arg(long, value_name = "PATH")]
    log_path: Option<PathBuf>,
    /// Where each metrics flush writes its JSON line.
    #[arg(long, value_name = "PATH")]
    metrics_path: Option<PathBuf>,
    /// The level in each log line.
    #[arg(long)]
    show_level: bool,
    /// The origin (module) in each log line.
    #[arg(long)]
    show_log_origin: bool,
    /// The largest request body the API accepts, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_PAYLOAD)]
    http_api_max_payload_size: usize,
    /// No seccomp filters.
    #[arg(long)]
    no_seccomp: bool,
    /// Accepted and ignored (the jailer passes them).
    #[arg(long, hide = true)]
    start_time_us: Option<u64>,
    #[arg(long, hide = true)]
    start_time_cpu_us: Option<u64>,
    #[arg(long, hide = true)]
    parent_cpu_time_us: Option<u64>,
}

/// The flags after `firecracker`, from `hushvm firecracker ...` or a `firecracker` link.
pub fn args_if_firecracker() -> Option<Vec<std::ffi::OsString>> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let program = args.first().map(PathBuf::from);
    if program.and_then(|p| p.file_name().map(|n| n == "firecracker")) == Some(true) {
        return Some(args);
    }
    if args.get(1).is_some_and(|a| a == "firecracker") {
        args.remove(0);
        return Some(args);
    }
    None
}

fn read_config_file(path: &PathBuf) -> Result<FullVmConfiguration> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("--config-file {}", path.display()))
}

/// The instance the flags and the config file describe, its logger and metrics set.
fn instance(
    args: &FirecrackerArgs,
    file: Option<&FullVmConfiguration>,
) -> Result<(Instance, Starter)> {
    logger::set_id(&args.id);
    let flags_logger = Logger {
        log_path: args.log_path.as_ref().map(|p| p.display().to_string()),
        level: args.level,
        show_level: Some(args.show_level),
        show_log_origin: Some(args.show_log_origin),
        module: None,
    };
    // The flags' logger wins over the file's, as the flags come first in Firecracker.
    let logger_flags = args.log_path.is_some() || args.level.is_some();
    let file_logger = file
        .and_then(|f| f.logger.clone())
        .filter(|_| !logger_flags);
    let seccomp = match args.no_seccomp {
        true => SeccompAction::Off,
        false => SeccompAction::Kill,
    };
    let mut resources = Resources {
        seccomp,
        ..Resources::default()
    };
    if let Some(file) = file {
        resources
            .apply_file(file.clone())
            .context("--config-file")?;
    }
    let (instance, starter) = Instance::new(args.id.clone(), resources);
    match file_logger {
        Some(config) => instance
            .set_logger(config)
            .context("--config-file logger")?,
        None => logger::configure(&flags_logger)?,
    }
    let metrics = args.metrics_path.as_ref().map(|path| Metrics {
        metrics_path: path.display().to_string(),
        emit_id: None,
        properties: None,
    });
    if let Some(config) = metrics.or_else(|| file.and_then(|f| f.metrics.clone())) {
        instance.set_metrics(config).context("metrics")?;
    }
    Ok((instance, starter))
}

/// Runs the microVM the API or the config file describes; the process ends with it.
pub fn run(args: FirecrackerArgs) -> Result<ExitCode> {
    let file = args
        .config_file
        .as_ref()
        .map(read_config_file)
        .transpose()?;
    let (instance, starter) = instance(&args, file.as_ref())?;
    logger::info(&format!(
        "Running hushvm {} (Firecracker API)",
        env!("CARGO_PKG_VERSION")
    ));
    if args.boot_timer {
        logger::log(
            LogLevel::Warning,
            module_path!(),
            "--boot-timer: hushvm has no boot-timer device",
        );
    }
    let instance = Arc::new(instance);
    let seccomp = instance.resources(|r| r.seccomp);
    let filters = Arc::new(Filters::new(seccomp)?);
    machine::install_signal_handlers().context("cannot install the signal handlers")?;
    if !args.no_api {
        let bound = server::bind(&args.api_sock, args.http_api_max_payload_size)?;
        server::spawn(bound, instance.clone(), filters.clone())?;
    }
    server::spawn_metrics(instance.clone(), filters)?;
    let config = match file.is_some() {
        true => {
            instance.started_elsewhere();
            instance
                .resources(|r| r.machine_config())
                .context("--config-file")?
        }
        false => match starter.configs.recv() {
            Ok(config) => config,
            Err(_) => bail!("the API thread ended"),
        },
    };
    run_machine(&instance, &config, &starter)
}

/// Builds and runs the machine on this thread (which then filters itself).
fn run_machine(instance: &Instance, config: &MachineConfig, starter: &Starter) -> Result<ExitCode> {
    instance.control.filter_builder_thread();
    match machine::run_controlled(config, &instance.control) {
        Ok(report) => {
            instance.metrics.record_run(&report);
            let _ = instance.metrics.flush();
            logger::info(&format!("The microVM stopped: {:?}", report.stop));
            Ok(ExitCode::from((report.stop.exit_status() & 0xff) as u8))
        }
        Err(error) => {
            let _ = starter.failures.send(hushvm::errors::chain(&error));
            // The API thread answers InstanceStart with this error; its response is
            // written by the server loop, so give it that moment before the process ends.
            std::thread::sleep(Duration::from_millis(200));
            Err(error.into())
        }
    }
}
