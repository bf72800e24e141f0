use super::*;

use virtio_bindings::virtio_net::{VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MAC};

fn features(bits: &[u32]) -> u64 {
    bits.iter().fold(0, |all, bit| all | 1u64 << bit)
}

#[test]
fn offloads_follow_the_guest_features_and_need_guest_csum() {
    assert_eq!(offload_flags(0), 0);
    // Segments the guest did not say it checksums are never handed to it.
    assert_eq!(
        offload_flags(features(&[VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_UFO])),
        0
    );
    assert_eq!(
        offload_flags(features(&[VIRTIO_NET_F_GUEST_CSUM])),
        libc::TUN_F_CSUM
    );
    let all = features(&[
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_GUEST_UFO,
    ]);
    assert_eq!(
        offload_flags(all),
        libc::TUN_F_CSUM
            | libc::TUN_F_TSO4
            | libc::TUN_F_TSO6
            | libc::TUN_F_TSO_ECN
            | libc::TUN_F_UFO
    );
    // Host-side features are about the other direction: no tap offload.
    assert_eq!(
        offload_flags(features(&[
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_MAC
        ])),
        libc::TUN_F_CSUM
    );
}

#[test]
fn interface_names_are_checked_before_anything_is_opened() {
    for bad in [
        "",
        "sixteen-bytes-xx",
        "a/b",
        "a:b",
        "a b",
        "a\0b",
        ".",
        "..",
    ] {
        assert!(
            matches!(Tap::open(bad, 1), Err(TapError::BadName(_))),
            "{bad:?} accepted"
        );
    }
    let name = interface_name("tap0").unwrap();
    assert_eq!(
        &name[..5],
        &[b't' as libc::c_char, b'a' as _, b'p' as _, b'0' as _, 0]
    );
}

#[test]
fn a_missing_tap_is_a_clear_error_not_a_new_interface() {
    let error = Tap::open("hushvm-nosuch0", 1).unwrap_err();
    assert!(matches!(error, TapError::NoSuchInterface(_)), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("hushvm-nosuch0") && text.contains("ip tuntap add"),
        "{text}"
    );
    assert!(!interface_exists("hushvm-nosuch0"));
}

#[test]
fn queue_counts_outside_1_to_256_are_refused() {
    assert!(matches!(
        Tap::open("lo", 0),
        Err(TapError::QueueCount { count: 0, .. })
    ));
    assert!(matches!(
        Tap::open("lo", 257),
        Err(TapError::QueueCount { count: 257, .. })
    ));
}

#[test]
fn attach_hints_say_what_to_do() {
    let hint = |errno, multi| attach_hint(&io::Error::from_raw_os_error(errno), multi);
    assert!(hint(libc::EPERM, false).contains("root"));
    assert!(hint(libc::EBUSY, false).contains("another process"));
    assert!(hint(libc::EINVAL, true).contains("multi_queue"));
    assert!(hint(libc::EINVAL, false).contains("tun"));
}
