use super::*;

fn parse(text: &str) -> Result<NetConfig, NetConfigError> {
    text.parse()
}

#[test]
fn a_tap_alone_gets_one_queue_pair_no_mac_and_no_limits() {
    let config = parse("tap=tap0").unwrap();
    assert_eq!(config.tap, "tap0");
    assert_eq!(config.mac, None);
    assert_eq!(config.queue_pairs, 1);
    assert_eq!(config.rx_limit, RateLimiterConfig::default());
    assert_eq!(config.tx_limit, RateLimiterConfig::default());
}

#[test]
fn every_key_is_read_in_any_order() {
    let config =
        parse("queues=4,mac=02:AB:cd:00:11:ff,tap=vm-net1,tx_bw=1000:100,rx_ops=50:10:200")
            .unwrap();
    assert_eq!(config.tap, "vm-net1");
    assert_eq!(
        config.mac,
        Some(MacAddr([0x02, 0xab, 0xcd, 0x00, 0x11, 0xff]))
    );
    assert_eq!(config.queue_pairs, 4);
    assert_eq!(
        config.tx_limit.bandwidth,
        Some(TokenBucketConfig {
            size: 1000,
            one_time_burst: None,
            refill_time: 100
        })
    );
    assert_eq!(config.tx_limit.ops, None);
    assert_eq!(
        config.rx_limit.ops,
        Some(TokenBucketConfig {
            size: 50,
            one_time_burst: Some(200),
            refill_time: 10
        })
    );
    assert_eq!(config.rx_limit.bandwidth, None);
}

#[test]
fn macs_parse_with_colons_or_dashes_and_print_with_colons() {
    let mac: MacAddr = "52-54-00-12-34-56".parse().unwrap();
    assert_eq!(mac.to_string(), "52:54:00:12:34:56");
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52:54:00:12:34:5",
        "52:54:00:12:34:567",
        "52:54:00:12:34:zz",
        "52:54-00:12:34:56",
        "+2:54:00:12:34:56",
        "52::54:00:12:34",
    ] {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn a_malformed_or_multicast_mac_is_a_clear_error() {
    let error = parse("tap=tap0,mac=52:54:00:12:34").unwrap_err();
    assert!(matches!(error, NetConfigError::BadMac { ref mac, .. } if mac == "52:54:00:12:34"));
    assert!(error.to_string().contains("malformed MAC"), "{error}");
    let error = parse("tap=tap0,mac=01:00:5e:00:00:01").unwrap_err();
    assert!(matches!(error, NetConfigError::MulticastMac { .. }));
    assert!(error.to_string().contains("multicast"), "{error}");
}

#[test]
fn queues_must_be_1_to_the_maximum() {
    for bad in ["0", "-1", "17", "x", "", "65536"] {
        let error = parse(&format!("tap=tap0,queues={bad}")).unwrap_err();
        assert!(
            matches!(error, NetConfigError::BadQueues { .. }),
            "{bad}: {error}"
        );
    }
    assert_eq!(parse("tap=t,queues=16").unwrap().queue_pairs, 16);
    assert!(parse("tap=t,queues=0")
        .unwrap_err()
        .to_string()
        .contains("1 to 16"));
}

#[test]
fn bad_tap_names_are_refused() {
    for bad in ["", "sixteen-bytes-xx", "a/b", "a:b", "a b", ".", ".."] {
        let error = parse(&format!("tap={bad}")).unwrap_err();
        assert!(
            matches!(error, NetConfigError::BadTapName { .. }),
            "{bad:?}: {error}"
        );
    }
    assert!(parse("tap=fifteen-bytes-x").is_ok());
}

#[test]
fn structure_errors_name_the_problem() {
    assert_eq!(parse("tap0"), Err(NetConfigError::Malformed("tap0".into())));
    assert_eq!(
        parse("mac=52:54:00:12:34:56"),
        Err(NetConfigError::NoTap {
            option: "mac=52:54:00:12:34:56".into()
        })
    );
    assert!(matches!(
        parse("tap=a,tap=b"),
        Err(NetConfigError::RepeatedKey { ref key, .. }) if key == "tap"
    ));
    assert!(matches!(
        parse("tap=a,vhost=on"),
        Err(NetConfigError::UnknownKey { ref key, .. }) if key == "vhost"
    ));
    assert!(matches!(parse("tap=a,"), Err(NetConfigError::Malformed(_))));
}

#[test]
fn buckets_need_size_and_refill_time_above_zero() {
    for bad in [
        "", "1", "0:10", "10:0", "10:x", "10:10:", "1:2:3:4", "-1:10",
    ] {
        let error = parse(&format!("tap=a,rx_bw={bad}")).unwrap_err();
        assert!(
            matches!(error, NetConfigError::BadBucket { .. }),
            "{bad:?}: {error}"
        );
    }
    assert!(parse("tap=a,tx_ops=1:1:0").is_ok());
}

#[test]
fn a_tap_given_twice_is_refused() {
    let error = parse_net_options(&["tap=tap0", "tap=tap1", "tap=tap0,queues=2"]).unwrap_err();
    assert_eq!(error, NetConfigError::DuplicateTap("tap0".into()));
    assert!(error.to_string().contains("two --net devices"));
}

#[test]
fn macs_must_differ_including_the_defaults() {
    let devices = parse_net_options(&["tap=a", "tap=b"]).unwrap();
    assert_eq!(devices.len(), 2);
    let error = parse_net_options(&["tap=a,mac=02:00:00:00:00:01", "tap=b,mac=02:00:00:00:00:01"])
        .unwrap_err();
    assert_eq!(
        error,
        NetConfigError::DuplicateMac(MacAddr([2, 0, 0, 0, 0, 1]))
    );
    // Device 1's default collides with device 0's explicit address.
    let default_1 = MacAddr::default_for(1).to_string();
    let error = parse_net_options(&[format!("tap=a,mac={default_1}"), "tap=b".into()]).unwrap_err();
    assert_eq!(error, NetConfigError::DuplicateMac(MacAddr::default_for(1)));
    assert!(parse_net_options::<&str>(&[]).unwrap().is_empty());
}

#[test]
fn default_macs_are_unicast_and_locally_administered() {
    for index in 0..=255u8 {
        let mac = MacAddr::default_for(index);
        assert!(!mac.is_multicast());
        assert_eq!(mac.0[0] & 2, 2);
    }
}
