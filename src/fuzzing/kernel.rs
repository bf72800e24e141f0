//! The kernel loaders' fuzz entry point, and the inverse of its input decoding, which
//! turns real images into seed inputs (random bytes rarely get past a header's checks).

use crate::loader::{BootRequest, EntryState, LoaderError};

/// Bytes a format's start template puts before the input's image bytes.
const TEMPLATE_PREFIX: usize = 7;

/// A fuzz input taken apart: the image, its command line and initrd.
struct KernelInput<'a> {
    image: Vec<u8>,
    cmdline: String,
    initrd: Option<&'a [u8]>,
}

/// The first byte picks a start (bit 2: pass an initrd); the first quarter of the rest
/// is the initrd, whose first 64 bytes are also the command line; the other bytes
/// follow the start's first 7 (a bzImage's setup-header magic is kept: those bytes are
/// OR-ed in).
fn decode(data: &[u8]) -> Option<KernelInput<'_>> {
    let (&kind, rest) = data.split_first()?;
    let mut image = match kind % 4 {
        0 => {
            // A bzImage's boot sector and setup-header magic, the rest as given.
            let mut image = vec![0u8; 0x260];
            image[0x1f1] = 1;
            image[0x1fe] = 0x55;
            image[0x1ff] = 0xaa;
            image[0x202..0x206].copy_from_slice(b"HdrS");
            image
        }
        1 => b"\x7fELF\x02\x01\x01".to_vec(),
        2 => b"\x7fELF\x01\x01\x01".to_vec(),
        _ => Vec::new(),
    };
    let cut = rest.len() / 4;
    let (initrd, rest) = rest.split_at(cut.min(rest.len()));
    for (at, byte) in rest.iter().enumerate() {
        let index = at + TEMPLATE_PREFIX;
        match image.get_mut(index) {
            Some(slot) if kind % 4 == 0 && (0x1f1..0x206).contains(&index) => *slot |= byte,
            Some(slot) => *slot = *byte,
            None => image.push(*byte),
        }
    }
    Some(KernelInput {
        image,
        cmdline: String::from_utf8_lossy(&initrd[..initrd.len().min(64)]).into_owned(),
        initrd: (kind & 4 != 0).then_some(initrd),
    })
}

/// Loads a decoded input into 16 MiB; `None` if the memory could not be made.
fn load(input: &KernelInput<'_>) -> Option<Result<EntryState, LoaderError>> {
    let layout = crate::layout::MemoryLayout::new(16 << 20).expect("16 MiB");
    let memory = crate::machine::guest_memory(&layout).ok()?;
    let request = BootRequest {
        kernel_name: "fuzz",
        image: &input.image,
        cmdline: &input.cmdline,
        modules: &[],
        initrd: input.initrd,
        rsdp: Some(crate::layout::ACPI_TABLES),
    };
    Some(crate::loader::load(&memory, &layout, &request))
}

/// The kernel loaders and boot-parameter building: `data` is a kernel image, or the
/// tail of one behind a plausible bzImage, ELF or Multiboot start (the first byte picks
/// which), with an initrd and a command line cut from it; loaded into 16 MiB.
pub fn kernel_image(data: &[u8]) {
    if let Some(input) = decode(data) {
        let _ = load(&input);
    }
}

/// The input [`kernel_image`] decodes into `image` (a bzImage's first 7 bytes, its
/// boot sector's, aside), with an initrd of about a third of the image's length whose
/// start is a command line when `with_initrd`: a seed for the fuzzer.
pub fn kernel_image_input(image: &[u8], with_initrd: bool) -> Vec<u8> {
    let (kind, body) = if image.len() > 0x206 && &image[0x202..0x206] == b"HdrS" {
        (0u8, &image[TEMPLATE_PREFIX..])
    } else if image.starts_with(b"\x7fELF\x02\x01\x01") {
        (1, &image[TEMPLATE_PREFIX..])
    } else if image.starts_with(b"\x7fELF\x01\x01\x01") {
        (2, &image[TEMPLATE_PREFIX..])
    } else {
        (3, image)
    };
    // The decoder's cut is a quarter of initrd + body: an initrd of a third of the body.
    let initrd = b"console=ttyS0 "
        .iter()
        .cycle()
        .take(body.len() / 3)
        .copied();
    let mut input = vec![kind | if with_initrd { 4 } else { 0 }];
    input.extend(initrd);
    input.extend_from_slice(body);
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_decodes_to_its_image_and_a_guest_seed_loads() {
        let guest = crate::guests::image("rtc").expect("built");
        for with_initrd in [false, true] {
            let input = kernel_image_input(guest, with_initrd);
            let decoded = decode(&input).unwrap();
            assert_eq!(decoded.image, guest);
            assert_eq!(decoded.initrd.is_some(), with_initrd);
            assert!(decoded.cmdline.starts_with("console=ttyS0 "));
            let loaded = load(&decoded).expect("memory");
            if with_initrd {
                assert!(matches!(loaded, Err(LoaderError::InitrdForMultiboot)));
            } else {
                assert!(loaded.is_ok(), "{:?}", loaded.err());
            }
        }
        let mut elf64 = b"\\x7fELF\\x02\\x01\\x01".to_vec();
        elf64.extend_from_slice(&[9; 100]);
        assert_eq!(
            decode(&kernel_image_input(&elf64, false)).unwrap().image,
            elf64
        );
        let mut bzimage = vec![0u8; 0x400];
        bzimage[0x1f1] = 1;
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        bzimage[0x1fe] = 0x55;
        bzimage[0x1ff] = 0xaa;
        bzimage[0x300] = 7;
        assert_eq!(
            decode(&kernel_image_input(&bzimage, false)).unwrap().image,
            bzimage
        );
    }

    /// Writes seeds for `fuzz/corpus/kernel_image` from every built-in guest and, when
    /// `scripts/fetch-kernel.sh` has run, the first 64 KiB of Debian's bzImage and
    /// vmlinux: `cargo test --lib write_kernel_image_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus/kernel_image"]
    fn write_kernel_image_seeds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let corpus = root.join("fuzz/corpus/kernel_image");
        std::fs::create_dir_all(&corpus).unwrap();
        let mut images: Vec<(String, Vec<u8>)> = crate::guests::GUESTS
            .iter()
            .map(|(name, image)| (format!("guest-{name}"), image.to_vec()))
            .collect();
        for name in ["bzImage", "vmlinux"] {
            if let Ok(bytes) = std::fs::read(root.join("target/linux").join(name)) {
                images.push((
                    format!("debian-{name}"),
                    bytes[..bytes.len().min(64 << 10)].to_vec(),
                ));
            }
        }
        for (name, image) in images {
            for with_initrd in [false, true] {
                let path = corpus.join(format!("seed-{name}-{}", u8::from(with_initrd)));
                std::fs::write(path, kernel_image_input(&image, with_initrd)).unwrap();
            }
        }
    }
}
