//! CPUID editing, with `--cpu` spelled as QEMU spells `-cpu`, and no KVM types: `kvm/`
//! converts [`CpuidEntry`] to and from `kvm_cpuid_entry2`.
//!
//! The guest starts from what KVM supports on this host (`host`); `-feature` hides a
//! feature and everything that needs it, so a guest never sees, say, AVX2 without AVX.
//! `+feature` asks for a feature, and fails where the host lacks it rather than
//! advertising what the hardware cannot do.

mod features;

use std::str::FromStr;

use thiserror::Error;

use features::{Feature, FeatureBit, Reg, KVM_FEATURES_LEAF, XSAVE_LEAF};

/// `flags` bit: the entry applies to one subleaf (`index`), not to every ECX input.
pub const CPUID_FLAG_SIGNIFICANT_INDEX: u32 = 1;

/// One CPUID entry, as KVM_GET_SUPPORTED_CPUID returns it (kvm/ converts to and from
/// kvm_cpuid_entry2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl CpuidEntry {
    /// True if the guest reads this entry for `leaf` and `subleaf`.
    fn answers(&self, leaf: u32, subleaf: u32) -> bool {
        self.function == leaf
            && (self.flags & CPUID_FLAG_SIGNIFICANT_INDEX == 0 || self.index == subleaf)
    }

    fn reg_mut(&mut self, reg: Reg) -> &mut u32 {
        match reg {
            Reg::Eax => &mut self.eax,
            Reg::Ebx => &mut self.ebx,
            Reg::Ecx => &mut self.ecx,
            Reg::Edx => &mut self.edx,
        }
    }

    fn reg(&self, reg: Reg) -> u32 {
        match reg {
            Reg::Eax => self.eax,
            Reg::Ebx => self.ebx,
            Reg::Ecx => self.ecx,
            Reg::Edx => self.edx,
        }
    }

    /// Clears the four output registers (an absent leaf or state component).
    fn zero(&mut self) {
        (self.eax, self.ebx, self.ecx, self.edx) = (0, 0, 0, 0);
    }
}

/// `--cpu` cannot be parsed or applied.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuidError {
    #[error("unknown CPU model `{model}`: the only model is `host`")]
    UnknownModel { model: String },
    #[error(
        "unknown CPU feature `{name}` (known features include {})",
        known_sample()
    )]
    UnknownFeature { name: String },
    #[error("malformed CPU option `{item}`: expected +feature, -feature or feature=on|off")]
    Malformed { item: String },
    #[error("CPU feature `{feature}` is not supported on this host")]
    Unsupported { feature: &'static str },
    #[error("CPU feature `{feature}` is asked for, but `-{hidden_by}` hides it")]
    Conflict {
        feature: &'static str,
        hidden_by: &'static str,
    },
}

/// A few feature names, for an error message.
fn known_sample() -> String {
    let names: Vec<_> = features::FEATURES.iter().take(8).map(|f| f.name).collect();
    format!("{}, ...", names.join(", "))
}

/// `--cpu host[,+feature|-feature|feature=on|feature=off...]`. A feature named twice
/// takes its last setting, as QEMU's `feature=on/off` properties do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuModel {
    /// Features to hide, with their dependants.
    hide: Vec<&'static Feature>,
    /// Features the guest must get.
    show: Vec<&'static Feature>,
}

impl FromStr for CpuModel {
    type Err = CpuidError;

    fn from_str(text: &str) -> Result<Self, CpuidError> {
        let mut items = text.split(',');
        let model = items.next().unwrap_or_default();
        if model != "host" {
            return Err(CpuidError::UnknownModel {
                model: model.to_string(),
            });
        }
        let mut cpu = CpuModel::default();
        for item in items {
            let (name, on) = parse_item(item)?;
            let feature = features::lookup(name).ok_or_else(|| CpuidError::UnknownFeature {
                name: name.to_string(),
            })?;
            cpu.hide.retain(|hidden| hidden.name != feature.name);
            cpu.show.retain(|shown| shown.name != feature.name);
            if on {
                cpu.show.push(feature);
            } else {
                cpu.hide.push(feature);
            }
        }
        Ok(cpu)
    }
}

