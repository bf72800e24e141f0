//! `--net tap=NAME[,mac=MAC][,queues=N][,rx_bw=B][,rx_ops=B][,tx_bw=B][,tx_ops=B]`,
//! repeatable: one virtio-net device per option. A bucket `B` is
//! `SIZE:REFILL_MS[:ONE_TIME_BURST]`, Firecracker's token bucket (bytes for `*_bw`,
//! frames for `*_ops`). Pure parsing and checks; no tap is opened here.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

/// The most queue pairs one device takes (virtio-net's MQ allows 0x8000; a tap 256).
pub const MAX_QUEUE_PAIRS: u16 = 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetConfigError {
    #[error("--net {0:?}: expected tap=NAME[,mac=MAC][,queues=N][,rx_bw=..][,rx_ops=..][,tx_bw=..][,tx_ops=..]")]
    Malformed(String),
    #[error("--net {option:?}: no tap=NAME")]
    NoTap { option: String },
    #[error("--net {option:?}: {key} given twice")]
    RepeatedKey { option: String, key: String },
    #[error("--net {option:?}: unknown key {key:?} (known: tap, mac, queues, rx_bw, rx_ops, tx_bw, tx_ops)")]
    UnknownKey { option: String, key: String },
    #[error("--net {option:?}: tap name {name:?} is not an interface name (1 to 15 bytes, no '/', ':', ',', '=' or whitespace)")]
    BadTapName { option: String, name: String },
    #[error(
        "--net {option:?}: malformed MAC {mac:?}: expected six hex bytes like 52:54:00:12:34:56"
    )]
    BadMac { option: String, mac: String },
    #[error("--net {option:?}: MAC {mac} is a multicast address; a device needs a unicast one (first byte even)")]
    MulticastMac { option: String, mac: MacAddr },
    #[error("--net {option:?}: queues={value:?}: expected 1 to {MAX_QUEUE_PAIRS} queue pairs")]
    BadQueues { option: String, value: String },
    #[error("--net {option:?}: {key}={value:?}: expected SIZE:REFILL_MS[:ONE_TIME_BURST], whole numbers, SIZE and REFILL_MS above 0")]
    BadBucket {
        option: String,
        key: String,
        value: String,
    },
    #[error("tap {0:?} is given to two --net devices")]
    DuplicateTap(String),
    #[error("MAC {0} is given to two --net devices")]
    DuplicateMac(MacAddr),
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The address hushvm gives device `index` when none is asked for: locally
    /// administered (QEMU's 52:54:00 prefix), unicast, distinct per device.
    pub fn default_for(index: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56u8.wrapping_add(index)])
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = ();

    /// Six bytes of two hex digits each, separated by ':' (or all by '-').
    fn from_str(text: &str) -> Result<Self, ()> {
        let separator = if text.contains('-') { '-' } else { ':' };
        let mut bytes = [0u8; 6];
        let mut parts = text.split(separator);
        for byte in &mut bytes {
            let part = parts.next().ok_or(())?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ())?;
        }
        if parts.next().is_some() {
            return Err(());
        }
        Ok(MacAddr(bytes))
    }
}

/// One `--net` device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    /// None: `MacAddr::default_for` the device's index.
    pub mac: Option<MacAddr>,
    /// Queue pairs (each an RX and a TX queue, and a queue of the tap).
    pub queue_pairs: u16,
    pub rx_limit: RateLimiterConfig,
    pub tx_limit: RateLimiterConfig,
}

impl FromStr for NetConfig {
    type Err = NetConfigError;

    fn from_str(option: &str) -> Result<Self, NetConfigError> {
        let mut config = NetConfig {
            tap: String::new(),
            mac: None,
            queue_pairs: 1,
            rx_limit: RateLimiterConfig::default(),
            tx_limit: RateLimiterConfig::default(),
        };
        let mut seen: Vec<&str> = Vec::new();
        for item in option.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| NetConfigError::Malformed(option.to_string()))?;
            if seen.contains(&key) {
                return Err(NetConfigError::RepeatedKey {
                    option: option.to_string(),
                    key: key.to_string(),
                });
            }
            seen.push(key);
            config.apply(option, key, value)?;
        }
        if config.tap.is_empty() {
            return Err(NetConfigError::NoTap {
                option: option.to_string(),
            });
        }
        Ok(config)
    }
}

