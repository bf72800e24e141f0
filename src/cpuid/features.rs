//! The CPUID feature tables: where each feature's bits live (Intel SDM vol. 2A, CPUID;
//! KVM's `Documentation/virt/kvm/x86/cpuid.rst`), and what hiding a feature takes with
//! it. Data only; `super` walks it.

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One bit of one CPUID leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureBit {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u8,
}

/// A feature as `--cpu` names it (QEMU's spelling), and its bits.
#[derive(Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub bits: &'static [FeatureBit],
}

/// KVM's paravirtual feature leaf.
pub const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
/// The XSAVE leaf.
pub const XSAVE_LEAF: u32 = 0xd;

use Reg::{Eax, Ebx, Ecx, Edx};

const fn b(leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> FeatureBit {
    FeatureBit {
        leaf,
        subleaf,
        reg,
        bit,
    }
}

const fn f(name: &'static str, bits: &'static [FeatureBit]) -> Feature {
    Feature { name, bits }
}

/// Every feature `--cpu` knows. The first few are the ones an unknown-feature error lists.
pub const FEATURES: &[Feature] = &[
    f("x2apic", &[b(1, 0, Ecx, 21)]),
    f("tsc-deadline", &[b(1, 0, Ecx, 24)]),
    f("xsave", &[b(1, 0, Ecx, 26)]),
    f("avx", &[b(1, 0, Ecx, 28)]),
    f("avx2", &[b(7, 0, Ebx, 5)]),
    f("avx512f", &[b(7, 0, Ebx, 16)]),
    f(
        "kvmclock",
        &[
            b(KVM_FEATURES_LEAF, 0, Eax, 0),
            b(KVM_FEATURES_LEAF, 0, Eax, 3),
        ],
    ),
    f("pv-eoi", &[b(KVM_FEATURES_LEAF, 0, Eax, 6)]),
    // Leaf 1 ECX.
    f("pclmulqdq", &[b(1, 0, Ecx, 1)]),
    f("ssse3", &[b(1, 0, Ecx, 9)]),
    f("fma", &[b(1, 0, Ecx, 12)]),
    f("cx16", &[b(1, 0, Ecx, 13)]),
    f("pcid", &[b(1, 0, Ecx, 17)]),
    f("sse4.1", &[b(1, 0, Ecx, 19)]),
    f("sse4.2", &[b(1, 0, Ecx, 20)]),
    f("movbe", &[b(1, 0, Ecx, 22)]),
    f("popcnt", &[b(1, 0, Ecx, 23)]),
    f("aes", &[b(1, 0, Ecx, 25)]),
    f("osxsave", &[b(1, 0, Ecx, 27)]),
    f("f16c", &[b(1, 0, Ecx, 29)]),
    f("rdrand", &[b(1, 0, Ecx, 30)]),
    f("hypervisor", &[b(1, 0, Ecx, 31)]),
    // Leaf 7 subleaf 0 EBX.
    f("fsgsbase", &[b(7, 0, Ebx, 0)]),
    f("smep", &[b(7, 0, Ebx, 7)]),
    f("erms", &[b(7, 0, Ebx, 9)]),
    f("invpcid", &[b(7, 0, Ebx, 10)]),
    f("avx512dq", &[b(7, 0, Ebx, 17)]),
    f("rdseed", &[b(7, 0, Ebx, 18)]),
    f("smap", &[b(7, 0, Ebx, 20)]),
    f("avx512ifma", &[b(7, 0, Ebx, 21)]),
    f("avx512pf", &[b(7, 0, Ebx, 26)]),
    f("avx512er", &[b(7, 0, Ebx, 27)]),
    f("avx512cd", &[b(7, 0, Ebx, 28)]),
    f("avx512bw", &[b(7, 0, Ebx, 30)]),
    f("avx512vl", &[b(7, 0, Ebx, 31)]),
    // Leaf 7 subleaf 0 ECX.
    f("avx512vbmi", &[b(7, 0, Ecx, 1)]),
    f("avx512vbmi2", &[b(7, 0, Ecx, 6)]),
    f("vaes", &[b(7, 0, Ecx, 9)]),
    f("vpclmulqdq", &[b(7, 0, Ecx, 10)]),
    f("avx512vnni", &[b(7, 0, Ecx, 11)]),
    f("avx512bitalg", &[b(7, 0, Ecx, 12)]),
    f("avx512-vpopcntdq", &[b(7, 0, Ecx, 14)]),
    // Leaf 7 subleaf 0 EDX.
    f("avx512-4vnniw", &[b(7, 0, Edx, 2)]),
    f("avx512-4fmaps", &[b(7, 0, Edx, 3)]),
    f("avx512-vp2intersect", &[b(7, 0, Edx, 8)]),
    f("amx-bf16", &[b(7, 0, Edx, 22)]),
    f("avx512-fp16", &[b(7, 0, Edx, 23)]),
    f("amx-tile", &[b(7, 0, Edx, 24)]),
    f("amx-int8", &[b(7, 0, Edx, 25)]),
    // Leaf 7 subleaf 1 EAX.
    f("avx-vnni", &[b(7, 1, Eax, 4)]),
    f("avx512-bf16", &[b(7, 1, Eax, 5)]),
    f("amx-fp16", &[b(7, 1, Eax, 21)]),
    // Leaf 0xD subleaf 1 EAX.
    f("xsaveopt", &[b(XSAVE_LEAF, 1, Eax, 0)]),
    f("xsavec", &[b(XSAVE_LEAF, 1, Eax, 1)]),
    f("xgetbv1", &[b(XSAVE_LEAF, 1, Eax, 2)]),
    f("xsaves", &[b(XSAVE_LEAF, 1, Eax, 3)]),
    f("xfd", &[b(XSAVE_LEAF, 1, Eax, 4)]),
    // KVM's leaf 0x40000001 EAX.
    f("kvmclock-stable-bit", &[b(KVM_FEATURES_LEAF, 0, Eax, 24)]),
];

/// Other spellings QEMU accepts, and the name they stand for.
pub const ALIASES: &[(&str, &str)] = &[
    ("sse4-1", "sse4.1"),
    ("sse4-2", "sse4.2"),
    ("pclmuldq", "pclmulqdq"),
    ("avx512-vnni", "avx512vnni"),
    ("avx512-vbmi", "avx512vbmi"),
    ("avx512-vbmi2", "avx512vbmi2"),
];

/// What a hidden feature takes with it: each feature, and the features that need it (by
/// the SDM, and Linux's `arch/x86/kernel/cpu/cpuid-deps.c`). Applied transitively.
pub const DEPENDANTS: &[(&str, &[&str])] = &[
    (
        "xsave",
        &[
            "osxsave", "avx", "xsaveopt", "xsavec", "xgetbv1", "xsaves", "amx-tile",
        ],
    ),
    (
        "avx",
        &[
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "vaes",
            "vpclmulqdq",
            "avx-vnni",
        ],
    ),
    (
        "avx512f",
        &[
            "avx512dq",
            "avx512ifma",
            "avx512pf",
            "avx512er",
            "avx512cd",
            "avx512bw",
            "avx512vl",
            "avx512vbmi",
            "avx512vbmi2",
            "avx512vnni",
            "avx512bitalg",
            "avx512-vpopcntdq",
            "avx512-4vnniw",
            "avx512-4fmaps",
            "avx512-vp2intersect",
            "avx512-fp16",
            "avx512-bf16",
        ],
    ),
    // Linux enables AMX only with XFD, which needs XSAVES and XGETBV1.
    ("xsaves", &["xfd"]),
    ("xgetbv1", &["xfd"]),
    ("xfd", &["amx-tile"]),
    ("amx-tile", &["amx-bf16", "amx-int8", "amx-fp16"]),
    ("kvmclock", &["kvmclock-stable-bit"]),
];

/// Hiding a feature also drops the XSAVE state components that only it uses: their bits
/// in leaf 0xD subleaf 0 (XCR0's supported mask, which KVM enforces on XSETBV) and
/// their own subleaves. Hiding `xsave` zeroes the whole leaf instead.
pub const XSAVE_COMPONENTS: &[(&str, &[u32])] = &[
    // YMM_Hi128.
    ("avx", &[2]),
    // Opmask, ZMM_Hi256, Hi16_ZMM.
    ("avx512f", &[5, 6, 7]),
    // XTILECFG, XTILEDATA.
    ("amx-tile", &[17, 18]),
];

/// The feature called `name` (or an alias of it; `_` and `-` are the same).
pub fn lookup(name: &str) -> Option<&'static Feature> {
    let name = name.replace('_', "-");
    let name = ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name.as_str(), |(_, real)| real);
    FEATURES.iter().find(|feature| feature.name == name)
}

