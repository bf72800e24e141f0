//! The header's optional device list: the virtio devices of a machine that the
//! version-1 flags cannot describe (several disks, devices on different transports).
//! It follows the fixed description inside `header_len`, so a reader that does not know
//! it skips it, and a trace without it means what the flags say.
//!
//! ```text
//! count:u8, then per device: kind:u8 (0 block, 1 entropy, 2 console) pci:u8
//!                            disk_bytes:u64 id_len:u8 id[id_len] (UTF-8)
//! ```

/// What a traced virtio device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracedKind {
    Block,
    Rng,
    Console,
}

/// One virtio device of a traced machine, in the order the machine planned them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedVirtio {
    pub id: String,
    pub kind: TracedKind,
    /// On virtio-pci rather than virtio-mmio.
    pub pci: bool,
    /// A disk's size (0 for other kinds).
    pub disk_bytes: u64,
}

/// The list's bytes; none for an empty list (the flags describe the machine).
pub fn encode(devices: &[TracedVirtio]) -> Vec<u8> {
    if devices.is_empty() {
        return Vec::new();
    }
    let mut out = vec![devices.len().min(usize::from(u8::MAX)) as u8];
    for device in devices.iter().take(usize::from(u8::MAX)) {
        let kind = match device.kind {
            TracedKind::Block => 0,
            TracedKind::Rng => 1,
            TracedKind::Console => 2,
        };
        out.extend([kind, u8::from(device.pci)]);
        out.extend(device.disk_bytes.to_le_bytes());
        let id = &device.id.as_bytes()[..device.id.len().min(usize::from(u8::MAX))];
        out.push(id.len() as u8);
        out.extend(id);
    }
    out
}

/// The list in `bytes` (the header past the fixed description); None if it is not one.
pub fn decode(bytes: &[u8]) -> Option<Vec<TracedVirtio>> {
    let Some((&count, mut rest)) = bytes.split_first() else {
        return Some(Vec::new());
    };
    let mut devices = Vec::new();
    for _ in 0..count {
        let (fixed, tail) = rest.split_at_checked(11)?;
        let kind = match fixed[0] {
            0 => TracedKind::Block,
            1 => TracedKind::Rng,
            2 => TracedKind::Console,
            _ => return None,
        };
        let pci = match fixed[1] {
            0 => false,
            1 => true,
            _ => return None,
        };
        let disk_bytes = u64::from_le_bytes(fixed[2..10].try_into().ok()?);
        let (id, tail) = tail.split_at_checked(usize::from(fixed[10]))?;
        devices.push(TracedVirtio {
            id: String::from_utf8(id.to_vec()).ok()?,
            kind,
            pci,
            disk_bytes,
        });
        rest = tail;
    }
    Some(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_survives_the_round_trip_and_garbage_is_refused() {
        let devices = vec![
            TracedVirtio {
                id: "root".into(),
                kind: TracedKind::Block,
                pci: true,
                disk_bytes: 4096,
            },
            TracedVirtio {
                id: "rng0".into(),
                kind: TracedKind::Rng,
                pci: false,
                disk_bytes: 0,
            },
        ];
        let bytes = encode(&devices);
        assert_eq!(decode(&bytes), Some(devices));
        assert!(encode(&[]).is_empty());
        assert_eq!(decode(&[]), Some(Vec::new()));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None, "truncated");
        let mut bad_kind = bytes.clone();
        bad_kind[1] = 9;
        assert_eq!(decode(&bad_kind), None);
    }
}
