//! Injected faults, seen on the wire and through object_store's retries.

mod common;

use common::*;
use jetbridge_gcs_sim::SimControls;
use jetbridge_gcs_sim::{Fault, FaultAction};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_statuses_have_xml_error_bodies() {
    let sim = start().await;
    for (status, code) in [
        (500, "InternalError"),
        (503, "ServiceUnavailable"),
        (429, "SlowDown"),
        (403, "AccessDenied"),
    ] {
        sim.inject(Fault::on(
            "PUT",
            "/jb-test/obj",
            1,
            FaultAction::Status(status),
        ));
        let r = http(&sim, "PUT", "/jb-test/obj", &[], Some(b"x")).await;
        assert_eq!((r.status, r.code().as_deref()), (status, Some(code)));
        // The request was not performed.
        assert!(sim.object(BUCKET, "obj").is_none());
    }
    // Used up: the next request goes through.
    assert_eq!(
        http(&sim, "PUT", "/jb-test/obj", &[], Some(b"x"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_match_method_decoded_path_and_query() {
    let sim = start().await;
    // Object names can be given decoded; the query narrows to part uploads.
    sim.inject(
        Fault::on("PUT", "dir/data", 1, FaultAction::Status(500)).with_query("partNumber=2"),
    );
    assert_eq!(
        http(&sim, "PUT", "/jb-test/dir%2Fdata", &[], Some(b"x"))
            .await
            .status,
        200
    );
    let id = http(&sim, "POST", "/jb-test/dir%2Fdata?uploads", &[], Some(b""))
        .await
        .xml("UploadId")
        .unwrap();
    let part = |n: u32| format!("/jb-test/dir%2Fdata?partNumber={n}&uploadId={id}");
    assert_eq!(
        http(&sim, "PUT", &part(1), &[], Some(b"x")).await.status,
        200
    );
    assert_eq!(
        http(&sim, "PUT", &part(2), &[], Some(b"x")).await.status,
        500
    );
    assert_eq!(
        http(&sim, "PUT", &part(2), &[], Some(b"x")).await.status,
        200
    );
    assert_eq!(sim.in_progress_uploads()[0].parts, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_and_delays() {
    let sim = start().await;
    sim.inject(Fault::on("GET", "/jb-test", 1, FaultAction::DropConnection));
    assert!(
        raw(&sim, "GET", "/jb-test?list-type=2", &[], None)
            .await
            .is_none()
    );
    // Dropped after the work is done: the object exists, the client heard nothing.
    sim.inject(Fault::on(
        "PUT",
        "committed",
        1,
        FaultAction::DropAfterCommit,
    ));
    assert!(
        raw(&sim, "PUT", "/jb-test/committed", &[], Some(b"x"))
            .await
            .is_none()
    );
    assert!(sim.object(BUCKET, "committed").is_some());
    sim.inject(Fault::any(
        1,
        FaultAction::Delay(Duration::from_millis(300)),
    ));
    let t = Instant::now();
    assert_eq!(http(&sim, "GET", "/", &[], None).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let seen: Vec<(String, String)> = sim
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        seen,
        [
            ("GET".to_owned(), "/jb-test".to_owned()),
            ("PUT".to_owned(), "/jb-test/committed".to_owned()),
            ("GET".to_owned(), "/".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_retries_through_passing_faults() {
    let sim = start().await;
    let s = gcs(&sim, 3);
    let p = Path::from("retried");
    // Two 503s and a dropped connection, then the real answer.
    sim.inject(Fault::on("PUT", "retried", 2, FaultAction::Status(503)));
    sim.inject(Fault::on("PUT", "retried", 1, FaultAction::DropConnection));
    s.put(&p, PutPayload::from_static(b"ok")).await.unwrap();
    let puts = sim.requests().iter().filter(|r| r.method == "PUT").count();
    assert_eq!(puts, 4);
    sim.inject(Fault::on("GET", "retried", 2, FaultAction::Status(500)));
    let got = s.get(&p).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_gives_up_after_its_retries() {
    let sim = start().await;
    let s = gcs(&sim, 2);
    sim.inject(Fault::any(usize::MAX, FaultAction::Status(503)));
    let e = s.head(&Path::from("x")).await.unwrap_err();
    assert!(matches!(e, object_store::Error::Generic { .. }), "{e:?}");
    // The first attempt and two retries.
    assert_eq!(sim.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_lost_after_commit_is_retried_into_the_same_answer() {
    // Completing is idempotent for object_store, so a lost answer is retried; Cloud
    // Storage answers a repeated completion with the same result, so the write succeeds.
    let sim = start().await;
    let s = gcs(&sim, 2);
    let p = Path::from("lost-answer");
    let mut up = s.put_multipart(&p).await.unwrap();
    up.put_part(PutPayload::from_static(b"only part"))
        .await
        .unwrap();
    sim.inject(
        Fault::on("POST", "lost-answer", 1, FaultAction::DropAfterCommit).with_query("uploadId"),
    );
    let done = up.complete().await.unwrap();
    let o = sim.object(BUCKET, "lost-answer").unwrap();
    assert_eq!(&o.data[..], b"only part");
    assert_eq!(done.e_tag.as_deref(), Some(o.etag.as_str()));
    let completions = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.query.starts_with("uploadId"))
        .count();
    assert_eq!(completions, 2, "the lost answer was asked for again");
}
