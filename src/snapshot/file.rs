//! The VM state file: a fixed header (magic, format version, payload length, CRC-64 of
//! the payload), then the payload as JSON.
//!
//! JSON because every device's saved state already is JSON (`devices::persist`), it
//! needs no new serializer, and a state file can be read with `jq` when a restore goes
//! wrong; the state is tens of kilobytes, so its size and parse time do not matter next
//! to guest memory, which is never in this file. The header is fixed for every version:
//! a file of another version is refused naming both, before its payload is looked at.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crc::{Crc, CRC_64_ECMA_182};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::SnapshotError;

/// The first bytes of every hushvm state file.
pub const MAGIC: [u8; 8] = *b"HUSHSNAP";
/// The version of the payload's shape and meaning this hushvm writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Magic, version (u32), payload length (u64), CRC-64 (u64), little-endian.
pub const HEADER_LEN: usize = 8 + 4 + 8 + 8;

const CHECKSUM: Crc<u64> = Crc::<u64>::new(&CRC_64_ECMA_182);

/// Writes `state` to `path`: into a temporary file beside it, renamed over `path` once
/// complete, so a failed write leaves any earlier file as it was.
pub fn write<T: Serialize>(path: &Path, state: &T) -> Result<u64, SnapshotError> {
    let payload = serde_json::to_vec(state).map_err(SnapshotError::Encode)?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&CHECKSUM.checksum(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let temporary = temporary_beside(path);
    let result = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&temporary);
        SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(bytes.len() as u64)
}

fn temporary_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    path.with_file_name(name)
}

/// Reads a state file that [`write`] wrote, checking its magic, version, length and
/// checksum before its payload is parsed.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, SnapshotError> {
    let io_error = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(io_error)?;
    let payload = check(path, &bytes)?;
    serde_json::from_slice(payload).map_err(|source| SnapshotError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// The payload of a state file's `bytes`, once the header vouches for it.
fn check<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], SnapshotError> {
    let path = path.to_path_buf();
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotAStateFile(path));
    }
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(SnapshotError::Truncated {
            path,
            found: bytes.len() as u64,
            expected: HEADER_LEN as u64,
        });
    };
    let field = |range: std::ops::Range<usize>| {
        let mut word = [0u8; 8];
        word[..range.len()].copy_from_slice(&header[range]);
        u64::from_le_bytes(word)
    };
    let version = field(8..12) as u32;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path,
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let (length, checksum) = (field(12..20), field(20..28));
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != length {
        return Err(SnapshotError::Truncated {
            path,
            found: bytes.len() as u64,
            expected: (HEADER_LEN as u64).saturating_add(length),
        });
    }
    let computed = CHECKSUM.checksum(payload);
    if computed != checksum {
        return Err(SnapshotError::Checksum {
            path,
            found: computed,
            expected: checksum,
        });
    }
    Ok(payload)
}

/// The state file's path in a snapshot directory.
pub fn file_in(dir: &Path) -> PathBuf {
    dir.join("vmstate")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hushvm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_state_reads_back_as_written() {
        let dir = temp_dir("state-file");
        let path = dir.join("vmstate");
        let state = vec![1u64, u64::MAX, 3];
        let bytes = write(&path, &state).unwrap();
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(read::<Vec<u64>>(&path).unwrap(), state);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn error_of(bytes: &[u8]) -> String {
        check(Path::new("s"), bytes).unwrap_err().to_string()
    }

    #[test]
    fn bad_state_files_get_one_clear_error_each() {
        let dir = temp_dir("state-file-bad");
        let path = dir.join("vmstate");
        write(&path, &vec![7u32; 100]).unwrap();
        let good = std::fs::read(&path).unwrap();
        assert!(check(&path, &good).is_ok());

        let error = error_of(&good[..good.len() - 1]);
        assert!(error.contains("truncated"), "{error}");
        let error = error_of(&good[..10]);
        assert!(error.contains("truncated"), "{error}");

        let mut corrupt = good.clone();
        corrupt[HEADER_LEN + 5] ^= 1;
        let error = error_of(&corrupt);
        assert!(error.contains("checksum"), "{error}");

        let mut other = good.clone();
        other[8..12].copy_from_slice(&7u32.to_le_bytes());
        let error = error_of(&other);
        assert!(
            error.contains("version 7") && error.contains("version 1"),
            "{error}"
        );

        let error = error_of(b"{\"not\": \"a state file\"}");
        assert!(error.contains("not a hushvm state file"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_write_leaves_the_earlier_file_as_it_was() {
        let dir = temp_dir("state-file-keep");
        let path = dir.join("vmstate");
        write(&path, &1u8).unwrap();
        let before = std::fs::read(&path).unwrap();
        // serde_json refuses a map with non-string keys: the write fails while encoding.
        let bad = std::collections::BTreeMap::from([(vec![1u8], 1u8)]);
        assert!(write(&path, &bad).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn io_errors_name_the_file() {
        let error = read::<u8>(Path::new("/nonexistent/vmstate"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/vmstate"), "{error}");
    }
}