/// One `--cpu` item: the feature's name and whether it is wanted. A bare name means on,
/// as in QEMU.
fn parse_item(item: &str) -> Result<(&str, bool), CpuidError> {
    let (name, on) = if let Some(name) = item.strip_prefix('+') {
        (name, Some(true))
    } else if let Some(name) = item.strip_prefix('-') {
        (name, Some(false))
    } else if let Some((name, value)) = item.split_once('=') {
        let on = match value {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        };
        (name, on)
    } else {
        (item, Some(true))
    };
    let well_formed = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    match on {
        Some(on) if well_formed => Ok((name, on)),
        _ => Err(CpuidError::Malformed {
            item: item.to_string(),
        }),
    }
}

impl CpuModel {
    /// The host's features as KVM supports them, unedited.
    pub fn host() -> Self {
        Self::default()
    }

    /// Applies the model to the host's supported entries: hides what `-feature` names and
    /// everything that depends on it; `+feature` sets the bit only if the host supports
    /// it (else error CpuidError::Unsupported naming it). On an error the entries are
    /// left as they were. (A slice, not the brief's `&mut Vec`: nothing is added or
    /// removed, and a `&mut Vec` still coerces.)
    pub fn apply(&self, entries: &mut [CpuidEntry]) -> Result<(), CpuidError> {
        let hidden = self.hidden();
        for feature in &self.show {
            if let Some(&(_, hidden_by)) = hidden.iter().find(|(h, _)| h.name == feature.name) {
                return Err(CpuidError::Conflict {
                    feature: feature.name,
                    hidden_by,
                });
            }
            if !feature.bits.iter().all(|bit| is_set(entries, bit)) {
                return Err(CpuidError::Unsupported {
                    feature: feature.name,
                });
            }
        }
        for (feature, _) in &hidden {
            for bit in feature.bits {
                set_bit(entries, bit, false);
            }
            for &component in features::xsave_components(feature.name) {
                drop_xsave_component(entries, component);
            }
        }
        if hidden.iter().any(|(feature, _)| feature.name == "xsave") {
            // No XSAVE: no XSAVE leaf, so no state a guest could enable with XSETBV.
            entries
                .iter_mut()
                .filter(|entry| entry.function == XSAVE_LEAF)
                .for_each(CpuidEntry::zero);
        }
        Ok(())
    }

    /// Every feature to hide, each with the `-feature` that hides it: the named ones and,
    /// transitively, what depends on them.
    fn hidden(&self) -> Vec<(&'static Feature, &'static str)> {
        let mut hidden: Vec<(&'static Feature, &'static str)> = self
            .hide
            .iter()
            .map(|&feature| (feature, feature.name))
            .collect();
        let mut next = 0;
        while let Some(&(feature, root)) = hidden.get(next) {
            // The tables name only known features (a unit test checks).
            let dependants = features::dependants(feature.name)
                .iter()
                .filter_map(|name| features::lookup(name));
            for dependant in dependants {
                if hidden.iter().all(|(seen, _)| seen.name != dependant.name) {
                    hidden.push((dependant, root));
                }
            }
            next += 1;
        }
        hidden
    }
}

/// True if the host sets `bit`.
fn is_set(entries: &[CpuidEntry], bit: &FeatureBit) -> bool {
    entries
        .iter()
        .any(|entry| entry.answers(bit.leaf, bit.subleaf) && entry.reg(bit.reg) >> bit.bit & 1 != 0)
}

fn set_bit(entries: &mut [CpuidEntry], bit: &FeatureBit, on: bool) {
    for entry in entries
        .iter_mut()
        .filter(|entry| entry.answers(bit.leaf, bit.subleaf))
    {
        let reg = entry.reg_mut(bit.reg);
        *reg = if on {
            *reg | 1 << bit.bit
        } else {
            *reg & !(1 << bit.bit)
        };
    }
}

/// Takes XSAVE state component `component` out of XCR0's supported mask (leaf 0xD
/// subleaf 0 EDX:EAX) and zeroes its own subleaf, as for a component the CPU lacks.
fn drop_xsave_component(entries: &mut [CpuidEntry], component: u32) {
    let mask = match component {
        0..=31 => Some((Reg::Eax, component as u8)),
        32..=63 => Some((Reg::Edx, (component - 32) as u8)),
        _ => None,
    };
    if let Some((reg, bit)) = mask {
        let bit = FeatureBit {
            leaf: XSAVE_LEAF,
            subleaf: 0,
            reg,
            bit,
        };
        set_bit(entries, &bit, false);
    }
    entries
        .iter_mut()
        .filter(|entry| entry.function == XSAVE_LEAF && entry.index == component)
        .for_each(CpuidEntry::zero);
}

