//! The simulator driven by object_store's own GCS client, as the object-store
//! adapter uses it.

mod common;

use common::*;
use futures::TryStreamExt;
use jetbridge_gcs_sim::SimConfig;
use jetbridge_gcs_sim::SimControls;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, UpdateVersion,
};
use proptest::prelude::*;

fn p(s: &str) -> Path {
    Path::from(s)
}

async fn listed(store: &impl ObjectStore, prefix: Option<&Path>) -> Vec<String> {
    store
        .list(prefix)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_head_range_delete() {
    let sim = start().await;
    let s = gcs(&sim, 0);
    let data = PutPayload::from_static(b"0123456789");
    let mut attrs = Attributes::new();
    attrs.insert(Attribute::ContentType, "text/plain".into());
    attrs.insert(Attribute::Metadata("owner".into()), "jb".into());
    let put = s
        .put_opts(
            &p("dir/file.txt"),
            data,
            PutOptions {
                attributes: attrs,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // The ETag of a simple upload is the quoted MD5 of the content.
    assert_eq!(
        put.e_tag.as_deref(),
        Some("\"781e5e245d69b566979b86e28d23f2c7\"")
    );
    let generation = put.version.clone().expect("x-goog-generation");

    let got = s.get(&p("dir/file.txt")).await.unwrap();
    assert_eq!(got.meta.size, 10);
    assert_eq!(got.meta.version.as_deref(), Some(generation.as_str()));
    assert_eq!(
        got.attributes
            .get(&Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some("text/plain")
    );
    assert_eq!(
        got.attributes
            .get(&Attribute::Metadata("owner".into()))
            .map(|v| v.as_ref()),
        Some("jb")
    );
    assert_eq!(&got.bytes().await.unwrap()[..], b"0123456789");

    let head = s.head(&p("dir/file.txt")).await.unwrap();
    assert_eq!(head.size, 10);
    assert_eq!(head.e_tag, put.e_tag);

    assert_eq!(
        &s.get_range(&p("dir/file.txt"), 2..5).await.unwrap()[..],
        b"234"
    );
    for (range, want) in [
        (GetRange::Offset(7), &b"789"[..]),
        (GetRange::Suffix(2), b"89"),
        (GetRange::Bounded(8..100), b"89"),
    ] {
        let r = s
            .get_opts(
                &p("dir/file.txt"),
                GetOptions {
                    range: Some(range.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(&r.bytes().await.unwrap()[..], want, "{range:?}");
    }
    // A range past the end is a 416, which object_store reports as an error.
    assert!(s.get_range(&p("dir/file.txt"), 20..30).await.is_err());

    s.delete(&p("dir/file.txt")).await.unwrap();
    assert!(matches!(
        s.get(&p("dir/file.txt")).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert!(matches!(
        s.head(&p("dir/file.txt")).await,
        Err(object_store::Error::NotFound { .. })
    ));
    // Deleting a missing object is 404 on GCS, and object_store passes it on.
    assert!(matches!(
        s.delete(&p("dir/file.txt")).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert!(sim.objects(BUCKET).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_with_delimiter_prefix_and_offset() {
    let sim = start().await;
    let s = gcs(&sim, 0);
    for name in ["a/1", "a/2", "a/b/3", "c", "d/4"] {
        s.put(&p(name), PutPayload::from_static(b"x"))
            .await
            .unwrap();
    }
    let top = s.list_with_delimiter(None).await.unwrap();
    let prefixes: Vec<String> = top.common_prefixes.iter().map(|p| p.to_string()).collect();
    let objects: Vec<String> = top.objects.iter().map(|o| o.location.to_string()).collect();
    assert_eq!(prefixes, ["a", "d"]);
    assert_eq!(objects, ["c"]);
    assert_eq!(top.objects[0].size, 1);

    let under_a = s.list_with_delimiter(Some(&p("a"))).await.unwrap();
    let objects: Vec<String> = under_a
        .objects
        .iter()
        .map(|o| o.location.to_string())
        .collect();
    assert_eq!(objects, ["a/1", "a/2"]);
    assert_eq!(under_a.common_prefixes, [p("a/b")]);

    assert_eq!(listed(&s, Some(&p("a"))).await, ["a/1", "a/2", "a/b/3"]);
    // A prefix is a directory for object_store: "a" does not match "ab".
    s.put(&p("ab"), PutPayload::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(listed(&s, Some(&p("a"))).await, ["a/1", "a/2", "a/b/3"]);

    let after: Vec<String> = s
        .list_with_offset(None, &p("a/2"))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(after, ["a/b/3", "ab", "c", "d/4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_paginate_with_continuation_tokens() {
    let sim = start_with(SimConfig {
        max_keys: 2,
        ..Default::default()
    })
    .await;
    let s = gcs(&sim, 0);
    let mut names: Vec<String> = (0..7).map(|i| format!("many/{i:02}")).collect();
    names.push("many/sub/x".into());
    names.push("many/sub2/y".into());
    for n in &names {
        s.put(&p(n), PutPayload::from_static(b"x")).await.unwrap();
    }
    sim.reset_requests();
    assert_eq!(listed(&s, Some(&p("many"))).await, names);
    let pages: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    // 9 names, 2 a page: 5 pages, every one after the first with a token.
    assert_eq!(pages.len(), 5, "{pages:?}");
    assert!(
        pages[1..]
            .iter()
            .all(|r| r.query.contains("continuation-token="))
    );

    // Pages with a delimiter count prefixes too, and never repeat one.
    let d = s.list_with_delimiter(Some(&p("many"))).await.unwrap();
    assert_eq!(d.objects.len(), 7);
    assert_eq!(d.common_prefixes, [p("many/sub"), p("many/sub2")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_puts() {
    let sim = start().await;
    let s = gcs(&sim, 0);
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let first = s
        .put_opts(&p("marker"), PutPayload::from_static(b"1"), create())
        .await
        .unwrap();
    let second = s
        .put_opts(&p("marker"), PutPayload::from_static(b"2"), create())
        .await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "{second:?}"
    );
    assert_eq!(&sim.object(BUCKET, "marker").unwrap().data[..], b"1");

    // Update: only against the current generation.
    let update = |version: Option<String>| PutOptions {
        mode: PutMode::Update(UpdateVersion {
            e_tag: None,
            version,
        }),
        ..Default::default()
    };
    let second = s
        .put_opts(
            &p("marker"),
            PutPayload::from_static(b"2"),
            update(first.version.clone()),
        )
        .await
        .unwrap();
    assert_ne!(second.version, first.version);
    let stale = s
        .put_opts(
            &p("marker"),
            PutPayload::from_static(b"3"),
            update(first.version),
        )
        .await;
    assert!(
        matches!(stale, Err(object_store::Error::Precondition { .. })),
        "{stale:?}"
    );
    assert_eq!(&sim.object(BUCKET, "marker").unwrap().data[..], b"2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_and_versioned_reads() {
    let sim = start().await;
    let s = gcs(&sim, 0);
    let put = s
        .put(&p("o"), PutPayload::from_static(b"abc"))
        .await
        .unwrap();
    let etag = put.e_tag.clone().unwrap();
    let opts = |f: fn(&mut GetOptions, String), v: String| {
        let mut o = GetOptions::default();
        f(&mut o, v);
        o
    };
    let r = s
        .get_opts(&p("o"), opts(|o, v| o.if_match = Some(v), etag.clone()))
        .await;
    assert!(r.is_ok());
    let r = s
        .get_opts(
            &p("o"),
            opts(|o, v| o.if_match = Some(v), "\"nope\"".into()),
        )
        .await;
    assert!(
        matches!(r, Err(object_store::Error::Precondition { .. })),
        "{r:?}"
    );
    let r = s
        .get_opts(&p("o"), opts(|o, v| o.if_none_match = Some(v), etag))
        .await;
    assert!(
        matches!(r, Err(object_store::Error::NotModified { .. })),
        "{r:?}"
    );
    let generation = put.version.unwrap();
    let r = s
        .get_opts(
            &p("o"),
            opts(|o, v| o.version = Some(v), generation.clone()),
        )
        .await
        .unwrap();
    assert_eq!(&r.bytes().await.unwrap()[..], b"abc");
    // Overwritten: the old generation is gone (no versioning).
    s.put(&p("o"), PutPayload::from_static(b"new"))
        .await
        .unwrap();
    let r = s
        .get_opts(&p("o"), opts(|o, v| o.version = Some(v), generation))
        .await;
    assert!(
        matches!(r, Err(object_store::Error::NotFound { .. })),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies() {
    let sim = start().await;
    let s = gcs(&sim, 0);
    let mut attrs = Attributes::new();
    attrs.insert(Attribute::ContentType, "application/x-tar".into());
    s.put_opts(
        &p("src"),
        PutPayload::from_static(b"payload"),
        PutOptions {
            attributes: attrs,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.copy(&p("src"), &p("dst dir/copy")).await.unwrap();
    let c = sim.object(BUCKET, "dst dir/copy").unwrap();
    assert_eq!(&c.data[..], b"payload");
    // Metadata is copied with the content.
    assert_eq!(c.content_type, "application/x-tar");
    assert!(c.generation > sim.object(BUCKET, "src").unwrap().generation);

    let again = s.copy_if_not_exists(&p("src"), &p("dst dir/copy")).await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{again:?}"
    );
    s.copy_if_not_exists(&p("src"), &p("fresh")).await.unwrap();
    let missing = s.copy(&p("nothing"), &p("x")).await;
    assert!(
        matches!(missing, Err(object_store::Error::NotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_objects_appear_only_on_completion() {
    let sim = start().await;
    let s = gcs(&sim, 0);
    let path = p("big/object.bin");
    let part1: Vec<u8> = (0..5 << 20).map(|i: u32| (i % 251) as u8).collect();
    let id = s.create_multipart(&path).await.unwrap();
    let e1 = s
        .put_part(&path, &id, 0, PutPayload::from(part1.clone()))
        .await
        .unwrap();
    let e2 = s
        .put_part(&path, &id, 1, PutPayload::from_static(b"tail"))
        .await
        .unwrap();
    // Parts are neither listed nor readable.
    assert!(listed(&s, None).await.is_empty());
    assert!(matches!(
        s.head(&path).await,
        Err(object_store::Error::NotFound { .. })
    ));
    let up = sim.in_progress_uploads();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].object, "big/object.bin");
    assert_eq!(up[0].parts, [1, 2]);
    assert_eq!(up[0].bytes, (5 << 20) + 4);

    let done = s
        .complete_multipart(&path, &id, vec![e1, e2])
        .await
        .unwrap();
    assert!(done.version.is_some());
    let o = sim.object(BUCKET, "big/object.bin").unwrap();
    assert_eq!(o.components, Some(2));
    assert_eq!(o.data.len(), (5 << 20) + 4);
    assert_eq!(&o.data[..part1.len()], &part1[..]);
    assert_eq!(&o.data[part1.len()..], b"tail");
    assert!(sim.in_progress_uploads().is_empty());
    assert_eq!(listed(&s, None).await, ["big/object.bin"]);

    // An aborted upload leaves nothing.
    let id = s.create_multipart(&p("gone")).await.unwrap();
    s.put_part(&p("gone"), &id, 0, PutPayload::from_static(b"x"))
        .await
        .unwrap();
    s.abort_multipart(&p("gone"), &id).await.unwrap();
    assert!(sim.in_progress_uploads().is_empty());
    assert!(sim.object(BUCKET, "gone").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_multipart_and_small_parts() {
    let sim = start().await;
    let s = gcs(&sim, 0);
    // object_store's own writer: 5 MiB chunks, then the rest.
    let mut attrs = Attributes::new();
    attrs.insert(Attribute::ContentType, "application/zstd".into());
    let up = s
        .put_multipart_opts(
            &p("w"),
            PutMultipartOptions {
                attributes: attrs,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut w = object_store::WriteMultipart::new_with_chunk_size(up, 5 << 20);
    let data: Vec<u8> = (0..(11 << 20) + 3).map(|i: u32| (i % 253) as u8).collect();
    for c in data.chunks(1 << 20) {
        w.write(c);
    }
    w.finish().await.unwrap();
    let o = sim.object(BUCKET, "w").unwrap();
    assert_eq!(o.components, Some(3));
    assert_eq!(o.content_type, "application/zstd");
    assert_eq!(&o.data[..], &data[..]);

    // Parts under 5 MiB (but the last) are refused on completion, as GCS does:
    // the writer then aborts, and nothing is left.
    let up = s.put_multipart(&p("small")).await.unwrap();
    let mut w = object_store::WriteMultipart::new_with_chunk_size(up, 1 << 20);
    w.write(&vec![7u8; 3 << 20]);
    let r = w.finish().await;
    assert!(r.is_err(), "{r:?}");
    assert!(format!("{:?}", r.unwrap_err()).contains("EntityTooSmall"));
    assert!(sim.object(BUCKET, "small").is_none());
    assert!(sim.in_progress_uploads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_accepted_and_ignored() {
    let sim = start().await;
    let s = object_store::gcp::GoogleCloudStorageBuilder::new()
        .with_bucket_name(BUCKET)
        .with_base_url(&sim.url())
        .with_bearer_token("not-checked")
        .with_client_options(object_store::ClientOptions::new().with_allow_http(true))
        .build()
        .unwrap();
    s.put(&p("x"), PutPayload::from_static(b"1")).await.unwrap();
    assert_eq!(
        &s.get(&p("x")).await.unwrap().bytes().await.unwrap()[..],
        b"1"
    );
}

/// One path segment object_store accepts: no `/`, no control characters, not `.`
/// or `..`; spaces, `%`, `#`, `?`, `+`, `&`, `<`, quotes and non-ASCII included.
fn segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 %#?+&<>\"'=~!@$^*(),;:\\[\\]{}|\\\\é€中😀._-]{1,8}"
        .prop_filter("not . or ..", |s| s != "." && s != "..")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Odd names survive the URL encoding of object_store and the decoding of the
    /// simulator: each object is stored under its name, listed under it, and read
    /// back from it.
    #[test]
    fn odd_names_round_trip(names in proptest::collection::btree_set(
        proptest::collection::vec(segment(), 1..4), 1..6)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let sim = start().await;
            let s = gcs(&sim, 0);
            let paths: Vec<Path> = names.iter().map(|parts| Path::from_iter(parts.iter().map(String::as_str))).collect();
            for (i, path) in paths.iter().enumerate() {
                s.put(path, PutPayload::from(i.to_string().into_bytes())).await.unwrap();
            }
            let mut want: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            want.sort();
            want.dedup();
            // Stored under exactly the name object_store gave.
            let stored: Vec<String> = sim.objects(BUCKET).into_iter().map(|o| o.name).collect();
            prop_assert_eq!(&stored, &want);
            prop_assert_eq!(listed(&s, None).await, want);
            for (i, path) in paths.iter().enumerate() {
                let got = s.get(path).await.unwrap().bytes().await.unwrap();
                let want = i.to_string();
                prop_assert_eq!(&got[..], want.as_bytes());
            }
            sim.shutdown().await;
            Ok(())
        })?;
    }
}
