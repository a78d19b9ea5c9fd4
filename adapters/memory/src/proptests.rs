//! Property tests: the shell front end never panics, tar round trips are exact.

use proptest::prelude::*;

use crate::fs::{MemFs, Node};
use crate::shell::{parse, tokenize};
use crate::tar::{create, extract};

proptest! {
    #[test]
    fn tokenizer_and_parser_never_panic(src in "\\PC{0,200}") {
        let _ = tokenize(&src);
        let _ = parse(&src);
    }

    #[test]
    fn shell_like_input_never_panics(src in "[a-z$'\"\\\\{}:?#;&|<>0-9 \\n=-]{0,120}") {
        let _ = parse(&src);
    }

    #[test]
    fn extraction_of_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut fs = MemFs::new();
        let _ = extract(&mut fs, "", &data);
    }

    #[test]
    fn tar_round_trip_is_exact(
        entries in proptest::collection::vec(
            (
                "[a-c]{1,3}(/[a-c]{1,3}){0,3}",
                0u8..3,
                proptest::collection::vec(any::<u8>(), 0..300),
                // Setuid and setgid are dropped by design (core's archive rules).
                0u32..=0o1777,
            ),
            0..20,
        )
    ) {
        let mut src = MemFs::new();
        src.mkdir("/src", false, 0o755).unwrap();
        for (path, kind, data, mode) in entries {
            let abs = format!("/src/{path}");
            // Parents may be missing or be files: skip what cannot be created.
            if src.mkdir(&crate::fs::join(&abs, ".."), true, 0o755).is_err() {
                continue;
            }
            let _ = match kind {
                0 => src.write_file(&abs, &data, false, mode),
                1 => src.mkdir(&abs, false, mode),
                _ => src.symlink(&format!("x/{}", data.len()), &abs),
            };
            let _ = src.chmod(&abs, mode);
        }
        let tar = create(&src, "/src", true).unwrap();
        let mut dst = MemFs::new();
        dst.mkdir("/dst", false, 0o700).unwrap();
        extract(&mut dst, "dst", &tar).unwrap();
        let a = src.subtree("/src").unwrap();
        let b = dst.subtree("/dst").unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(src.digest("/src").unwrap(), dst.digest("/dst").unwrap());
        // The root entry carries the directory's own mode.
        prop_assert_eq!(dst.stat("/dst", false), Some(&Node::Dir { mode: 0o755 }));
    }
}