/// Leaf 1 EDX: more than one logical processor per package (the EBX[23:16] count is
/// valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Extended topology level types (leaves 0xB and 0x1F, ECX[15:8]).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
/// KVM_FEATURE_PV_EOI in leaf 0x40000001 EAX.
const KVM_FEATURE_PV_EOI: u32 = 1 << 6;

/// Per-vCPU topology: APIC ID in leaf 1 EBX[31:24], logical processor count EBX[23:16]
/// and HTT (leaf1 EDX bit 28) when cpus > 1, leaves 0xB and 0x1F (x2APIC topology:
/// level 0 SMT with 1 thread per core, level 1 core with `cpus` cores, EDX = APIC ID on
/// every subleaf, ECX level number/type, EBX processor counts, EAX shift widths), leaf 4
/// EAX[31:26] cores-per-package minus 1 on each cache subleaf. One package, one thread
/// per core, `cpus` cores.
///
/// The counts in leaves 1 and 4 are what the SDM calls addressable IDs: the power of two
/// the APIC ID's core field spans (4 for 3 CPUs), so they agree with the shift widths
/// of leaf 0xB. Only the entries present are edited: KVM reports leaf 0xB's levels and
/// its terminating invalid subleaf.
pub fn set_topology(entries: &mut [CpuidEntry], apic_id: u8, cpus: u8) {
    let cpus = u32::from(cpus.max(1));
    let apic_id = u32::from(apic_id);
    // Bits of the APIC ID that number cores: enough for IDs 0..cpus.
    let core_bits = u32::BITS - (cpus - 1).leading_zeros();
    let core_ids = 1u32 << core_bits;
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                let count = if cpus > 1 {
                    core_ids.min(0xff) << 16
                } else {
                    0
                };
                entry.ebx = (entry.ebx & 0xffff) | apic_id << 24 | count;
                entry.edx = match cpus {
                    1 => entry.edx & !LEAF1_EDX_HTT,
                    _ => entry.edx | LEAF1_EDX_HTT,
                };
            }
            4 if entry.eax & 0x1f != 0 => {
                // One thread per core shares L1 and L2; the package shares L3.
                let level = entry.eax >> 5 & 7;
                let sharing = if level >= 3 { core_ids - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff)
                    | (core_ids - 1).min(0x3f) << 26
                    | sharing.min(0xfff) << 14;
            }
            0xb | 0x1f => {
                (entry.eax, entry.ebx, entry.ecx) = match entry.index {
                    0 => (0, 1, LEVEL_TYPE_SMT << 8),
                    1 => (core_bits, cpus, LEVEL_TYPE_CORE << 8 | 1),
                    // Past the last level: type 0, ECX[7:0] echoes the subleaf.
                    index => (0, 0, index & 0xff),
                };
                entry.edx = apic_id;
            }
            _ => {}
        }
    }
}

/// Leaf 1 ECX bits that KVM_GET_SUPPORTED_CPUID never reports and the VMM sets itself.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;

/// Sets the leaf 1 ECX bits KVM_GET_SUPPORTED_CPUID leaves to the VMM, as QEMU's
/// `kvm_arch_get_supported_cpuid` and Cloud Hypervisor do: HYPERVISOR, without which
/// Linux looks for no KVM leaves (so no kvmclock and no `no_timer_check`, and it needs
/// a PIT: docs/pit.md), and TSC-deadline when `tsc_deadline` (KVM_CAP_TSC_DEADLINE_TIMER
/// with the in-kernel LAPIC). Call it before [`CpuModel::apply`], so that `-hypervisor`
/// and `-tsc-deadline` can take them away again.
pub fn add_vmm_features(entries: &mut [CpuidEntry], tsc_deadline: bool) {
    let bits = match tsc_deadline {
        true => LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE,
        false => LEAF1_ECX_HYPERVISOR,
    };
    entries
        .iter_mut()
        .filter(|entry| entry.function == 1)
        .for_each(|entry| entry.ecx |= bits);
}

/// KVM's paravirtual feature leaf: clear KVM_FEATURE_PV_EOI (bit 6 of 0x40000001 EAX)
/// when disabled. Enabling leaves the host's bit as it is.
pub fn set_pv_eoi(entries: &mut [CpuidEntry], enabled: bool) {
    if enabled {
        return;
    }
    entries
        .iter_mut()
        .filter(|entry| entry.function == KVM_FEATURES_LEAF)
        .for_each(|entry| entry.eax &= !KVM_FEATURE_PV_EOI);
}

#[cfg(test)]
mod tests;