impl NetConfig {
    fn apply(&mut self, option: &str, key: &str, value: &str) -> Result<(), NetConfigError> {
        let option_owned = || option.to_string();
        match key {
            "tap" => {
                if !is_interface_name(value) {
                    return Err(NetConfigError::BadTapName {
                        option: option_owned(),
                        name: value.to_string(),
                    });
                }
                self.tap = value.to_string();
            }
            "mac" => {
                let mac: MacAddr = value.parse().map_err(|()| NetConfigError::BadMac {
                    option: option_owned(),
                    mac: value.to_string(),
                })?;
                if mac.is_multicast() {
                    return Err(NetConfigError::MulticastMac {
                        option: option_owned(),
                        mac,
                    });
                }
                self.mac = Some(mac);
            }
            "queues" => {
                self.queue_pairs = value
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (1..=MAX_QUEUE_PAIRS).contains(n))
                    .ok_or_else(|| NetConfigError::BadQueues {
                        option: option_owned(),
                        value: value.to_string(),
                    })?;
            }
            "rx_bw" | "rx_ops" | "tx_bw" | "tx_ops" => {
                let bucket = parse_bucket(value).ok_or_else(|| NetConfigError::BadBucket {
                    option: option_owned(),
                    key: key.to_string(),
                    value: value.to_string(),
                })?;
                let limit = match &key[..2] {
                    "rx" => &mut self.rx_limit,
                    _ => &mut self.tx_limit,
                };
                match &key[3..] {
                    "bw" => limit.bandwidth = Some(bucket),
                    _ => limit.ops = Some(bucket),
                }
            }
            _ => {
                return Err(NetConfigError::UnknownKey {
                    option: option_owned(),
                    key: key.to_string(),
                })
            }
        }
        Ok(())
    }
}

/// `SIZE:REFILL_MS[:ONE_TIME_BURST]`.
fn parse_bucket(text: &str) -> Option<TokenBucketConfig> {
    let mut parts = text.split(':').map(|part| part.parse::<u64>().ok());
    let size = parts.next()??;
    let refill_time = parts.next()??;
    let one_time_burst = match parts.next() {
        None => None,
        Some(burst) => Some(burst?),
    };
    if parts.next().is_some() || size == 0 || refill_time == 0 {
        return None;
    }
    Some(TokenBucketConfig {
        size,
        one_time_burst,
        refill_time,
    })
}

/// What Linux takes as an interface name (dev_valid_name), less the characters the
/// option syntax uses.
fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| matches!(b, b'/' | b':' | b',' | b'=' | 0) || b.is_ascii_whitespace())
}

/// Every `--net` option in order, checked together: no tap or MAC used twice.
pub fn parse_net_options<S: AsRef<str>>(options: &[S]) -> Result<Vec<NetConfig>, NetConfigError> {
    let mut devices: Vec<NetConfig> = Vec::with_capacity(options.len());
    for option in options {
        let device: NetConfig = option.as_ref().parse()?;
        if devices.iter().any(|other| other.tap == device.tap) {
            return Err(NetConfigError::DuplicateTap(device.tap));
        }
        devices.push(device);
    }
    let macs: Vec<MacAddr> = devices
        .iter()
        .enumerate()
        .map(|(index, device)| {
            device
                .mac
                .unwrap_or_else(|| MacAddr::default_for(index as u8))
        })
        .collect();
    for (index, mac) in macs.iter().enumerate() {
        if macs[..index].contains(mac) {
            return Err(NetConfigError::DuplicateMac(*mac));
        }
    }
    Ok(devices)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
