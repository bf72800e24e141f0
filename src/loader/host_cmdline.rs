//! The Linux command line a host whose KVM runs guest code in its instruction emulator
//! needs (HOST.md: this development host's PVM, where CPUID edits are mostly ignored, so
//! features must be hidden on the kernel's own command line). One table, each option
//! with its reason; the tests and the docs take it from here.

/// The options, each with why this host needs it.
pub const EMULATED_KVM_OPTIONS: &[(&str, &str)] = &[
    (
        "noxsave",
        "KVM's emulator here lacks XSAVE/XRSTOR; the kernel then saves the FPU with \
         FXSAVE/FXRSTOR, which hushvm completes",
    ),
    (
        "nopti",
        "page-table isolation switches CR3 on every kernel entry and exit: more \
         emulated work per system call, for a test guest that needs no isolation",
    ),
    (
        "nowatchdog",
        "emulated guest code runs far slower than native code: the lockup \
         watchdogs would report stalls and cost timer interrupts",
    ),
    (
        "clearcpuid=smap,smep,popcnt,fsgsbase,rdrand,rdseed,invpcid,pcid,ssse3,sse4_1,sse4_2,avx,aes,pclmulqdq,sha_ni,movbe,bmi1,bmi2,adx",
        "features the host's CPUID shows whose instructions its emulator lacks or \
         that cost emulated work: SMAP puts STAC/CLAC around every user-memory access \
         (thousands completed by hushvm per boot; Linux 6.1 has no nosmap or nosmep any \
         more), POPCNT was seen failing, the SIMD, AES and hash extensions would be \
         picked by the kernel's crypto and RAID code, FSGSBASE and INVPCID run on \
         context switches. The kernel reads at most 127 characters of this option",
    ),
];

/// The options of [`EMULATED_KVM_OPTIONS`], space-separated.
pub fn emulated_kvm_cmdline() -> String {
    EMULATED_KVM_OPTIONS
        .iter()
        .map(|(option, _)| *option)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_has_a_reason_and_clearcpuid_fits_the_kernels_buffer() {
        for (option, reason) in EMULATED_KVM_OPTIONS {
            assert!(!option.contains(' ') && reason.len() > 20, "{option}");
        }
        let clearcpuid = EMULATED_KVM_OPTIONS
            .iter()
            .find_map(|(option, _)| option.strip_prefix("clearcpuid="))
            .unwrap();
        assert!(clearcpuid.len() < 128, "Linux 6.1 copies it into char[128]");
        assert!(emulated_kvm_cmdline().starts_with("noxsave nopti "));
    }
}
