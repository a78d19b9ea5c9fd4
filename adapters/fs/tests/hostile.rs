//! Hostile archives: each is refused with `Invalid` or, when it only makes links that
//! point outside, kept as exactly those links; either way nothing is written outside
//! the volume (the whole temp directory, which holds a sentinel next to the store, is
//! compared before and after) and other volumes stay intact.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Model, chunked, is_empty_dir, sample, snapshot};
use jetbridge_core::ErrorKind;
use jetbridge_core::names::VolumeHandle;
use jetbridge_core::ports::{VolumeState, VolumeStore};
use jetbridge_fs::FsVolumeStore;
use tar::{EntryType, Header};

/// One raw tar entry, written without the checks `tar::Builder` applies.
#[derive(Clone)]
struct E {
    kind: EntryType,
    name: Vec<u8>,
    link: Option<Vec<u8>>,
    data: Vec<u8>,
    device: Option<(u32, u32)>,
    mode: u32,
}

fn e(kind: EntryType, name: &str) -> E {
    E {
        kind,
        name: name.as_bytes().to_vec(),
        link: None,
        data: Vec::new(),
        device: None,
        mode: 0o644,
    }
}
fn with_mode(en: E, mode: u32) -> E {
    E { mode, ..en }
}
fn file(name: &str, data: &str) -> E {
    E {
        data: data.as_bytes().to_vec(),
        ..e(EntryType::Regular, name)
    }
}
fn dir(name: &str) -> E {
    e(EntryType::Directory, name)
}
fn sym(name: &str, target: &str) -> E {
    E {
        link: Some(target.as_bytes().to_vec()),
        ..e(EntryType::Symlink, name)
    }
}
fn hard(name: &str, target: &str) -> E {
    E {
        link: Some(target.as_bytes().to_vec()),
        ..e(EntryType::Link, name)
    }
}
fn dev(kind: EntryType, name: &str) -> E {
    E {
        device: Some((1, 3)),
        ..e(kind, name)
    }
}
fn pax(records: &[(&str, &str)]) -> E {
    let mut data = Vec::new();
    for (k, v) in records {
        let rest = format!(" {k}={v}\n");
        let mut len = rest.len() + 1;
        while len.to_string().len() + rest.len() != len {
            len += 1;
        }
        data.extend_from_slice(format!("{len}{rest}").as_bytes());
    }
    E {
        data,
        ..e(EntryType::XHeader, "PaxHeaders/x")
    }
}
fn gnu_long(kind: EntryType, value: &str) -> E {
    let mut data = value.as_bytes().to_vec();
    data.push(0);
    E {
        data,
        ..e(kind, "././@LongLink")
    }
}

