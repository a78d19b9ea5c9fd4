//! Secrets through kube-rs: CRUD and errors, selectors, patches, garbage
//! collection with the owning pod, the kubelet's `envFrom`/`secretKeyRef`
//! resolution, and faults on secret paths.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use jetbridge_kube_sim::SimControls;
use jetbridge_kube_sim::{Fault, FaultAction};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{
    Api, AttachParams, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams,
    PropagationPolicy, WatchEvent, WatchParams,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncReadExt;

fn secrets(client: &kube::Client) -> Api<Secret> {
    Api::namespaced(client.clone(), NS)
}

/// A secret with labels and `data` given as text.
fn secret(name: &str, labels: Value, data: &[(&str, &str)]) -> Secret {
    let data: BTreeMap<String, ByteString> = data
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
    Secret {
        metadata: serde_json::from_value(json!({"name": name, "labels": labels})).unwrap(),
        data: Some(data),
        ..Secret::default()
    }
}

fn api_error(r: Result<impl std::fmt::Debug, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn text(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// POST a raw JSON body, returning the status code and body.
async fn raw_post(client: &kube::Client, path: &str, body: Value) -> (u16, Value) {
    let req = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    match client.request::<Value>(req).await {
        Ok(v) => (201, v),
        Err(kube::Error::Api(s)) => (s.code, serde_json::to_value(&*s).unwrap()),
        Err(e) => panic!("{e:?}"),
    }
}

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while api.get_opt(name).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} still exists"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn owner(p: &Pod) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "name": p.metadata.name, "uid": p.metadata.uid,
    })
}

async fn exec_out(pods: &Api<Pod>, pod: &str, container: &str, argv: &[&str]) -> String {
    let ap = AttachParams::default()
        .container(container)
        .stdout(true)
        .stderr(false);
    let mut proc = pods.exec(pod, argv.to_vec(), &ap).await.unwrap();
    let status = proc.take_status().unwrap();
    let mut out = String::new();
    proc.stdout()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    let status = status.await.expect("a status frame");
    assert_eq!(status.status.as_deref(), Some("Success"), "{status:?}");
    out
}

fn pod_with(name: &str, containers: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": containers},
    }))
    .unwrap()
}

