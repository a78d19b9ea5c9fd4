//! Helpers shared by the integration tests.
#![allow(dead_code)]

use jetbridge_kube_sim::{SimConfig, Simulator};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::Duration;

pub const NS: &str = "jb-test";

pub async fn start() -> (Simulator, Client) {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("start simulator");
    let client = client(&sim, true);
    (sim, client)
}

/// A kube client for the simulator; `retry` is kube's own 429/503/504 retry.
pub fn client(sim: &Simulator, retry: bool) -> Client {
    let mut cfg = kube::Config::new(sim.url().parse().expect("url"));
    cfg.default_namespace = NS.into();
    cfg.default_retry = retry;
    Client::try_from(cfg).expect("client")
}

pub fn api(client: &Client) -> Api<Pod> {
    Api::namespaced(client.clone(), NS)
}

/// A pod with one container `main` running argv, restartPolicy Never.
pub fn pod(name: &str, argv: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "jb", "step": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1.36", "command": argv}],
        },
    }))
    .expect("pod")
}

pub async fn create(api: &Api<Pod>, p: &Pod) -> Pod {
    api.create(&PostParams::default(), p).await.expect("create")
}

/// Poll until `pred` holds for the pod (panics after 10 s).
pub async fn wait_for(api: &Api<Pod>, name: &str, what: &str, pred: impl Fn(&Pod) -> bool) -> Pod {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(p) = api.get(name).await {
            if pred(&p) {
                return p;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}: {:#?}", p.status);
            }
        } else if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}: pod missing");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub async fn wait_phase(api: &Api<Pod>, name: &str, want: &str) -> Pod {
    wait_for(api, name, want, |p| phase(p) == want).await
}

pub fn condition<'a>(p: &'a Pod, ty: &str) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
}

pub fn main_state(p: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerState> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()
}

pub fn rv(p: &Pod) -> u64 {
    p.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("rv")
}
