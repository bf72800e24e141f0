//! The log of `--log-path` / `PUT /logger`. hushvm's warnings are written to standard
//! error from many places (rate-limited, `crate::ratelimit`), so a log path takes over
//! standard error itself: every warning lands in the log file. The API's own lines carry
//! Firecracker's prefix, `[instance-id:thread:LEVEL:origin]` as `show_level` and
//! `show_log_origin` ask.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use super::types::{LogLevel, Logger};
use super::ApiError;
use crate::sync::LockExt;

struct Settings {
    id: String,
    level: LogLevel,
    show_level: bool,
    show_origin: bool,
    configured: bool,
}

static SETTINGS: Mutex<Settings> = Mutex::new(Settings {
    id: String::new(),
    level: LogLevel::Info,
    show_level: false,
    show_origin: false,
    configured: false,
});

/// Names the instance in every line.
pub fn set_id(id: &str) {
    SETTINGS.locked().id = id.to_string();
}

/// Applies a logger configuration: once, as Firecracker allows.
pub fn configure(config: &Logger) -> Result<(), ApiError> {
    let mut settings = SETTINGS.locked();
    if settings.configured {
        return Err(ApiError::Invalid(
            "Reinitialization of logger not allowed.".into(),
        ));
    }
    if let Some(path) = &config.log_path {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| ApiError::File {
                what: "log",
                path: path.clone(),
                source,
            })?;
        // SAFETY: both descriptors are open (the file's for the call's duration); dup2
        // replaces fd 2 atomically, so a concurrent writer sees the old or the new file.
        if unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
            return Err(ApiError::File {
                what: "log",
                path: path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    settings.level = config.level.unwrap_or(settings.level);
    settings.show_level = config.show_level.unwrap_or(settings.show_level);
    settings.show_origin = config.show_log_origin.unwrap_or(settings.show_origin);
    settings.configured = true;
    Ok(())
}

/// Writes one line at `level` if the logger's level lets it through.
pub fn log(level: LogLevel, origin: &str, message: &str) {
    let settings = SETTINGS.locked();
    if level == LogLevel::Off || level > settings.level {
        return;
    }
    let thread = std::thread::current();
    let mut prefix = format!(
        "[{}:{}",
        if settings.id.is_empty() {
            "anonymous-instance"
        } else {
            &settings.id
        },
        thread.name().unwrap_or("main")
    );
    if settings.show_level {
        prefix.push_str(&format!(":{level:?}").to_uppercase());
    }
    if settings.show_origin {
        prefix.push(':');
        prefix.push_str(origin);
    }
    drop(settings);
    let _ = writeln!(std::io::stderr().lock(), "{prefix}] {message}");
}

pub fn info(message: &str) {
    log(LogLevel::Info, module_path!(), message);
}