fn waiting_reason(p: &Pod, container: &str) -> Option<(String, String)> {
    let cs = p.status.as_ref()?.container_statuses.as_ref()?;
    let w = cs
        .iter()
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?;
    Some((w.reason.clone()?, w.message.clone().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_defaults_conflicts_and_invalid_secrets() {
    let (sim, client) = start().await;
    let api = secrets(&client);
    let p = create(&common::api(&client), &pod("p", &["sleep", "infinity"])).await;

    let mut s = secret("s1", json!({"app": "jb"}), &[("a", "x"), ("b", "old")]);
    s.string_data = Some([("b".to_string(), "y".to_string())].into());
    let created = api.create(&PostParams::default(), &s).await.unwrap();
    let m = &created.metadata;
    assert!(m.uid.as_deref().is_some_and(|u| !u.is_empty()));
    assert_eq!(m.namespace.as_deref(), Some(NS));
    assert!(m.creation_timestamp.is_some());
    let created_rv: u64 = m.resource_version.as_deref().unwrap().parse().unwrap();
    assert!(created_rv > rv(&p), "the same global counter as pods");
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert_eq!(text(&created, "a").as_deref(), Some("x"));
    assert_eq!(
        text(&created, "b").as_deref(),
        Some("y"),
        "stringData wins over data"
    );
    assert!(created.string_data.is_none());
    let got = api.get("s1").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    assert_eq!(got.data, created.data);
    // The control handle shows the stored form: base64 data.
    let listed = sim.secrets(NS);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["data"]["a"], "eA==");

    let st = api_error(api.create(&PostParams::default(), &s).await);
    assert_eq!((st.code, st.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(st.message, "secrets \"s1\" already exists");
    let st = api_error(api.get("missing").await);
    assert_eq!((st.code, st.reason.as_str()), (404, "NotFound"));
    assert_eq!(st.message, "secrets \"missing\" not found");

    for bad in ["Bad_Name".to_string(), "a".repeat(254)] {
        let st = api_error(
            api.create(&PostParams::default(), &secret(&bad, json!({}), &[]))
                .await,
        );
        assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"), "{bad}");
        assert!(
            st.message.contains("metadata.name: Invalid value"),
            "{st:?}"
        );
    }
    let path = format!("/api/v1/namespaces/{NS}/secrets");
    let (code, body) = raw_post(
        &client,
        &path,
        json!({"metadata": {"name": "b64"}, "data": {"k": "not base64!"}}),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("illegal base64 data at input byte 3")
    );
    let (code, body) = raw_post(
        &client,
        &path,
        json!({"metadata": {"name": "key"}, "stringData": {"bad key": "v"}}),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["details"]["causes"][0]["field"], "data[bad key]");
    let (code, body) = raw_post(
        &client,
        &path,
        json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "stringData": {"tls.crt": "c"}}),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["details"]["causes"][0]["field"], "data[tls.key]");

    let mut generated = secret("", json!({}), &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let g = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let gname = g.metadata.name.unwrap();
    assert!(gname.starts_with("gen-") && gname.len() == 9, "{gname}");
    assert!(g.data.is_none(), "no data, no field");

    // Dry runs answer without storing.
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    api.create(&dry, &secret("dry", json!({}), &[]))
        .await
        .unwrap();
    assert!(api.get_opt("dry").await.unwrap().is_none());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_and_delete_by_label() {
    let (sim, client) = start().await;
    let api = secrets(&client);
    let before = sim.resource_version().to_string();
    for (name, app) in [("s-a", "x"), ("s-b", "x"), ("s-c", "y")] {
        api.create(
            &PostParams::default(),
            &secret(name, json!({"app": app}), &[]),
        )
        .await
        .unwrap();
    }
    let names = |l: kube::core::ObjectList<Secret>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|s| s.metadata.name.unwrap())
            .collect()
    };
    let x = api
        .list(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    assert_eq!(names(x), ["s-a", "s-b"]);
    let by_field = api
        .list(&ListParams::default().fields("type=Opaque,metadata.name!=s-a"))
        .await
        .unwrap();
    assert_eq!(names(by_field), ["s-b", "s-c"]);
    let st = api_error(
        api.list(&ListParams::default().fields("status.phase=Running"))
            .await,
    );
    assert_eq!(st.code, 400, "pod fields are not secret fields");
    // Secrets are listed across namespaces too, and are not pods.
    let all: Api<Secret> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        3
    );
    assert!(
        common::api(&client)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A watch from before the creations sees the secrets and not the pod
    // created in between.
    create(&common::api(&client), &pod("p", &["true"])).await;
    let mut events = api
        .watch(&WatchParams::default(), &before)
        .await
        .unwrap()
        .boxed();
    for want in ["s-a", "s-b", "s-c"] {
        match events.try_next().await.unwrap() {
            Some(WatchEvent::Added(s)) => assert_eq!(s.metadata.name.as_deref(), Some(want)),
            other => panic!("unexpected {other:?}"),
        }
    }

    let deleted = api.delete("s-c", &DeleteParams::default()).await.unwrap();
    let status = deleted.right().expect("secrets answer a Status");
    assert_eq!(
        status.status,
        Some(kube::core::response::StatusSummary::Success)
    );
    let details = status.details.unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("s-c", "secrets")
    );
    assert!(!details.uid.is_empty());
    assert_eq!(
        api_error(api.delete("s-c", &DeleteParams::default()).await).code,
        404
    );
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Deleted(s)) => assert_eq!(s.metadata.name.as_deref(), Some("s-c")),
        other => panic!("unexpected {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collection_and_preconditions() {
    let (sim, client) = start().await;
    let api = secrets(&client);
    for (name, app) in [("s-a", "x"), ("s-b", "x"), ("s-c", "y")] {
        api.create(
            &PostParams::default(),
            &secret(name, json!({"app": app}), &[]),
        )
        .await
        .unwrap();
    }
    let gone = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=x"),
        )
        .await
        .unwrap();
    let list = gone.left().expect("the deleted secrets");
    assert_eq!(list.items.len(), 2);
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.metadata.name.unwrap())
        .collect();
    assert_eq!(left, ["s-c"]);

    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let st = api_error(api.delete("s-c", &dp).await);
    assert_eq!((st.code, st.reason.as_str()), (409, "Conflict"));
    assert!(api.get_opt("s-c").await.unwrap().is_some());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_set_owner_references_and_respect_immutability() {
    let (sim, client) = start().await;
    let api = secrets(&client);
    let pods = common::api(&client);
    let p = create(&pods, &pod("p", &["sleep", "infinity"])).await;
    let q = create(&pods, &pod("q", &["sleep", "infinity"])).await;
    let mut s = secret("env", json!({"app": "jb"}), &[("e0", "v")]);
    s.immutable = Some(true);
    let created = api.create(&PostParams::default(), &s).await.unwrap();

    let pp = PatchParams::default();
    let patch = json!({"metadata": {"ownerReferences": [owner(&p)]}});
    let owned = api.patch("env", &pp, &Patch::Merge(&patch)).await.unwrap();
    let refs = owned.metadata.owner_references.clone().unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(Some(&refs[0].uid), p.metadata.uid.as_ref());
    assert_ne!(
        owned.metadata.resource_version, created.metadata.resource_version,
        "a change is a new version"
    );
    assert_eq!(text(&owned, "e0").as_deref(), Some("v"), "data untouched");

    // Strategic merge adds a reference by uid; merge patch replaces the list.
    let patch = json!({"metadata": {"ownerReferences": [owner(&q)], "labels": {"extra": "1"}}});
    let both = api
        .patch("env", &pp, &Patch::Strategic(&patch))
        .await
        .unwrap();
    assert_eq!(both.metadata.owner_references.unwrap().len(), 2);
    assert_eq!(both.metadata.labels.unwrap().len(), 2);

    // An immutable secret's data cannot change; its metadata can.
    let st = api_error(
        api.patch(
            "env",
            &pp,
            &Patch::Merge(&json!({"stringData": {"e0": "new"}})),
        )
        .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));
    assert!(st.message.contains("data: Forbidden"), "{st:?}");
    let st = api_error(
        api.patch("env", &pp, &Patch::Merge(&json!({"immutable": false})))
            .await,
    );
    assert_eq!(st.code, 422);

    // Optimistic concurrency and unsupported patch types.
    let stale = json!({"metadata": {"resourceVersion": created.metadata.resource_version, "labels": {"x": "y"}}});
    let st = api_error(api.patch("env", &pp, &Patch::Merge(&stale)).await);
    assert_eq!((st.code, st.reason.as_str()), (409, "Conflict"));
    let req = axum::http::Request::patch(format!("/api/v1/namespaces/{NS}/secrets/env"))
        .header("content-type", "application/json-patch+json")
        .body(b"[]".to_vec())
        .unwrap();
    let st = api_error(client.request::<Value>(req).await);
    assert_eq!(st.code, 415);
    assert_eq!(
        api_error(api.patch("nope", &pp, &Patch::Merge(&json!({}))).await).code,
        404
    );

    // A mutable secret takes new data, from stringData too.
    api.create(
        &PostParams::default(),
        &secret("m", json!({}), &[("a", "1")]),
    )
    .await
    .unwrap();
    let m = api
        .patch("m", &pp, &Patch::Merge(&json!({"stringData": {"b": "2"}})))
        .await
        .unwrap();
    assert_eq!(
        (text(&m, "a").as_deref(), text(&m, "b").as_deref()),
        (Some("1"), Some("2"))
    );
    let mut replaced = m.clone();
    replaced.data = Some([("c".to_string(), ByteString(b"3".to_vec()))].into());
    let r = api
        .replace("m", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(r.data.unwrap().keys().collect::<Vec<_>>(), ["c"]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_secrets_go_with_their_pod() {
    let (sim, client) = start().await;
    let api = secrets(&client);
    let pods = common::api(&client);
    // A pause program exits on TERM; `sleep` as PID 1 would hold p for its 30 s grace.
    let p = create(&pods, &pod("p", &["/tools/pause"])).await;
    let q = create(&pods, &pod("q", &["sleep", "infinity"])).await;
    wait_phase(&pods, "p", "Running").await;
    let with_owners = |name: &str, owners: Value| -> Secret {
        let mut s = secret(name, json!({}), &[]);
        s.metadata.owner_references = Some(serde_json::from_value(owners).unwrap());
        s
    };
    let pp = PostParams::default();
    api.create(&pp, &with_owners("only-p", json!([owner(&p)])))
        .await
        .unwrap();
    api.create(&pp, &with_owners("p-and-q", json!([owner(&p), owner(&q)])))
        .await
        .unwrap();
    api.create(&pp, &secret("unowned", json!({}), &[]))
        .await
        .unwrap();

    // While the pod terminates (held there by a frozen kubelet) its owner
    // still exists, so the secret stays.
    sim.freeze_kubelet(true);
    pods.delete("p", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pods.get_opt("p").await.unwrap().is_some());
    assert!(api.get_opt("only-p").await.unwrap().is_some());
    sim.freeze_kubelet(false);
    wait_gone(&pods, "p").await;
    assert!(api.get_opt("only-p").await.unwrap().is_none());
    let shared = api.get("p-and-q").await.unwrap();
    let refs = shared.metadata.owner_references.unwrap();
    assert_eq!(refs.len(), 1, "only the reference to the deleted pod goes");
    assert_eq!(Some(&refs[0].uid), q.metadata.uid.as_ref());
    assert!(api.get_opt("unowned").await.unwrap().is_some());

    // A secret whose owner is already gone is collected at once.
    let late = api
        .create(&pp, &with_owners("late", json!([owner(&p)])))
        .await;
    assert!(late.is_ok(), "the create itself succeeds: {late:?}");
    assert!(api.get_opt("late").await.unwrap().is_none());

    // Evicted: the pod object stays, and so does the secret, until deletion.
    api.create(&pp, &with_owners("of-q", json!([owner(&q)])))
        .await
        .unwrap();
    wait_phase(&pods, "q", "Running").await;
    sim.evict(NS, "q");
    wait_phase(&pods, "q", "Failed").await;
    assert!(api.get_opt("of-q").await.unwrap().is_some());
    pods.delete("q", &DeleteParams::default()).await.unwrap();
    wait_gone(&pods, "q").await;
    assert!(api.get_opt("of-q").await.unwrap().is_none());
    assert!(
        api.get_opt("p-and-q").await.unwrap().is_none(),
        "its last owner is gone"
    );

    // Orphan propagation keeps dependents and drops the reference.
    let r = create(&pods, &pod("r", &["sleep", "infinity"])).await;
    api.create(&pp, &with_owners("of-r", json!([owner(&r)])))
        .await
        .unwrap();
    let orphan = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete("r", &orphan).await.unwrap();
    wait_gone(&pods, "r").await;
    let kept = api.get("of-r").await.unwrap();
    assert!(kept.metadata.owner_references.is_none_or(|r| r.is_empty()));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_from_secrets_reaches_the_container_and_its_execs() {
    let (sim, client) = start().await;
    let api = secrets(&client);
    let pods = common::api(&client);
    let pp = PostParams::default();
    api.create(
        &pp,
        &secret(
            "env",
            json!({}),
            &[("A", "1"), ("dash-key", "2"), ("9x", "3")],
        ),
    )
    .await
    .unwrap();
    api.create(&pp, &secret("keys", json!({}), &[("token", "t0k")]))
        .await
        .unwrap();
    let p = pod_with(
        "e",
        json!([{
            "name": "main", "image": "busybox", "command": ["sleep", "infinity"],
            "envFrom": [
                {"secretRef": {"name": "env"}},
                {"prefix": "P_", "secretRef": {"name": "env"}},
                {"secretRef": {"name": "absent", "optional": true}},
            ],
            "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "token"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "nokey", "optional": true}}},
                {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}},
                {"name": "DERIVED", "value": "$(A)-$(TOKEN)"},
                {"name": "A", "value": "env wins over envFrom"},
            ],
        }]),
    );
    create(&pods, &p).await;
    wait_phase(&pods, "e", "Running").await;

    let env = exec_out(&pods, "e", "main", &["env"]).await;
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("TOKEN"), Some(&"t0k"));
    assert_eq!(vars.get("P_A"), Some(&"1"));
    assert_eq!(vars.get("DERIVED"), Some(&"1-t0k"));
    assert_eq!(vars.get("A"), Some(&"env wins over envFrom"));
    // Kubelets since 1.30 pass keys that are not C identifiers through.
    assert_eq!(vars.get("dash-key"), Some(&"2"));
    assert_eq!(vars.get("9x"), Some(&"3"));
    assert!(
        !vars.contains_key("OPT") && !vars.contains_key("GONE"),
        "{env}"
    );
    let echoed = exec_out(&pods, "e", "main", &["sh", "-c", "echo $TOKEN"]).await;
    assert_eq!(echoed, "t0k\n");

    // Values are read when the container starts: later changes do not reach it.
    api.patch(
        "keys",
        &PatchParams::default(),
        &Patch::Merge(&json!({"stringData": {"token": "changed"}})),
    )
    .await
    .unwrap();
    let echoed = exec_out(&pods, "e", "main", &["sh", "-c", "echo $TOKEN"]).await;
    assert_eq!(echoed, "t0k\n");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_holds_the_container_until_it_appears() {
    let (sim, client) = start().await;
    let api = secrets(&client);
    let pods = common::api(&client);
    let p = pod_with(
        "w",
        json!([
            {"name": "main", "image": "busybox", "command": ["sh", "-c", "echo $V"],
             "envFrom": [{"secretRef": {"name": "later"}}]},
            {"name": "helper", "image": "busybox", "command": ["sleep", "infinity"]},
        ]),
    );
    create(&pods, &p).await;
    let blocked = wait_for(&pods, "w", "CreateContainerConfigError", |p| {
        waiting_reason(p, "main").is_some_and(|(r, _)| r == "CreateContainerConfigError")
    })
    .await;
    assert_eq!(
        waiting_reason(&blocked, "main").unwrap().1,
        "secret \"later\" not found"
    );
    // The other container runs meanwhile; the pod stays Pending, not Ready.
    let blocked = wait_for(&pods, "w", "helper running", |p| {
        main_state_of(p, "helper").is_some_and(|s| s.running.is_some())
    })
    .await;
    assert_eq!(phase(&blocked), "Pending");
    assert_eq!(condition(&blocked, "Ready").unwrap().status, "False");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(phase(&pods.get("w").await.unwrap()), "Pending");
    assert_eq!(
        exec_out(&pods, "w", "helper", &["sh", "-c", "echo up"]).await,
        "up\n"
    );

    api.create(
        &PostParams::default(),
        &secret("later", json!({}), &[("V", "hello")]),
    )
    .await
    .unwrap();
    wait_for(&pods, "w", "main started", |p| {
        main_state_of(p, "main").is_some_and(|s| s.waiting.is_none())
    })
    .await;
    let log = LogParams {
        container: Some("main".into()),
        ..LogParams::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = pods.logs("w", &log).await.unwrap_or_default();
        if text == "hello\n" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "log {text:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A missing key: the kubelet's own message, then the start once it is added.
    api.create(
        &PostParams::default(),
        &secret("k", json!({}), &[("other", "x")]),
    )
    .await
    .unwrap();
    let p = pod_with(
        "k",
        json!([{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo $K"],
                "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "k", "key": "want"}}}]}]),
    );
    create(&pods, &p).await;
    let blocked = wait_for(&pods, "k", "missing key", |p| {
        waiting_reason(p, "main").is_some_and(|(r, _)| r == "CreateContainerConfigError")
    })
    .await;
    assert_eq!(
        waiting_reason(&blocked, "main").unwrap().1,
        format!("couldn't find key want in Secret {NS}/k")
    );
    api.patch(
        "k",
        &PatchParams::default(),
        &Patch::Merge(&json!({"stringData": {"want": "got"}})),
    )
    .await
    .unwrap();
    wait_phase(&pods, "k", "Succeeded").await;
    assert_eq!(
        pods.logs("k", &LogParams::default()).await.unwrap(),
        "got\n"
    );

    // A pod that never got its secret is deleted like any other.
    let p = pod_with(
        "never",
        json!([{"name": "main", "image": "busybox", "command": ["true"],
                "envFrom": [{"secretRef": {"name": "never"}}]}]),
    );
    create(&pods, &p).await;
    wait_for(&pods, "never", "blocked", |p| {
        waiting_reason(p, "main").is_some_and(|(r, _)| r == "CreateContainerConfigError")
    })
    .await;
    pods.delete("never", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pods, "never").await;
    sim.shutdown().await;
}

fn main_state_of<'a>(
    p: &'a Pod,
    container: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerState> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?
        .state
        .as_ref()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_records_on_secret_paths() {
    let (sim, _) = start().await;
    let api = secrets(&client(&sim, false));
    let pp = PostParams::default();

    sim.inject(Fault::on("POST", "/secrets", 1, FaultAction::Status(500)));
    let st = api_error(api.create(&pp, &secret("f", json!({}), &[])).await);
    assert_eq!((st.code, st.reason.as_str()), (500, "InternalError"));
    assert!(api.get_opt("f").await.unwrap().is_none(), "never created");

    sim.inject(Fault::on("GET", "/secrets/f", 1, FaultAction::Status(503)));
    assert_eq!(api_error(api.get("f").await).code, 503);

    // Committed, then the answer is lost: a retry sees AlreadyExists.
    sim.inject(Fault::on(
        "POST",
        "/secrets",
        1,
        FaultAction::DropAfterCommit,
    ));
    let err = api
        .create(&pp, &secret("f", json!({}), &[]))
        .await
        .unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
    assert_eq!(
        api_error(api.create(&pp, &secret("f", json!({}), &[])).await).code,
        409
    );

    sim.inject(Fault::on(
        "DELETE",
        "/secrets/f",
        1,
        FaultAction::DropConnection,
    ));
    let err = api.delete("f", &DeleteParams::default()).await.unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
    assert!(api.get_opt("f").await.unwrap().is_some(), "not performed");

    // kube's own retry of 429 covers secret patches too.
    let retrying = secrets(&client(&sim, true));
    sim.inject(Fault::on(
        "PATCH",
        "/secrets/f",
        1,
        FaultAction::Status(429),
    ));
    sim.reset_requests();
    retrying
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    let reqs = sim.requests();
    let patches: Vec<_> = reqs.iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 2, "{reqs:?}");
    assert_eq!(
        patches[0].path,
        format!("/api/v1/namespaces/{NS}/secrets/f")
    );

    sim.inject(Fault::on(
        "DELETE",
        "/secrets",
        1,
        FaultAction::Delay(Duration::from_millis(300)),
    ));
    let t = std::time::Instant::now();
    api.delete("f", &DeleteParams::default()).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(sim.secrets(NS).is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_secrets() {
    let (sim, client) = start().await;
    let req = axum::http::Request::get("/api/v1")
        .body(Vec::new())
        .unwrap();
    let res: Value = client.request(req).await.unwrap();
    let secrets = res["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "secrets")
        .expect("secrets in the APIResourceList")
        .clone();
    assert_eq!(secrets["kind"], "Secret");
    assert_eq!(secrets["namespaced"], true);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_env_references_are_validated() {
    let (sim, client) = start().await;
    let pods = common::api(&client);
    let bad = [
        json!({"envFrom": [{"prefix": "A=", "secretRef": {"name": "s"}}]}),
        json!({"envFrom": [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}]}),
        json!({"envFrom": [{"secretRef": {"name": "Not_A_Name"}}]}),
        json!({"env": [{"name": "a=b", "value": "x"}]}),
        json!({"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": ""}}}]}),
        json!({"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a b"}}}]}),
    ];
    for (i, extra) in bad.into_iter().enumerate() {
        let mut c = json!({"name": "main", "image": "busybox", "command": ["true"]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        let st = api_error(
            pods.create(
                &PostParams::default(),
                &pod_with(&format!("p{i}"), json!([c])),
            )
            .await,
        );
        assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"), "{extra}");
    }
    // Relaxed names (1.33) are accepted.
    let ok = pod_with(
        "relaxed",
        json!([{"name": "main", "image": "busybox", "command": ["true"],
                "env": [{"name": "my.var-1", "value": "x"}],
                "envFrom": [{"prefix": "p.", "secretRef": {"name": "s", "optional": true}}]}]),
    );
    create(&pods, &ok).await;
    wait_phase(&pods, "relaxed", "Succeeded").await;
    sim.shutdown().await;
}

/// `EnvVarNames::Strict` (1.29-1.31) refuses what `Relaxed` (1.32+) lets through, with
/// `IsEnvVarName`'s words; the pod is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_var_names_follow_the_configured_rule() {
    use jetbridge_kube_sim::{EnvVarNames, SimConfig, Simulator};
    const STRICT: &str = "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')";
    let env_pod = |name: &str, var: &str| {
        pod_with(
            name,
            json!([{"name": "main", "image": "busybox", "command": ["true"],
                    "env": [{"name": var, "value": "x"}]}]),
        )
    };

    let sim = Simulator::start(SimConfig {
        env_var_names: EnvVarNames::Strict,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let client = common::client(&sim, false);
    let pods = common::api(&client);
    let st = api_error(
        pods.create(&PostParams::default(), &env_pod("strict", "1PASSWORD"))
            .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        st.message,
        format!(
            "Pod \"strict\" is invalid: spec.containers[main].env[].name: Invalid value: \"1PASSWORD\": {STRICT}"
        )
    );
    // `IsEnvVarName` also refuses what would change directory; prefixes follow it too.
    for (var, msg) in [
        ("a:b", STRICT),
        ("..x", "must not start with '..'"),
        (".", "must not be '.'"),
        ("", "env[].name: Required value"),
    ] {
        let st = api_error(
            pods.create(&PostParams::default(), &env_pod("strict", var))
                .await,
        );
        assert!(st.message.ends_with(msg), "{var}: {}", st.message);
    }
    let prefixed = pod_with(
        "prefixed",
        json!([{"name": "main", "image": "busybox", "command": ["true"],
                "envFrom": [{"prefix": "9_", "secretRef": {"name": "s", "optional": true}}]}]),
    );
    let st = api_error(pods.create(&PostParams::default(), &prefixed).await);
    assert!(
        st.message
            .contains("envFrom[].prefix: Invalid value: \"9_\""),
        "{}",
        st.message
    );
    assert!(sim.pods(common::NS).is_empty());
    sim.shutdown().await;

    // The default, as 1.33: the same names are accepted and reach the process.
    let (sim, client) = start().await;
    let pods = common::api(&client);
    for (i, var) in ["1PASSWORD", "a:b", "..x"].into_iter().enumerate() {
        let p = pod_with(
            &format!("relaxed{i}"),
            json!([{"name": "main", "image": "busybox", "command": ["env"],
                    "env": [{"name": var, "value": "x"}]}]),
        );
        create(&pods, &p).await;
        wait_phase(&pods, &format!("relaxed{i}"), "Succeeded").await;
        let log = pods
            .logs(&format!("relaxed{i}"), &LogParams::default())
            .await
            .unwrap();
        assert!(log.lines().any(|l| l == format!("{var}=x")), "{var}: {log}");
    }
    sim.shutdown().await;
}
