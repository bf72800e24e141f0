use super::*;

const ALL: u32 = u32::MAX;

fn entry(function: u32, index: u32, regs: [u32; 4]) -> CpuidEntry {
    let flags = match function {
        4 | 7 | 0xb | 0xd | 0x1f => CPUID_FLAG_SIGNIFICANT_INDEX,
        _ => 0,
    };
    let [eax, ebx, ecx, edx] = regs;
    CpuidEntry {
        function,
        index,
        flags,
        eax,
        ebx,
        ecx,
        edx,
    }
}

/// A host with every feature bit set (x2APIC off, to test `+x2apic`), four cache
/// levels, two topology levels, and the AVX and AVX-512 XSAVE components.
fn host() -> Vec<CpuidEntry> {
    vec![
        entry(0, 0, [0x1f, 0, 0, 0]),
        entry(1, 0, [0x806f8, 0x0040_0800, ALL & !(1 << 21), ALL]),
        entry(4, 0, [0x0400_4121, 0, 0, 0]),
        entry(4, 1, [0x0400_4122, 0, 0, 0]),
        entry(4, 2, [0x0400_4143, 0, 0, 0]),
        entry(4, 3, [0x0407_c163, 0, 0, 0]),
        entry(4, 4, [0, 0, 0, 0]),
        entry(7, 0, [1, ALL, ALL, ALL]),
        entry(7, 1, [ALL, 0, 0, 0]),
        entry(0xb, 0, [1, 2, 0x100, 9]),
        entry(0xb, 1, [7, 64, 0x201, 9]),
        entry(0xb, 2, [0, 0, 2, 9]),
        entry(0xd, 0, [0x6_00e7, 0xa88, 0x2b00, 0]),
        entry(0xd, 1, [0x1f, 0, 0, 0]),
        entry(0xd, 2, [0x100, 0x240, 0, 0]),
        entry(0xd, 5, [0x40, 0x440, 0, 0]),
        entry(0xd, 17, [0x40, 0xac0, 0, 0]),
        entry(0x4000_0001, 0, [0x0100_7efb, 0, 0, 0]),
    ]
}

fn find(entries: &[CpuidEntry], function: u32, index: u32) -> CpuidEntry {
    *entries
        .iter()
        .find(|e| e.function == function && e.index == index)
        .unwrap()
}

fn applied(model: &str) -> Result<Vec<CpuidEntry>, CpuidError> {
    let mut entries = host();
    model.parse::<CpuModel>()?.apply(&mut entries)?;
    Ok(entries)
}

#[test]
fn unknown_feature_is_named_with_known_ones() {
    let err = "host,+avx3".parse::<CpuModel>().unwrap_err();
    assert_eq!(
        err,
        CpuidError::UnknownFeature {
            name: "avx3".into()
        }
    );
    let text = err.to_string();
    assert!(text.contains("`avx3`"), "{text}");
    assert!(text.contains("x2apic") && text.contains("xsave"), "{text}");
}

#[test]
fn models_and_items_that_do_not_parse() {
    for model in ["", "max", "Host", "qemu64,+avx"] {
        assert!(
            matches!(
                model.parse::<CpuModel>(),
                Err(CpuidError::UnknownModel { .. })
            ),
            "{model}"
        );
    }
    for item in ["+", "-", "avx=yes", "=on", "+avx=on", " -avx", ""] {
        assert_eq!(
            format!("host,{item}").parse::<CpuModel>(),
            Err(CpuidError::Malformed { item: item.into() }),
            "{item:?}"
        );
    }
    assert_eq!("host".parse::<CpuModel>(), Ok(CpuModel::host()));
}

#[test]
fn hiding_xsave_hides_its_dependants_and_zeroes_leaf_0xd() {
    let entries = applied("host,-xsave").unwrap();
    let leaf1 = find(&entries, 1, 0);
    for bit in [12, 26, 27, 28, 29] {
        assert_eq!(leaf1.ecx >> bit & 1, 0, "leaf 1 ECX bit {bit}");
    }
    assert_eq!(leaf1.ecx | (0b1111 << 26) | 1 << 12 | 1 << 21, ALL);
    let leaf7 = find(&entries, 7, 0);
    let avx512_ebx = 1 << 16 | 1 << 17 | 1 << 21 | 0x7 << 26 | 0b11 << 30;
    assert_eq!(leaf7.ebx, ALL & !(avx512_ebx | 1 << 5));
    assert_eq!(
        leaf7.ecx & (1 << 1 | 1 << 6 | 1 << 11 | 1 << 12 | 1 << 14),
        0
    );
    let amx = 1 << 22 | 1 << 24 | 1 << 25;
    assert_eq!(leaf7.edx & (1 << 2 | 1 << 3 | 1 << 8 | 1 << 23 | amx), 0);
    assert_eq!(find(&entries, 7, 1).eax & (1 << 4 | 1 << 5 | 1 << 21), 0);
    for entry in entries.iter().filter(|e| e.function == 0xd) {
        assert_eq!((entry.eax, entry.ebx, entry.ecx, entry.edx), (0, 0, 0, 0));
    }
    assert_eq!(find(&entries, 0xb, 1), find(&host(), 0xb, 1), "untouched");
}

#[test]
fn hiding_avx_hides_avx2_fma_f16c_avx512_and_their_state() {
    let entries = applied("host,-avx").unwrap();
    let leaf1 = find(&entries, 1, 0);
    assert_eq!(leaf1.ecx & (1 << 12 | 1 << 28 | 1 << 29), 0);
    assert_ne!(leaf1.ecx & 1 << 26, 0, "xsave stays");
    let leaf7 = find(&entries, 7, 0);
    assert_eq!(leaf7.ebx & (1 << 5 | 1 << 16 | 1 << 31), 0);
    assert_ne!(leaf7.edx & 1 << 24, 0, "amx-tile needs XSAVE, not AVX");
    assert_eq!(find(&entries, 0xd, 0).eax, 0x6_0003, "x87, SSE, AMX remain");
    assert_eq!(find(&entries, 0xd, 2).ebx, 0);
    assert_eq!(find(&entries, 0xd, 1).eax, 0x1f);
}

