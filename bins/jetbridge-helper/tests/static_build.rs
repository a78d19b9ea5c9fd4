//! The statically linked build (`.ci/build-helper.sh`): no program interpreter, no
//! shared library needed, and it runs in a directory that holds nothing else.
//!
//! Needs `JETBRIDGE_STATIC_HELPER` (the path the script prints) and root (for chroot):
//! `JETBRIDGE_STATIC_HELPER=$(.ci/build-helper.sh) cargo test -p jetbridge-helper`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: i64 = 0;
const DT_NEEDED: i64 = 1;

fn static_helper() -> PathBuf {
    let Some(path) = std::env::var_os("JETBRIDGE_STATIC_HELPER") else {
        panic!(
            "JETBRIDGE_STATIC_HELPER is not set: build the static helper and pass its path, \
             as CI does: JETBRIDGE_STATIC_HELPER=$(.ci/build-helper.sh) cargo test -p jetbridge-helper"
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "JETBRIDGE_STATIC_HELPER={} is not a file",
        path.display()
    );
    path
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// (p_type, p_offset, p_filesz) of every program header of a 64-bit little-endian ELF.
fn program_headers(elf: &[u8]) -> Vec<(u32, usize, usize)> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    assert_eq!(elf[5], 1, "not little-endian");
    let phoff = usize::try_from(u64_at(elf, 0x20)).unwrap();
    let phentsize = usize::from(u16_at(elf, 0x36));
    let phnum = usize::from(u16_at(elf, 0x38));
    assert!(phentsize >= 56 && phnum > 0, "no program headers");
    (0..phnum)
        .map(|i| {
            let ph = &elf[phoff + i * phentsize..][..phentsize];
            let offset = usize::try_from(u64_at(ph, 8)).unwrap();
            let filesz = usize::try_from(u64_at(ph, 32)).unwrap();
            (u32_at(ph, 0), offset, filesz)
        })
        .collect()
}

#[test]
fn needs_no_interpreter_and_no_shared_library() {
    let elf = std::fs::read(static_helper()).unwrap();
    let headers = program_headers(&elf);
    assert!(
        headers.iter().all(|&(t, ..)| t != PT_INTERP),
        "the helper has a PT_INTERP header: it is dynamically linked"
    );
    for &(_, offset, size) in headers.iter().filter(|&&(t, ..)| t == PT_DYNAMIC) {
        // A static-pie has a dynamic segment (for its own relocations), but needs nothing.
        for entry in elf[offset..offset + size].chunks_exact(16) {
            let tag = i64::from_le_bytes(entry[..8].try_into().unwrap());
            assert_ne!(
                tag, DT_NEEDED,
                "the helper needs a shared library (DT_NEEDED)"
            );
            if tag == DT_NULL {
                break;
            }
        }
    }
}

fn chroot(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("chroot")
        .arg(root)
        .arg("/jetbridge-helper")
        .args(args)
        .output()
        .expect("run chroot (coreutils)");
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Operation not permitted") {
        panic!("chroot needs root (CI runs the tests as root): {err}");
    }
    out
}

#[test]
fn runs_alone_in_an_empty_root() {
    let helper = static_helper();
    let root = tempfile::tempdir().unwrap();
    let inside = root.path().join("jetbridge-helper");
    std::fs::copy(&helper, &inside).unwrap();
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o555)).unwrap();

    let out = chroot(root.path(), &["read-first", "/nope"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    let out = chroot(root.path(), &["--version"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("jetbridge-helper {}\n", env!("CARGO_PKG_VERSION"))
    );
}
