//! Authorization and admission: RBAC denials, the ServiceAccount plugin, Pod Security
//! "restricted" and a pod quota, answered in the API server's words and order.

mod common;

use common::{NS, api, client, pod, start};
use jetbridge_kube_sim::SimControls;
use jetbridge_kube_sim::{Fault, FaultAction};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_denials_name_verb_and_resource_and_do_nothing() {
    let (sim, client) = start().await;
    let pods = api(&client);
    sim.forbid("create", "pods");
    let e = api_error(
        pods.create(&PostParams::default(), &pod("p", &["sleep", "infinity"]))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        format!(
            "pods is forbidden: User \"kube-sim\" cannot create resource \"pods\" in API group \"\" in the namespace \"{NS}\""
        )
    );
    assert!(sim.pods(NS).is_empty(), "nothing was created");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    sim.forbid("get", "secrets");
    let e = api_error(secrets.get("s").await.unwrap_err());
    assert!(
        e.message.starts_with(
            "secrets \"s\" is forbidden: User \"kube-sim\" cannot get resource \"secrets\""
        ),
        "{}",
        e.message
    );
    sim.allow_all();
    pods.create(&PostParams::default(), &pod("p", &["sleep", "infinity"]))
        .await
        .expect("allowed again");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_rbac_lets_through_is_recorded_and_denials_and_discovery_are_not() {
    let (sim, client) = start().await;
    client.apiserver_version().await.expect("/version");
    let pods = api(&client);
    pods.create(&PostParams::default(), &pod("p", &["sleep", "infinity"]))
        .await
        .expect("created");
    pods.list(&Default::default()).await.expect("listed");
    // Authorised, then answered 404 by the handler: what RBAC checks is recorded.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    api_error(secrets.get("none").await.unwrap_err());
    sim.forbid("delete", "pods");
    api_error(pods.delete("p", &Default::default()).await.unwrap_err());
    let pair = |v: &str, r: &str| (v.to_owned(), r.to_owned());
    assert_eq!(
        sim.authorized(),
        [
            pair("create", "pods"),
            pair("get", "secrets"),
            pair("list", "pods")
        ]
        .into_iter()
        .collect()
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_service_account_is_forbidden() {
    let (sim, client) = start().await;
    let pods = api(&client);
    let mut p = pod("sa", &["sleep", "infinity"]);
    p.spec.as_mut().unwrap().service_account_name = Some("builder".into());
    let e = api_error(pods.create(&PostParams::default(), &p).await.unwrap_err());
    assert_eq!(e.code, 403);
    assert_eq!(
        e.message,
        format!(
            "pods \"sa\" is forbidden: error looking up service account {NS}/builder: serviceaccount \"builder\" not found"
        )
    );
    sim.create_service_account(NS, "builder");
    pods.create(&PostParams::default(), &p)
        .await
        .expect("the account exists now");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_namespace_rejects_baseline_pods() {
    let (sim, client) = start().await;
    sim.label_namespace(NS, "pod-security.kubernetes.io/enforce", "restricted");
    let pods = api(&client);
    let e = api_error(
        pods.create(&PostParams::default(), &pod("base", &["sleep", "infinity"]))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 403);
    assert!(
        e.message.starts_with(
            "pods \"base\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"
        ),
        "{}",
        e.message
    );
    let restricted: Pod = serde_json::from_value(json!({
        "metadata": {"name": "ok"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "infinity"],
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}}}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &restricted)
        .await
        .expect("a restricted pod is admitted");
    // The namespace shows its label.
    let ns = Api::<Namespace>::all(client.clone()).get(NS).await.unwrap();
    assert_eq!(
        ns.metadata
            .labels
            .unwrap_or_default()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_is_checked_before_the_name_so_a_resent_create_meets_403() {
    let (sim, _client) = start().await;
    let pods = api(&client(&sim, false));
    sim.set_pod_quota(NS, "steps", Some(1));
    // The first create takes effect but its answer is lost.
    sim.inject(Fault::on("POST", "/pods", 1, FaultAction::DropAfterCommit));
    let p = pod("q", &["sleep", "infinity"]);
    assert!(pods.create(&PostParams::default(), &p).await.is_err());
    assert_eq!(sim.pods(NS).len(), 1, "the lost create took effect");
    // Resent: quota's 403, not AlreadyExists.
    let e = api_error(pods.create(&PostParams::default(), &p).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "pods \"q\" is forbidden: exceeded quota: steps, requested: pods=1, used: pods=1, limited: pods=1"
    );
    sim.set_pod_quota(NS, "steps", None);
    let e = api_error(pods.create(&PostParams::default(), &p).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    sim.shutdown().await;
}

/// NamespaceLifecycle: creates in a missing namespace are 404 and in a terminating one
/// 403 `NamespaceTerminating`; reading the namespace agrees (404, phase `Terminating`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_terminating_namespace_refuses_creates_and_reads_so() {
    let (sim, client) = start().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let active = namespaces
        .get(NS)
        .await
        .expect("every namespace exists at first");
    assert_eq!(
        active.status.and_then(|s| s.phase).as_deref(),
        Some("Active")
    );

    sim.remove_namespace(NS);
    let e = api_error(
        api(&client)
            .create(&PostParams::default(), &pod("p", &["true"]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (
            404,
            "NotFound",
            format!("namespaces \"{NS}\" not found").as_str()
        )
    );
    let e = api_error(namespaces.get(NS).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));

    sim.terminate_namespace(NS);
    let e = api_error(
        api(&client)
            .create(&PostParams::default(), &pod("p", &["true"]))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert!(
        e.message.ends_with("because it is being terminated"),
        "{}",
        e.message
    );
    let terminating = namespaces
        .get(NS)
        .await
        .expect("still there while terminating");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(
        terminating.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    assert!(sim.pods(NS).is_empty());
    sim.shutdown().await;
}