#[test]
fn hiding_cx16_clears_only_that_bit() {
    let entries = applied("host,-cx16").unwrap();
    let mut expected = host();
    expected[1].ecx &= !(1 << 13);
    assert_eq!(entries, expected);
}

#[test]
fn showing_a_feature_the_host_lacks_is_an_error_and_edits_nothing() {
    let mut entries = host();
    let model: CpuModel = "host,-avx,+x2apic".parse().unwrap();
    assert_eq!(
        model.apply(&mut entries),
        Err(CpuidError::Unsupported { feature: "x2apic" })
    );
    assert_eq!(entries, host());
    assert_eq!(applied("host,+avx2,x2apic=off").unwrap(), {
        let mut expected = host();
        expected[1].ecx &= !(1 << 21);
        expected
    });
}

#[test]
fn showing_a_feature_that_a_minus_hides_is_a_conflict() {
    assert_eq!(
        applied("host,-xsave,+avx2"),
        Err(CpuidError::Conflict {
            feature: "avx2",
            hidden_by: "xsave"
        })
    );
    assert!(
        applied("host,-avx,avx=on,+avx2").is_ok(),
        "the last setting wins"
    );
}

#[test]
fn feature_off_spelling_and_aliases_match_the_minus_form() {
    assert_eq!(applied("host,cx16=off"), applied("host,-cx16"));
    assert_eq!(applied("host,sse4_2=off"), applied("host,-sse4.2"));
    assert_eq!(applied("host,sse4-1=off"), applied("host,-sse4.1"));
    assert_eq!(
        applied("host,tsc_deadline=off"),
        applied("host,-tsc-deadline")
    );
    assert_eq!(applied("host,avx2=on"), Ok(host()));
}

#[test]
fn hiding_kvmclock_clears_both_clocksource_bits_and_the_stable_bit() {
    let entries = applied("host,-kvmclock").unwrap();
    assert_eq!(find(&entries, 0x4000_0001, 0).eax, 0x7efb & !(1 | 1 << 3));
}

#[test]
fn topology_of_each_of_four_cpus() {
    for apic_id in 0..4u8 {
        let mut entries = host();
        set_topology(&mut entries, apic_id, 4);
        let id = u32::from(apic_id);
        let leaf1 = find(&entries, 1, 0);
        assert_eq!(leaf1.ebx, id << 24 | 4 << 16 | 0x0800);
        assert_ne!(leaf1.edx & 1 << 28, 0);
        let smt = find(&entries, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, id));
        let core = find(&entries, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, id));
        let end = find(&entries, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 2, id));
        let caches: Vec<_> = (0..5).map(|i| find(&entries, 4, i).eax).collect();
        assert_eq!(
            caches,
            [0x0c00_0121, 0x0c00_0122, 0x0c00_0143, 0x0c00_c163, 0]
        );
    }
}

#[test]
fn topology_of_one_and_of_odd_counts() {
    let mut entries = host();
    set_topology(&mut entries, 0, 1);
    let leaf1 = find(&entries, 1, 0);
    assert_eq!((leaf1.ebx, leaf1.edx & 1 << 28), (0x0800, 0));
    assert_eq!(find(&entries, 0xb, 1).eax, 0);
    assert_eq!(find(&entries, 4, 3).eax >> 26, 0);
    set_topology(&mut entries, 2, 3);
    assert_eq!(find(&entries, 1, 0).ebx >> 16, 0x0204, "4 addressable IDs");
    assert_eq!(find(&entries, 0xb, 1).ebx, 3);
    set_topology(&mut entries, 254, 255);
    assert_eq!(find(&entries, 1, 0).ebx >> 16, 0xfeff);
    assert_eq!(find(&entries, 0xb, 1).eax, 8);
    assert_eq!(find(&entries, 4, 0).eax >> 26, 0x3f);
}

#[test]
fn pv_eoi_bit_is_cleared_only_when_disabled() {
    let mut entries = host();
    set_pv_eoi(&mut entries, true);
    assert_eq!(entries, host());
    set_pv_eoi(&mut entries, false);
    assert_eq!(find(&entries, 0x4000_0001, 0).eax, 0x0100_7efb & !(1 << 6));
    assert_eq!(applied("host,-pv-eoi").unwrap(), entries);
}

#[test]
fn vmm_features_add_hypervisor_and_tsc_deadline_for_a_model_to_take_away() {
    let mut entries = host();
    entries[1].ecx &= !(1 << 24 | 1 << 31);
    let bare = entries.clone();
    add_vmm_features(&mut entries, false);
    assert_eq!(find(&entries, 1, 0).ecx, bare[1].ecx | 1 << 31);
    add_vmm_features(&mut entries, true);
    assert_eq!(find(&entries, 1, 0).ecx, bare[1].ecx | 1 << 24 | 1 << 31);
    let model: CpuModel = "host,-tsc-deadline,+hypervisor".parse().unwrap();
    model.apply(&mut entries).unwrap();
    assert_eq!(find(&entries, 1, 0).ecx, bare[1].ecx | 1 << 31);
    let mut bare_entries = bare.clone();
    assert_eq!(
        "host,+tsc-deadline"
            .parse::<CpuModel>()
            .unwrap()
            .apply(&mut bare_entries),
        Err(CpuidError::Unsupported {
            feature: "tsc-deadline"
        })
    );
}