fn archive(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for en in entries {
        let mut h = Header::new_gnu();
        let slot = &mut h.as_old_mut().name;
        assert!(en.name.len() < slot.len(), "name too long for the raw slot");
        slot[..en.name.len()].copy_from_slice(&en.name);
        h.set_entry_type(en.kind);
        h.set_mode(en.mode);
        h.set_size(en.data.len() as u64);
        h.set_mtime(1_700_000_000);
        if let Some(l) = &en.link {
            h.set_link_name_literal(l).unwrap();
        }
        if let Some((a, b)) = en.device {
            h.set_device_major(a).unwrap();
            h.set_device_minor(b).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&en.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Every hostile archive, by name. `sentinel` is the absolute path of a directory
/// beside the store; `tmp_name` a unique name that must never appear in /tmp.
fn corpus(sentinel: &Path, tmp_name: &str) -> Vec<(&'static str, Vec<E>)> {
    // The data dir is <tmp>/store/volumes/<h>/data: four levels below <tmp>.
    let up = "../../../../sentinel/pwned";
    let sentinel_abs = format!("{}/pwned", sentinel.display());
    let tmp_abs = format!("/tmp/{tmp_name}");
    vec![
        ("dotdot", vec![file(up, "x")]),
        (
            "dotdot_after_dir",
            vec![dir("a"), file("a/../../../../../sentinel/pwned", "x")],
        ),
        ("dotdot_only", vec![file("..", "x")]),
        ("absolute_tmp", vec![file(&tmp_abs, "x")]),
        ("absolute_into_sentinel", vec![file(&sentinel_abs, "x")]),
        (
            "absolute_dir",
            vec![dir(&format!("{}/newdir", sentinel.display()))],
        ),
        (
            "symlink_out_then_file_through_it",
            vec![sym("esc", "../../../../sentinel"), file("esc/pwned", "x")],
        ),
        (
            "symlink_to_tmp_then_write",
            vec![sym("t", "/tmp"), file(&format!("t/{tmp_name}"), "x")],
        ),
        (
            "symlink_inside_then_file_through_it",
            vec![dir("d"), sym("l", "d"), file("l/f", "x")],
        ),
        ("hardlink_etc_passwd", vec![hard("pw", "/etc/passwd")]),
        (
            "hardlink_dotdot",
            vec![hard("s", "../../../../sentinel/secret")],
        ),
        (
            "hardlink_to_symlink",
            vec![file("f", "x"), sym("s", "f"), hard("h", "s")],
        ),
        ("hardlink_to_unknown", vec![hard("h", "not-extracted")]),
        ("char_device", vec![dev(EntryType::Char, "null")]),
        ("block_device", vec![dev(EntryType::Block, "sda")]),
        ("fifo", vec![e(EntryType::Fifo, "pipe")]),
        (
            "pax_path_dotdot",
            vec![pax(&[("path", up)]), file("benign.txt", "x")],
        ),
        (
            "pax_path_absolute",
            vec![pax(&[("path", &sentinel_abs)]), file("benign.txt", "x")],
        ),
        (
            "gnu_longname_dotdot",
            vec![
                gnu_long(
                    EntryType::GNULongName,
                    &format!("{}/../../../../../../sentinel/pwned", "x".repeat(120)),
                ),
                file("benign.txt", "x"),
            ],
        ),
        (
            "gnu_longlink_escape",
            vec![
                gnu_long(
                    EntryType::GNULongLink,
                    &format!("{}../../../../sentinel", "./".repeat(60)),
                ),
                sym("benign", "fine"),
                file("benign/pwned", "x"),
            ],
        ),
        (
            "symlink_chain_to_sentinel_then_file",
            vec![
                sym("a", "b"),
                sym("b", "../../../../sentinel"),
                file("a/pwned", "x"),
            ],
        ),
        (
            "symlink_chain_in_dirs_to_tmp_then_file",
            vec![
                dir("d"),
                sym("d/l", "../m"),
                sym("m", "/tmp"),
                file(&format!("d/l/{tmp_name}"), "x"),
            ],
        ),
        (
            "symlink_replaces_dir_then_file",
            vec![
                dir("x"),
                sym("x", "../../../../sentinel"),
                file("x/pwned", "x"),
            ],
        ),
        (
            "hardlink_through_symlink_to_sentinel",
            vec![sym("s", "../../../../sentinel"), hard("h", "s/secret")],
        ),
        (
            "hardlink_to_file_replaced_by_symlink",
            vec![file("f", "x"), sym("f", "/etc/passwd"), hard("h", "f")],
        ),
        (
            "nul_in_pax_path",
            vec![
                pax(&[("path", "benign\0/../../../../sentinel/pwned")]),
                file("benign.txt", "x"),
            ],
        ),
        (
            "nul_in_pax_linkpath",
            vec![pax(&[("linkpath", "fine\0/etc")]), sym("benign", "fine")],
        ),
        (
            "nul_in_gnu_longname",
            vec![
                gnu_long(
                    EntryType::GNULongName,
                    "benign\0/../../../../sentinel/pwned",
                ),
                file("benign.txt", "x"),
            ],
        ),
        (
            "pax_sparse",
            vec![
                pax(&[("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")]),
                file("GNUSparseFile.0/sparse", "0\n"),
            ],
        ),
    ]
}

/// Archives that only make links pointing anywhere (or replace such a link): kept as
/// exactly what they say, with the tree each must leave.
fn kept_corpus() -> Vec<(&'static str, Vec<E>, Model)> {
    let d = 0o644; // the raw writer gives every entry this mode
    vec![
        (
            "symlink_out_then_overwrite",
            vec![
                sym("secret", "../../../../sentinel/secret"),
                file("secret", "pwned"),
            ],
            Model::default().file("secret", 0o644, "pwned"),
        ),
        (
            "symlink_absolute",
            vec![sym("pw", "/etc/passwd")],
            Model::default().link("pw", "/etc/passwd"),
        ),
        (
            "symlink_dotdot_from_root",
            vec![sym("up", "..")],
            Model::default().link("up", ".."),
        ),
        (
            "symlink_escape_through_inner_link",
            vec![
                dir("a"),
                dir("a/b"),
                dir("a/b/c"),
                sym("a/b/c/up", "../../.."),
                sym("x", "a/b/c/up/.."),
            ],
            Model::default()
                .dir("a", d)
                .dir("a/b", d)
                .dir("a/b/c", d)
                .link("a/b/c/up", "../../..")
                .link("x", "a/b/c/up/.."),
        ),
        (
            "symlink_escape_made_by_a_later_link",
            vec![sym("x", "y/.."), sym("y", ".")],
            Model::default().link("x", "y/..").link("y", "."),
        ),
        (
            "pax_linkpath_absolute",
            vec![pax(&[("linkpath", "/etc")]), sym("benign", "fine")],
            Model::default().link("benign", "/etc"),
        ),
        (
            "symlink_to_sentinel_then_dir_then_file",
            vec![
                sym("s", "../../../../sentinel"),
                dir("s"),
                file("s/pwned", "inside"),
            ],
            Model::default()
                .dir("s", d)
                .file("s/pwned", 0o644, "inside"),
        ),
        (
            "setuid_setgid_dropped_sticky_kept",
            vec![
                with_mode(file("suid", "u"), 0o4755),
                with_mode(file("sgid", "g"), 0o2750),
                with_mode(dir("tmp"), 0o1777),
            ],
            Model::default()
                .file("suid", 0o755, "u")
                .file("sgid", 0o750, "g")
                .dir("tmp", 0o1777),
        ),
    ]
}

/// Nothing named `name` exists anywhere under `root` or in /tmp.
fn no_escape(root: &Path, name: &str) -> bool {
    fn walk(p: &Path, name: &str) -> bool {
        let Ok(rd) = fs::read_dir(p) else { return true };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().contains(name) {
                return false;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) && !walk(&e.path(), name) {
                return false;
            }
        }
        true
    }
    walk(root, name) && !Path::new("/tmp").join(name).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_refused_and_write_nothing_outside() {
    let t = tempfile::tempdir().unwrap();
    let sentinel = t.path().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("secret"), "keep me").unwrap();
    let store_root = t.path().join("store");
    let s = FsVolumeStore::new(&store_root).unwrap();
    let keep = VolumeHandle::random();
    s.create(&keep).await.unwrap();
    s.write_tar(&keep, chunked(&sample().to_tar(), 4096))
        .await
        .unwrap();
    s.seal(&keep).await.unwrap();

    let tmp_name = format!("jetbridge-fs-hostile-{}", uuid::Uuid::new_v4().simple());
    let passwd_links = fs::metadata("/etc/passwd").map(|m| m.nlink()).ok();
    let cases = corpus(&sentinel, &tmp_name);
    assert!(cases.len() >= 28);
    for (name, entries) in cases {
        let h = VolumeHandle::random();
        s.create(&h).await.unwrap();
        let vol_dir = store_root.join("volumes").join(h.as_str());
        let before = snapshot(t.path(), &[&vol_dir]);
        // Small chunks exercise entries split across reads.
        let res = s.write_tar(&h, chunked(&archive(&entries), 100)).await;
        let err = res.expect_err(name);
        println!("{name}: {err}");
        assert_eq!(err.kind(), ErrorKind::Invalid, "{name}: {err}");
        assert_eq!(
            snapshot(t.path(), &[&vol_dir]),
            before,
            "{name} wrote outside"
        );
        assert!(is_empty_dir(&s.volume_data_path(&h)), "{name} left data");
        assert_eq!(s.stat(&h).await.unwrap().state, VolumeState::Creating);
        assert_eq!(
            s.read_tar(&h).await.err().map(|e| e.kind()),
            Some(ErrorKind::NotFound),
            "{name}"
        );
        assert!(
            !Path::new("/tmp").join(&tmp_name).exists(),
            "{name} wrote into /tmp"
        );
        assert_eq!(
            fs::metadata("/etc/passwd").map(|m| m.nlink()).ok(),
            passwd_links,
            "{name} linked /etc/passwd"
        );
        s.delete(&h).await.unwrap();
    }
    assert_eq!(
        fs::read_to_string(sentinel.join("secret")).unwrap(),
        "keep me"
    );
    assert_eq!(fs::read_dir(&sentinel).unwrap().count(), 1);
    s.verify(&keep).await.unwrap();
}

/// Benign look-alikes of the hostile cases are accepted: names with dots, links that
/// climb and come back, hard links to earlier files, PAX and GNU long names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benign_look_alikes_are_accepted() {
    let t = tempfile::tempdir().unwrap();
    let s = FsVolumeStore::new(t.path()).unwrap();
    let long = format!("{}/file", "d".repeat(150));
    let entries = vec![
        dir("a"),
        dir("a/b"),
        file("a/b/..hidden", "dots"),
        file("a/...", "three dots"),
        sym("a/b/back", "../../a/b/..hidden"),
        sym("top", "a/b/../b/back"),
        hard("a/copy", "a/..."),
        pax(&[("path", "a/pax-named")]),
        file("ignored-name", "pax"),
        gnu_long(EntryType::GNULongName, &long),
        file("short", "long name"),
    ];
    let h = VolumeHandle::random();
    s.create(&h).await.unwrap();
    s.write_tar(&h, chunked(&archive(&entries), 100))
        .await
        .unwrap();
    let info = s.seal(&h).await.unwrap();
    let d = "d".repeat(150);
    let want = Model::default()
        .dir("a", 0o644)
        .dir("a/b", 0o644)
        .file("a/b/..hidden", 0o644, "dots")
        .file("a/...", 0o644, "three dots")
        .link("a/b/back", "../../a/b/..hidden")
        .link("top", "a/b/../b/back")
        .file("a/copy", 0o644, "three dots")
        .file("a/pax-named", 0o644, "pax")
        .dir(&d, 0o755)
        .file(&long, 0o644, "long name");
    assert_eq!(Model::from_dir(&s.volume_data_path(&h)), want);
    assert_eq!(info.digest, Some(want.digest()));
}

/// Archives whose links point outside the volume are kept as those links: the volume
/// holds exactly them, reads back and copies with them unchanged, and nothing outside
/// was written or linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_out_are_kept_and_write_nothing_outside() {
    let t = tempfile::tempdir().unwrap();
    let sentinel = t.path().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("secret"), "keep me").unwrap();
    let store_root = t.path().join("store");
    let copies = t.path().join("copies");
    let s = FsVolumeStore::new(&store_root).unwrap();
    let passwd_links = fs::metadata("/etc/passwd").map(|m| m.nlink()).ok();
    for (name, entries, want) in kept_corpus() {
        let h = VolumeHandle::random();
        s.create(&h).await.unwrap();
        let vol_dir = store_root.join("volumes").join(h.as_str());
        let dest = copies.join(name);
        let before = snapshot(t.path(), &[&vol_dir, &copies]);
        s.write_tar(&h, chunked(&archive(&entries), 100))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = s.seal(&h).await.unwrap();
        assert_eq!(
            Model::from_dir(&s.volume_data_path(&h)),
            want,
            "{name}: on disk"
        );
        assert_eq!(info.digest, Some(want.digest()), "{name}: digest");
        let data = jetbridge_core::ports::collect_stream(s.read_tar(&h).await.unwrap())
            .await
            .unwrap();
        assert_eq!(Model::from_tar(&data), want, "{name}: read_tar");
        s.copy_to(&h, &dest).await.unwrap();
        assert_eq!(Model::from_dir(&dest), want, "{name}: copy");
        assert_eq!(
            snapshot(t.path(), &[&vol_dir, &copies]),
            before,
            "{name} wrote outside"
        );
        assert_eq!(
            fs::metadata("/etc/passwd").map(|m| m.nlink()).ok(),
            passwd_links,
            "{name} linked /etc/passwd"
        );
    }
    assert_eq!(
        fs::read_to_string(sentinel.join("secret")).unwrap(),
        "keep me"
    );
}