/// The features that need `name` directly.
pub fn dependants(name: &str) -> &'static [&'static str] {
    DEPENDANTS
        .iter()
        .find(|(feature, _)| *feature == name)
        .map_or(&[], |(_, dependants)| dependants)
}

/// The XSAVE state components only `name` uses.
pub fn xsave_components(name: &str) -> &'static [u32] {
    XSAVE_COMPONENTS
        .iter()
        .find(|(feature, _)| *feature == name)
        .map_or(&[], |(_, components)| components)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_names_known_features_and_no_name_twice() {
        for (i, feature) in FEATURES.iter().enumerate() {
            assert!(!feature.bits.is_empty(), "{}", feature.name);
            assert!(
                feature.bits.iter().all(|bit| bit.bit < 32),
                "{}",
                feature.name
            );
            assert!(
                FEATURES[i + 1..].iter().all(|f| f.name != feature.name),
                "{} twice",
                feature.name
            );
        }
        let named = DEPENDANTS
            .iter()
            .flat_map(|(name, dependants)| std::iter::once(name).chain(dependants.iter()))
            .chain(XSAVE_COMPONENTS.iter().map(|(name, _)| name))
            .chain(ALIASES.iter().map(|(_, name)| name));
        for name in named {
            assert!(lookup(name).is_some(), "{name}");
        }
    }
}
