//! Reading what the test /init (guests/linux-init, built into the initramfs by
//! scripts/make-initramfs.sh) printed on the console, and the traces it left on the
//! host: the block it wrote to each disk, the line it sent through the virtio-console.
//!
//! Its lines: `HUSHVM-INIT-OK boottime_ms=N`, `HUSHVM-MODULE <file> loaded|present|
//! errno=N ms=N [args=...]`, one `HUSHVM-CHECK <name> ok|fail <key=value ...>` per check, then
//! `HUSHVM-DONE checks=N failed=M end=poweroff|reboot|halt boottime_ms=N`. Each is
//! found anywhere in a console line, so a kernel message that lands in front of it (or a
//! `\r`) does not hide it.

use std::fmt;

/// One `HUSHVM-CHECK` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Everything after `ok`/`fail`: `key=value` words (and, for `serial`, `key:value`).
    pub detail: String,
}

impl Check {
    /// The value of `key=` in the detail (`Some("")` for `key=` with nothing after it).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.detail.split_whitespace().find_map(|word| {
            word.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
        })
    }

    /// The decimal value of `key=`.
    pub fn number(&self, key: &str) -> Option<u64> {
        self.field(key)?.parse().ok()
    }

    /// True if the detail has the word `word` (`uart:16550A`, `unknown-check`).
    pub fn has_word(&self, word: &str) -> bool {
        self.detail.split_whitespace().any(|w| w == word)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.ok { "ok" } else { "fail" };
        write!(f, "{} {verdict} {}", self.name, self.detail)
    }
}

/// One `HUSHVM-MODULE` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub file: String,
    /// `loaded`, `present` (built in or loaded before) or `errno=N`.
    pub result: String,
    pub ms: Option<u64>,
    /// The parameters /init passed it from the kernel command line (`MODULE.x=y`
    /// words), as `x=y ...`.
    pub args: Option<String>,
}

/// The closing `HUSHVM-DONE` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub checks: u32,
    pub failed: u32,
    pub end: String,
    pub boottime_ms: Option<u64>,
}

/// Everything the test /init printed, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// `HUSHVM-INIT-OK` was printed: /init ran. Its value: the kernel's CLOCK_BOOTTIME
    /// then (the kernel's own time to /init), when printed.
    pub init_ran: bool,
    pub init_boottime_ms: Option<u64>,
    pub modules: Vec<Module>,
    pub checks: Vec<Check>,
    pub done: Option<Done>,
}

/// The value of `key=` among `words`.
fn word_value<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words
        .iter()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// Reads the test /init's lines out of a console log.
pub fn parse(console: &str) -> InitReport {
    let mut report = InitReport::default();
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(at) = line.find("HUSHVM-CHECK ") {
            let mut parts = line[at + "HUSHVM-CHECK ".len()..].splitn(3, ' ');
            let (Some(name), Some(verdict)) = (parts.next(), parts.next()) else {
                continue;
            };
            if verdict != "ok" && verdict != "fail" {
                continue;
            }
            report.checks.push(Check {
                name: name.to_string(),
                ok: verdict == "ok",
                detail: parts.next().unwrap_or("").trim().to_string(),
            });
        } else if let Some(at) = line.find("HUSHVM-MODULE ") {
            let words: Vec<&str> = line[at..].split_whitespace().skip(1).collect();
            if let [file, result, ..] = words[..] {
                report.modules.push(Module {
                    file: file.to_string(),
                    result: result.to_string(),
                    ms: word_value(&words, "ms").and_then(|ms| ms.parse().ok()),
                    // Last on the line, and the only field that may hold spaces.
                    args: line[at..]
                        .split_once(" args=")
                        .map(|(_, args)| args.trim().to_string()),
                });
            }
        } else if let Some(at) = line.find("HUSHVM-DONE ") {
            let words: Vec<&str> = line[at..].split_whitespace().skip(1).collect();
            let number = |key| word_value(&words, key).and_then(|v| v.parse().ok());
            if let (Some(checks), Some(failed)) = (number("checks"), number("failed")) {
                report.done = Some(Done {
                    checks: checks as u32,
                    failed: failed as u32,
                    end: word_value(&words, "end").unwrap_or("").to_string(),
                    boottime_ms: number("boottime_ms"),
                });
            }
        } else if let Some(at) = line.find("HUSHVM-INIT-OK") {
            report.init_ran = true;
            let words: Vec<&str> = line[at..].split_whitespace().collect();
            report.init_boottime_ms =
                word_value(&words, "boottime_ms").and_then(|ms| ms.parse().ok());
        }
    }
    report
}