/// The conformance crate's corpus on this store, with what only a filesystem can
/// check: nothing named after the escape appears outside the volume or in /tmp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_corpus_writes_nothing_outside() {
    use jetbridge_conformance::volumes::hostile;
    let t = tempfile::tempdir().unwrap();
    let store_root = t.path().join("store");
    let s = FsVolumeStore::new(&store_root).unwrap();
    for (name, data) in hostile::archives() {
        let h = VolumeHandle::random();
        s.create(&h).await.unwrap();
        let vol_dir = store_root.join("volumes").join(h.as_str());
        let before = snapshot(t.path(), &[&vol_dir]);
        let err = s.write_tar(&h, chunked(&data, 100)).await.expect_err(name);
        assert_eq!(err.kind(), ErrorKind::Invalid, "{name}: {err}");
        assert_eq!(snapshot(t.path(), &[&vol_dir]), before, "{name}");
        assert!(no_escape(t.path(), hostile::ESCAPE_NAME), "{name} escaped");
        s.delete(&h).await.unwrap();
    }
    for (name, data, _) in hostile::kept() {
        let h = VolumeHandle::random();
        s.create(&h).await.unwrap();
        let vol_dir = store_root.join("volumes").join(h.as_str());
        let before = snapshot(t.path(), &[&vol_dir]);
        s.write_tar(&h, chunked(&data, 100))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        s.seal(&h).await.unwrap();
        assert_eq!(snapshot(t.path(), &[&vol_dir]), before, "{name}");
        assert!(
            !Path::new("/tmp").join(hostile::ESCAPE_NAME).exists(),
            "{name} wrote into /tmp"
        );
        s.delete(&h).await.unwrap();
    }
}

