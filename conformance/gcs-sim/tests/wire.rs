//! Wire details with a raw HTTP client: status codes, headers, error codes and XML
//! documents, and how object names are decoded from paths.

mod common;

use common::*;
use jetbridge_gcs_sim::SimControls;

const OBJ: &str = "/jb-test/obj";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_answers_with_the_buckets() {
    let sim = start().await;
    let r = http(&sim, "GET", "/", &[], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/xml; charset=UTF-8")
    );
    assert!(r.text().contains("<ListAllMyBucketsResult"), "{}", r.text());
    assert_eq!(xml_all(&r.text(), "Name"), [BUCKET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_are_made_checked_and_deleted() {
    let sim = start().await;
    for (method, target) in [
        ("GET", "/nope?list-type=2"),
        ("GET", "/nope/obj"),
        ("PUT", "/nope/obj"),
        ("POST", "/nope/obj?uploads"),
    ] {
        let r = http(&sim, method, target, &[], Some(b"")).await;
        assert_eq!(r.status, 404, "{method} {target}");
        assert_eq!(
            r.code().as_deref(),
            Some("NoSuchBucket"),
            "{method} {target}"
        );
    }
    assert_eq!(http(&sim, "HEAD", "/nope", &[], None).await.status, 404);
    assert_eq!(
        http(&sim, "PUT", "/new-bucket", &[], Some(b""))
            .await
            .status,
        200
    );
    assert_eq!(
        http(&sim, "HEAD", "/new-bucket", &[], None).await.status,
        200
    );
    let again = http(&sim, "PUT", "/new-bucket", &[], Some(b"")).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.code().as_deref(), Some("BucketAlreadyOwnedByYou"));
    let bad = http(&sim, "PUT", "/Bad_Name", &[], Some(b"")).await;
    assert_eq!(
        (bad.status, bad.code().as_deref()),
        (400, Some("InvalidBucketName"))
    );
    http(&sim, "PUT", "/new-bucket/o", &[], Some(b"x")).await;
    let busy = http(&sim, "DELETE", "/new-bucket", &[], None).await;
    assert_eq!(
        (busy.status, busy.code().as_deref()),
        (409, Some("BucketNotEmpty"))
    );
    assert_eq!(
        http(&sim, "DELETE", "/new-bucket/o", &[], None)
            .await
            .status,
        204
    );
    assert_eq!(
        http(&sim, "DELETE", "/new-bucket", &[], None).await.status,
        204
    );
    assert_eq!(sim.buckets(), [BUCKET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_read_headers() {
    let sim = start().await;
    let put = http(
        &sim,
        "PUT",
        OBJ,
        &[
            ("content-type", "text/plain"),
            ("x-goog-meta-Color", "blue"),
            ("authorization", "Bearer whatever"),
        ],
        Some(b"hello"),
    )
    .await;
    assert_eq!(put.status, 200);
    assert!(put.body.is_empty());
    // MD5("hello"), hex, quoted; and the base64 hashes.
    assert_eq!(
        put.header("etag"),
        Some("\"5d41402abc4b2a76b9719d911017c592\"")
    );
    assert_eq!(
        put.all("x-goog-hash"),
        ["crc32c=mnG7TA==", "md5=XUFAKrxLKna5cZ2REBfFkg=="]
    );
    let generation: u64 = put.header("x-goog-generation").unwrap().parse().unwrap();
    assert_eq!(put.header("x-goog-metageneration"), Some("1"));
    assert_eq!(put.header("x-goog-stored-content-length"), Some("5"));

    for method in ["GET", "HEAD"] {
        let r = http(&sim, method, OBJ, &[], None).await;
        assert_eq!(r.status, 200, "{method}");
        assert_eq!(r.header("content-length"), Some("5"), "{method}");
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("etag"), put.header("etag"));
        assert_eq!(
            r.header("x-goog-generation"),
            Some(generation.to_string().as_str())
        );
        assert_eq!(r.header("x-goog-meta-color"), Some("blue"));
        assert_eq!(r.header("x-goog-storage-class"), Some("STANDARD"));
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        let lm = r.header("last-modified").unwrap();
        assert!(lm.ends_with(" GMT") && lm.len() == 29, "{lm}");
        let want: &[u8] = if method == "GET" { b"hello" } else { b"" };
        assert_eq!(r.body, want, "{method}");
    }
    // Without a type, the object is application/octet-stream.
    http(&sim, "PUT", "/jb-test/untyped", &[], Some(b"x")).await;
    let r = http(&sim, "HEAD", "/jb-test/untyped", &[], None).await;
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_objects_are_no_such_key() {
    let sim = start().await;
    let r = http(&sim, "GET", "/jb-test/missing%20one", &[], None).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("content-type"),
        Some("application/xml; charset=UTF-8")
    );
    assert_eq!(r.code().as_deref(), Some("NoSuchKey"));
    assert_eq!(
        r.xml("Details").as_deref(),
        Some("No such object: jb-test/missing one")
    );
    let h = http(&sim, "HEAD", "/jb-test/missing", &[], None).await;
    assert_eq!(h.status, 404);
    assert!(h.body.is_empty());
    let d = http(&sim, "DELETE", "/jb-test/missing", &[], None).await;
    assert_eq!((d.status, d.code().as_deref()), (404, Some("NoSuchKey")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_percent_decoded_from_the_path() {
    let sim = start().await;
    // object_store encodes every non-alphanumeric byte, the bucket's `-` too.
    let r = http(
        &sim,
        "PUT",
        "/jb%2Dtest/a%2Fb%20c%3F%23%25%E2%82%AC",
        &[],
        Some(b"1"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(sim.object(BUCKET, "a/b c?#%€").is_some());
    // A literal slash is part of the name too, and `+` is a plus in a path.
    let r = http(&sim, "GET", "/jb-test/a/b%20c%3F%23%25%E2%82%AC", &[], None).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"1"[..]));
    http(&sim, "PUT", "/jb-test/x+y", &[], Some(b"2")).await;
    assert!(sim.object(BUCKET, "x+y").is_some());
    assert_eq!(
        sim.requests().last().unwrap().object.as_deref(),
        Some("x+y")
    );
    let bad = http(&sim, "GET", "/jb-test/%zz", &[], None).await;
    assert_eq!(
        (bad.status, bad.code().as_deref()),
        (400, Some("InvalidArgument"))
    );
    let bad = http(&sim, "PUT", "/jb-test/a%0Ab", &[], Some(b"")).await;
    assert_eq!(
        (bad.status, bad.code().as_deref()),
        (400, Some("InvalidArgument"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_preconditions() {
    let sim = start().await;
    let create = [("x-goog-if-generation-match", "0")];
    assert_eq!(
        http(&sim, "PUT", OBJ, &create, Some(b"1")).await.status,
        200
    );
    let again = http(&sim, "PUT", OBJ, &create, Some(b"2")).await;
    assert_eq!(
        (again.status, again.code().as_deref()),
        (412, Some("PreconditionFailed"))
    );
    assert_eq!(&sim.object(BUCKET, "obj").unwrap().data[..], b"1");

    let g = sim.object(BUCKET, "obj").unwrap().generation.to_string();
    let stale = [("x-goog-if-generation-match", "1")];
    assert_eq!(http(&sim, "PUT", OBJ, &stale, Some(b"3")).await.status, 412);
    assert_eq!(http(&sim, "GET", OBJ, &stale, None).await.status, 412);
    assert_eq!(http(&sim, "DELETE", OBJ, &stale, None).await.status, 412);
    let current = [("x-goog-if-generation-match", g.as_str())];
    assert_eq!(http(&sim, "GET", OBJ, &current, None).await.status, 200);
    let not = [("x-goog-if-generation-not-match", g.as_str())];
    assert_eq!(http(&sim, "GET", OBJ, &not, None).await.status, 304);
    let bad = [("x-goog-if-generation-match", "x")];
    assert_eq!(http(&sim, "PUT", OBJ, &bad, Some(b"")).await.status, 400);
    assert_eq!(
        http(&sim, "GET", &format!("{OBJ}?generation={g}"), &[], None)
            .await
            .status,
        200
    );
    assert_eq!(
        http(&sim, "GET", &format!("{OBJ}?generation=5"), &[], None)
            .await
            .status,
        404
    );
    assert_eq!(
        http(&sim, "PUT", OBJ, &current, Some(b"4")).await.status,
        200
    );
    assert_eq!(&sim.object(BUCKET, "obj").unwrap().data[..], b"4");

    // Copies: the destination's precondition, and a missing source.
    let copy = [
        ("x-goog-copy-source", "jb-test/obj"),
        ("x-goog-if-generation-match", "0"),
    ];
    let r = http(&sim, "PUT", "/jb-test/copy", &copy, Some(b"")).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<CopyObjectResult>"), "{}", r.text());
    assert_eq!(
        http(&sim, "PUT", "/jb-test/copy", &copy, Some(b""))
            .await
            .status,
        412
    );
    let gone = [("x-goog-copy-source", "/jb-test/gone")];
    let r = http(&sim, "PUT", "/jb-test/copy", &gone, Some(b"")).await;
    assert_eq!((r.status, r.code().as_deref()), (404, Some("NoSuchKey")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_and_http_conditionals() {
    let sim = start().await;
    let put = http(&sim, "PUT", OBJ, &[], Some(b"0123456789")).await;
    let etag = put.header("etag").unwrap().to_owned();
    let r = http(&sim, "GET", OBJ, &[("range", "bytes=2-4")], None).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, b"234");
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    assert_eq!(r.header("content-length"), Some("3"));
    let r = http(&sim, "GET", OBJ, &[("range", "bytes=-3")], None).await;
    assert_eq!((r.status, r.body.as_slice()), (206, &b"789"[..]));
    let r = http(&sim, "GET", OBJ, &[("range", "bytes=10-")], None).await;
    assert_eq!((r.status, r.code().as_deref()), (416, Some("InvalidRange")));
    assert_eq!(r.header("content-range"), Some("bytes */10"));
    // A malformed range is ignored: the whole object.
    let r = http(&sim, "GET", OBJ, &[("range", "bytes=4-2")], None).await;
    assert_eq!((r.status, r.body.len()), (200, 10));

    assert_eq!(
        http(&sim, "GET", OBJ, &[("if-match", &etag)], None)
            .await
            .status,
        200
    );
    assert_eq!(
        http(&sim, "GET", OBJ, &[("if-match", "\"x\"")], None)
            .await
            .status,
        412
    );
    let nm = http(&sim, "GET", OBJ, &[("if-none-match", &etag)], None).await;
    assert_eq!(nm.status, 304);
    assert!(nm.body.is_empty());
    let future = "Fri, 01 Jan 2100 00:00:00 GMT";
    let past = "Sat, 01 Jan 2000 00:00:00 GMT";
    assert_eq!(
        http(&sim, "GET", OBJ, &[("if-modified-since", future)], None)
            .await
            .status,
        304
    );
    assert_eq!(
        http(&sim, "GET", OBJ, &[("if-modified-since", past)], None)
            .await
            .status,
        200
    );
    assert_eq!(
        http(&sim, "GET", OBJ, &[("if-unmodified-since", past)], None)
            .await
            .status,
        412
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_a_length() {
    let sim = start().await;
    let r = http(&sim, "PUT", OBJ, &[], None).await;
    assert_eq!(
        (r.status, r.code().as_deref()),
        (411, Some("MissingContentLength"))
    );
    let r = http(&sim, "POST", "/jb-test/obj?uploads", &[], None).await;
    assert_eq!(r.status, 411);
    assert!(sim.objects(BUCKET).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_v2_documents() {
    let sim = start().await;
    for n in ["a/1", "a/2", "b&c", "d"] {
        http(
            &sim,
            "PUT",
            &format!("/jb-test/{n}").replace('&', "%26"),
            &[],
            Some(b"xy"),
        )
        .await;
    }
    let r = http(&sim, "GET", "/jb-test?list-type=2&max-keys=2", &[], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/xml; charset=UTF-8")
    );
    let t = r.text();
    assert!(t.starts_with("<?xml"), "{t}");
    assert_eq!(xml_all(&t, "Key"), ["a/1", "a/2"]);
    assert_eq!(r.xml("IsTruncated").as_deref(), Some("true"));
    assert_eq!(r.xml("KeyCount").as_deref(), Some("2"));
    assert_eq!(r.xml("MaxKeys").as_deref(), Some("2"));
    assert_eq!(xml_all(&t, "Size"), ["2", "2"]);
    let lm = r.xml("LastModified").unwrap();
    assert!(lm.ends_with('Z') && lm.len() == 24, "{lm}");
    let token = r.xml("NextContinuationToken").unwrap();
    let r = http(
        &sim,
        "GET",
        &format!("/jb-test?list-type=2&max-keys=2&continuation-token={token}"),
        &[],
        None,
    )
    .await;
    // Names are XML-escaped, and read back as they are.
    assert_eq!(xml_all(&r.text(), "Key"), ["b&c", "d"]);
    assert!(r.text().contains("<Key>b&amp;c</Key>"), "{}", r.text());
    assert_eq!(r.xml("IsTruncated").as_deref(), Some("false"));
    assert_eq!(r.xml("NextContinuationToken"), None);

    let r = http(&sim, "GET", "/jb-test?list-type=2&delimiter=/", &[], None).await;
    assert_eq!(xml_all(&r.text(), "Key"), ["b&c", "d"]);
    let cp = r.text();
    let cp = &cp[cp.find("<CommonPrefixes>").unwrap()..];
    assert_eq!(xml_all(cp, "Prefix"), ["a/"]);
    assert_eq!(r.xml("KeyCount").as_deref(), Some("3"));

    let r = http(
        &sim,
        "GET",
        "/jb-test?list-type=2&prefix=a%2F&start-after=a%2F1",
        &[],
        None,
    )
    .await;
    assert_eq!(xml_all(&r.text(), "Key"), ["a/2"]);
    let r = http(
        &sim,
        "GET",
        "/jb-test?list-type=2&encoding-type=url&prefix=b",
        &[],
        None,
    )
    .await;
    assert_eq!(xml_all(&r.text(), "Key"), ["b%26c"]);
    let bad = http(
        &sim,
        "GET",
        "/jb-test?list-type=2&continuation-token=garbage",
        &[],
        None,
    )
    .await;
    assert_eq!(
        (bad.status, bad.code().as_deref()),
        (400, Some("InvalidArgument"))
    );

    // Version 1: markers.
    let r = http(&sim, "GET", "/jb-test?max-keys=1&delimiter=/", &[], None).await;
    assert_eq!(r.xml("NextMarker").as_deref(), Some("a/"));
    let r = http(
        &sim,
        "GET",
        "/jb-test?max-keys=1&delimiter=/&marker=a/",
        &[],
        None,
    )
    .await;
    assert_eq!(xml_all(&r.text(), "Key"), ["b&c"]);
}

fn upload_id(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("<InitiateMultipartUploadResult"),
        "{}",
        r.text()
    );
    r.xml("UploadId").expect("UploadId")
}

fn complete_doc(parts: &[(u32, &str)]) -> Vec<u8> {
    let mut s = String::from("<CompleteMultipartUpload>");
    for (n, e) in parts {
        s.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
        ));
    }
    s.push_str("</CompleteMultipartUpload>");
    s.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_multipart_upload() {
    let sim = start().await;
    let r = http(
        &sim,
        "POST",
        "/jb-test/mp?uploads",
        &[
            ("content-type", "application/x-tar"),
            ("x-goog-meta-k", "v"),
        ],
        Some(b""),
    )
    .await;
    let id = upload_id(&r);
    assert_eq!(r.xml("Key").as_deref(), Some("mp"));
    let big = vec![b'a'; 5 << 20];
    let p1 = http(
        &sim,
        "PUT",
        &format!("/jb-test/mp?partNumber=1&uploadId={id}"),
        &[],
        Some(&big),
    )
    .await;
    assert_eq!(p1.status, 200);
    let e1 = p1.header("etag").unwrap().to_owned();
    let p2 = http(
        &sim,
        "PUT",
        &format!("/jb-test/mp?partNumber=2&uploadId={id}"),
        &[],
        Some(b"end"),
    )
    .await;
    let e2 = p2.header("etag").unwrap().to_owned();
    assert_eq!(
        e2, "\"7f021a1415b86f2d013b2618fb31ae53\"",
        "MD5 of the part"
    );
    let bad = http(
        &sim,
        "PUT",
        &format!("/jb-test/mp?partNumber=0&uploadId={id}"),
        &[],
        Some(b"x"),
    )
    .await;
    assert_eq!(
        (bad.status, bad.code().as_deref()),
        (400, Some("InvalidArgument"))
    );

    // Invisible until completed: not readable, not listed.
    assert_eq!(
        http(&sim, "GET", "/jb-test/mp", &[], None).await.status,
        404
    );
    let l = http(&sim, "GET", "/jb-test?list-type=2", &[], None).await;
    assert_eq!(l.xml("KeyCount").as_deref(), Some("0"));

    let post = |doc: Vec<u8>| {
        let sim = sim.clone();
        let id = id.clone();
        async move {
            http(
                &sim,
                "POST",
                &format!("/jb-test/mp?uploadId={id}"),
                &[],
                Some(&doc),
            )
            .await
        }
    };
    let r = post(complete_doc(&[(2, &e2), (1, &e1)])).await;
    assert_eq!(
        (r.status, r.code().as_deref()),
        (400, Some("InvalidPartOrder"))
    );
    let r = post(complete_doc(&[(1, &e1), (2, "\"0000\"")])).await;
    assert_eq!((r.status, r.code().as_deref()), (400, Some("InvalidPart")));
    let r = post(complete_doc(&[(1, &e1), (3, &e2)])).await;
    assert_eq!((r.status, r.code().as_deref()), (400, Some("InvalidPart")));
    let r = post(b"<nope".to_vec()).await;
    assert_eq!((r.status, r.code().as_deref()), (400, Some("MalformedXML")));
    let r = http(
        &sim,
        "POST",
        "/jb-test/mp?uploadId=unknown",
        &[],
        Some(&complete_doc(&[(1, &e1)])),
    )
    .await;
    assert_eq!((r.status, r.code().as_deref()), (404, Some("NoSuchUpload")));
    assert_eq!(sim.in_progress_uploads().len(), 1);

    let r = post(complete_doc(&[(1, &e1), (2, &e2)])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("<CompleteMultipartUploadResult"),
        "{}",
        r.text()
    );
    let etag = r.xml("ETag").unwrap();
    assert!(etag.ends_with("-2\""), "{etag}");
    assert!(r.header("x-goog-generation").is_some());
    let g = http(&sim, "HEAD", "/jb-test/mp", &[], None).await;
    assert_eq!(
        g.header("content-length"),
        Some(((5 << 20) + 3).to_string().as_str())
    );
    assert_eq!(g.header("content-type"), Some("application/x-tar"));
    assert_eq!(g.header("x-goog-meta-k"), Some("v"));
    // Not a composite object.
    assert_eq!(g.header("x-goog-component-count"), None);
    assert_eq!(g.header("etag"), Some(etag.as_str()));
    // No MD5 for an object assembled from parts.
    assert_eq!(g.all("x-goog-hash").len(), 1);
    // Completing it again (a retry after a lost answer) gets the same answer and
    // changes nothing.
    let generation = g.header("x-goog-generation").map(str::to_owned);
    let r = post(complete_doc(&[(1, &e1), (2, &e2)])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("x-goog-generation").map(str::to_owned), generation);
    // Aborting a completed upload succeeds and leaves its object alone.
    let r = http(
        &sim,
        "DELETE",
        &format!("/jb-test/mp?uploadId={id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        sim.object("jb-test", "mp").unwrap().data.len(),
        (5 << 20) + 3
    );

    // Abort.
    let id = upload_id(&http(&sim, "POST", "/jb-test/ab?uploads", &[], Some(b"")).await);
    http(
        &sim,
        "PUT",
        &format!("/jb-test/ab?partNumber=1&uploadId={id}"),
        &[],
        Some(b"x"),
    )
    .await;
    assert_eq!(
        http(
            &sim,
            "DELETE",
            &format!("/jb-test/ab?uploadId={id}"),
            &[],
            None
        )
        .await
        .status,
        204
    );
    let again = http(
        &sim,
        "DELETE",
        &format!("/jb-test/ab?uploadId={id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(
        (again.status, again.code().as_deref()),
        (404, Some("NoSuchUpload"))
    );
    let part = http(
        &sim,
        "PUT",
        &format!("/jb-test/ab?partNumber=2&uploadId={id}"),
        &[],
        Some(b"x"),
    )
    .await;
    assert_eq!(part.code().as_deref(), Some("NoSuchUpload"));
    assert!(sim.object(BUCKET, "ab").is_none());
    assert!(sim.in_progress_uploads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsimulated_features_say_so() {
    let sim = start().await;
    let r = http(&sim, "GET", "/jb-test?acl", &[], None).await;
    assert_eq!(
        (r.status, r.code().as_deref()),
        (501, Some("NotImplemented"))
    );
    let r = http(&sim, "GET", "/jb-test/o?uploadId=x", &[], None).await;
    assert_eq!(r.status, 501);
}