impl InitReport {
    /// The first check called `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|check| check.name == name)
    }

    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|check| !check.ok).collect()
    }

    /// Every check in `names` was printed and passed, no check failed, every module
    /// loaded, and /init got to its end with `end`; otherwise a message that says what
    /// is wrong (with `context`, e.g. the console's tail).
    pub fn assert_passed(&self, names: &[&str], end: &str, context: &str) {
        if let Err(problem) = self.verify(names, end) {
            panic!("the test /init: {problem}\n{context}");
        }
    }

    /// What [`assert_passed`](Self::assert_passed) checks, as a result.
    pub fn verify(&self, names: &[&str], end: &str) -> Result<(), String> {
        if !self.init_ran {
            return Err("/init never ran (no HUSHVM-INIT-OK)".into());
        }
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| self.check(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(format!("no line for check(s) {missing:?}"));
        }
        let failures = self.failures();
        if !failures.is_empty() {
            let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
            return Err(format!("failed:\n  {}", lines.join("\n  ")));
        }
        if let Some(module) = self.modules.iter().find(|m| m.result.starts_with("errno=")) {
            return Err(format!(
                "module {} did not load: {}",
                module.file, module.result
            ));
        }
        let done = self
            .done
            .as_ref()
            .ok_or("/init did not finish (no HUSHVM-DONE)")?;
        if done.failed != 0 || done.checks as usize != self.checks.len() {
            return Err(format!(
                "HUSHVM-DONE says {} checks, {} failed; {} check lines were read",
                done.checks,
                done.failed,
                self.checks.len()
            ));
        }
        if done.end != end {
            return Err(format!("/init ended with {:?}, not {end:?}", done.end));
        }
        Ok(())
    }
}

/// The 4 KiB block the test /init writes to disk `disk` (vda, ...) for stamp `stamp`:
/// `HUSHVM-WRITE <disk> <stamp as 16 hex digits>\n`, then byte i is the stamp's byte
/// (i mod 8) xor (i * 37), as guests/linux-init/blk.c's fill_pattern makes it.
pub fn written_block(disk: &str, stamp: u64) -> Vec<u8> {
    let mut block: Vec<u8> = (0..4096u32)
        .map(|i| ((stamp >> ((i & 7) * 8)) as u8) ^ (i.wrapping_mul(37) as u8))
        .collect();
    let header = format!("HUSHVM-WRITE {disk} {stamp:016x}\n");
    block[..header.len()].copy_from_slice(header.as_bytes());
    block
}

/// The disk image `image` holds, at the offset a `blk.<disk>` check wrote, the block it
/// wrote: Linux's write and flush reached the host's file.
pub fn verify_disk_write(image: &[u8], check: &Check) -> Result<(), String> {
    let disk = check
        .name
        .strip_prefix("blk.")
        .ok_or_else(|| format!("{} is not a disk's check", check.name))?;
    let offset = check
        .number("wrote")
        .ok_or_else(|| format!("{check}: no wrote=OFFSET"))? as usize;
    let stamp = check
        .field("stamp")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| format!("{check}: no stamp=HEX"))?;
    let found = image.get(offset..offset + 4096).ok_or_else(|| {
        format!(
            "the image ({} bytes) ends before {offset} + 4096",
            image.len()
        )
    })?;
    if found != written_block(disk, stamp) {
        let start = String::from_utf8_lossy(&found[..40]);
        return Err(format!(
            "{disk}: the block at {offset} is not the one written ({start:?}...)"
        ));
    }
    Ok(())
}

/// The virtio-console's output (`--virtio-console file:PATH`) carries the line the
/// `console` check sent: `HUSHVM-VIRTIO-CONSOLE <stamp>`.
pub fn verify_console_line(output: &str, check: &Check) -> Result<(), String> {
    let stamp = check
        .field("sent")
        .ok_or_else(|| format!("{check}: no sent=STAMP"))?;
    let wanted = format!("HUSHVM-VIRTIO-CONSOLE {stamp}");
    if output
        .lines()
        .any(|line| line.trim_end_matches('\r') == wanted)
    {
        Ok(())
    } else {
        Err(format!(
            "the virtio-console's output has no line {wanted:?}: {output:?}"
        ))
    }
}