/// The check is made on disk, not on the archive: a link a pod left in the volume (an
/// in-place write before the tar) is never written or linked through, though the
/// archive on its own is harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_already_on_disk_is_never_written_through() {
    let t = tempfile::tempdir().unwrap();
    let sentinel = t.path().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("secret"), "keep me").unwrap();
    let store_root = t.path().join("store");
    let s = FsVolumeStore::new(&store_root).unwrap();
    let cases: [(&str, Vec<E>); 3] = [
        ("file_through_link", vec![file("out/pwned", "x")]),
        ("dir_through_link", vec![dir("out/newdir")]),
        ("hardlink_through_link", vec![hard("h", "out/secret")]),
    ];
    for (name, entries) in cases {
        let h = VolumeHandle::random();
        s.create(&h).await.unwrap();
        let data = s.volume_data_path(&h);
        std::os::unix::fs::symlink(&sentinel, data.join("out")).unwrap();
        let vol_dir = store_root.join("volumes").join(h.as_str());
        let before = snapshot(t.path(), &[&vol_dir]);
        let err = s
            .write_tar(&h, chunked(&archive(&entries), 100))
            .await
            .expect_err(name);
        assert_eq!(err.kind(), ErrorKind::Invalid, "{name}: {err}");
        assert_eq!(
            snapshot(t.path(), &[&vol_dir]),
            before,
            "{name} wrote outside"
        );
        s.delete(&h).await.unwrap();
    }
    assert_eq!(fs::read_dir(&sentinel).unwrap().count(), 1);
    assert_eq!(fs::metadata(sentinel.join("secret")).unwrap().nlink(), 1);
}
