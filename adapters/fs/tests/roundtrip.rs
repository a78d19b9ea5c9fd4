//! Property: random trees (odd names, nesting, modes, links inside) survive
//! write_tar -> seal -> read_tar with the digest the model computes, and a second
//! volume filled from the first one's tar seals to the same digest.

mod common;

use common::{Model, N, chunked};
use jetbridge_core::names::VolumeHandle;
use jetbridge_core::ports::{VolumeStore, collect_stream};
use jetbridge_fs::FsVolumeStore;
use proptest::prelude::*;

/// One generated entry: where (index of an existing dir, or the root), name, kind.
#[derive(Debug, Clone)]
enum Gen {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        data: Vec<u8>,
    },
    /// Link to the entry with this index among non-links (or a missing name).
    Link {
        to: Option<usize>,
    },
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        "[A-Za-z0-9._-]{1,12}",
        Just("with space".to_owned()),
        Just("ünï çødé".to_owned()),
        Just("..dots".to_owned()),
        Just("back\\slash".to_owned()),
    ]
    .prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn entry() -> impl Strategy<Value = Gen> {
    let dir_mode = prop::sample::select(vec![0o755u32, 0o700, 0o750, 0o555, 0o1777]);
    let file_mode = prop::sample::select(vec![0o644u32, 0o755, 0o600, 0o400, 0o4755, 0o2711]);
    prop_oneof![
        2 => dir_mode.prop_map(|mode| Gen::Dir { mode }),
        4 => (file_mode.clone(), prop::collection::vec(any::<u8>(), 0..3000))
            .prop_map(|(mode, data)| Gen::File { mode, data }),
        1 => (file_mode, 60_000usize..300_000, any::<u8>())
            .prop_map(|(mode, len, b)| Gen::File { mode, data: vec![b; len] }),
        2 => prop::option::of(0usize..64).prop_map(|to| Gen::Link { to }),
    ]
}

/// Build a model: each entry goes into a random existing directory.
fn build(items: Vec<(usize, String, Gen)>) -> Model {
    let mut m = Model::default();
    let mut dirs: Vec<String> = vec![String::new()];
    let mut targets: Vec<String> = Vec::new();
    for (parent, name, g) in items {
        let parent = dirs[parent % dirs.len()].clone();
        let path = if parent.is_empty() {
            name
        } else {
            format!("{parent}/{name}")
        };
        if m.0.contains_key(&path) {
            continue;
        }
        match g {
            Gen::Dir { mode } => {
                m.0.insert(path.clone(), N::Dir(mode));
                dirs.push(path.clone());
                targets.push(path);
            }
            Gen::File { mode, data } => {
                // Setuid and setgid never survive extraction.
                m.0.insert(path.clone(), N::File(mode & !0o6000, data));
                targets.push(path);
            }
            Gen::Link { to } => {
                // Climb to the root, then down to a non-link entry (or a missing
                // name): always inside, never a loop.
                let depth = parent.split('/').filter(|s| !s.is_empty()).count();
                let down = match to.and_then(|i| targets.get(i % targets.len().max(1))) {
                    Some(t) => t.clone(),
                    None => "missing".to_owned(),
                };
                m.0.insert(path, N::Link(format!("{}{down}", "../".repeat(depth))));
            }
        }
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(
        items in prop::collection::vec((0usize..16, name(), entry()), 0..40),
        chunk in 1usize..20_000,
    ) {
        let model = build(items);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (sealed, back, again) = rt.block_on(async {
            let t = tempfile::tempdir().unwrap();
            let s = FsVolumeStore::new(t.path()).unwrap();
            let h = VolumeHandle::random();
            s.create(&h).await.unwrap();
            s.write_tar(&h, chunked(&model.to_tar(), chunk)).await.unwrap();
            let sealed = s.seal(&h).await.unwrap();
            let tar = collect_stream(s.read_tar(&h).await.unwrap()).await.unwrap();
            let h2 = VolumeHandle::random();
            s.create(&h2).await.unwrap();
            s.write_tar(&h2, chunked(&tar, 4096)).await.unwrap();
            let again = s.seal(&h2).await.unwrap();
            (sealed, Model::from_tar(&tar), again)
        });
        prop_assert_eq!(sealed.digest.clone(), Some(model.digest()));
        prop_assert_eq!(sealed.size, model.size());
        prop_assert_eq!(&back, &model);
        prop_assert_eq!(again.digest, sealed.digest);
    }
}
