//! Builds the test guests in `guests/` into Multiboot ELF32 images with the system C
//! compiler, and generates `guests.rs`, which embeds them in hushvm.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Each guest: its name and its own source files (the first holds `guest_main`), linked
/// after the shared sources; a header of its own is listed too, so that a change to it
/// rebuilds the guest (headers are not compiled).
const GUESTS: &[(&str, &[&str])] = &[
    ("rtc", &["rtc.c"]),
    ("probe", &["probe.c"]),
    ("eoi", &["eoi.c"]),
    ("tick", &["tick.c"]),
    ("doorbell", &["doorbell.c"]),
    ("blk", &["blk.c"]),
    ("strio", &["strio.c"]),
    ("console", &["console.c"]),
    ("pcitest", &["pcitest.c"]),
    ("pcicfg", &["pcicfg.c"]),
    ("vsock", &["vsock.c"]),
    ("net", &["net.c", "net_dev.c", "net.h"]),
    (
        "hostile",
        &[
            "hostile.c",
            "hostile_pci.c",
            "hostile_virtio.c",
            "hostile.h",
        ],
    ),
];
/// Guests that stand alone: one assembly file, none of the shared sources (each tests
/// something the shared start-up code would hide).
const STANDALONE: &[(&str, &str)] = &[("stackless", "stackless.S")];
/// Linked into every guest.
const SHARED_SOURCES: &[&str] = &[
    "start.S",
    "lib.c",
    "irq.c",
    "stubs.S",
    "smp.S",
    "virtio.c",
    "pci.c",
    "virtio_pci.c",
];
const SHARED: &[&str] = &[
    "start.S",
    "lib.c",
    "lib.h",
    "irq.c",
    "irq.h",
    "stubs.S",
    "smp.S",
    "virtio.c",
    "virtio.h",
    "pci.c",
    "pci.h",
    "virtio_pci.c",
    "virtio_pci.h",
    "link.ld",
];

fn main() {
    let src = Path::new("guests");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("guests");
    fs::create_dir_all(&out).expect("create the guests output directory");
    let compiler = env::var("HUSHVM_GUEST_CC").unwrap_or_else(|_| "gcc".to_string());
    println!("cargo:rerun-if-env-changed=HUSHVM_GUEST_CC");
    for file in SHARED {
        println!("cargo:rerun-if-changed=guests/{file}");
    }

    let mut table =
        String::from("/// The test guests built from `guests/`: (name, Multiboot ELF32 image).\n");
    table.push_str("pub const GUESTS: &[(&str, &[u8])] = &[\n");
    for (name, files) in GUESTS {
        for file in *files {
            println!("cargo:rerun-if-changed=guests/{file}");
        }
        let elf = out.join(format!("{name}.elf"));
        build_guest(&compiler, src, SHARED_SOURCES, files, &elf);
        table.push_str(&format!("    (\"{name}\", include_bytes!({:?})),\n", elf));
    }
    for (name, main) in STANDALONE {
        println!("cargo:rerun-if-changed=guests/{main}");
        let elf = out.join(format!("{name}.elf"));
        build_guest(&compiler, src, &[], &[*main], &elf);
        table.push_str(&format!("    (\"{name}\", include_bytes!({:?})),\n", elf));
    }
    table.push_str("];\n");
    fs::write(out.join("guests.rs"), table).expect("write guests.rs");
}

/// Compiles and links `shared` then `own` (headers in `own` are left out) into `elf`.
fn build_guest(compiler: &str, src: &Path, shared: &[&str], own: &[&str], elf: &Path) {
    let sources = shared
        .iter()
        .chain(own)
        .filter(|file| !file.ends_with(".h"))
        .map(|file| src.join(file));
    let status = Command::new(compiler)
        .args([
            "-m32",
            "-march=i686",
            "-std=gnu11",
            "-O2",
            "-Wall",
            "-Werror",
            "-ffreestanding",
            "-fno-pic",
            "-fno-pie",
            "-no-pie",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-nostdlib",
            "-static",
            "-Wl,--build-id=none",
            "-Wl,-z,noexecstack",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", src.join("link.ld").display()))
        .arg("-o")
        .arg(elf)
        .args(sources)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the guest compiler `{compiler}`: {e}"));
    assert!(status.success(), "building guest {} failed", own[0]);
}
