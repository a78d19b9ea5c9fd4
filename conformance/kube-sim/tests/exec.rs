//! WebSocket exec through kube-rs (v5) and a raw client (v4, v5 framing).

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use kube::api::AttachParams;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn running_pod(
    client: &kube::Client,
    name: &str,
) -> kube::Api<k8s_openapi::api::core::v1::Pod> {
    let pods = api(client);
    create(&pods, &pod(name, &["sleep", "infinity"])).await;
    wait_phase(&pods, name, "Running").await;
    pods
}

async fn read_all(r: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        r.read_to_string(&mut s).await.unwrap();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stdout_stderr_and_exit_code() {
    let (sim, client) = start().await;
    let pods = running_pod(&client, "x").await;
    let ap = AttachParams::default().stdout(true).stderr(true);
    let mut proc = pods
        .exec("x", ["sh", "-c", "echo out; echo err >&2; exit 3"], &ap)
        .await
        .unwrap();
    let status = proc.take_status().unwrap();
    let (out, err) = tokio::join!(read_all(proc.stdout()), read_all(proc.stderr()));
    let status = status.await.expect("a status frame");
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");
    assert_eq!(status.status.as_deref(), Some("Failure"));
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let causes = status.details.unwrap().causes.unwrap();
    assert_eq!(causes[0].reason.as_deref(), Some("ExitCode"));
    assert_eq!(causes[0].message.as_deref(), Some("3"));

    let mut ok = pods.exec("x", ["true"], &ap).await.unwrap();
    let st = ok.take_status().unwrap().await.unwrap();
    assert_eq!(st.status.as_deref(), Some("Success"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stdin_ends_with_shutdown() {
    let (sim, client) = start().await;
    let pods = running_pod(&client, "x").await;
    let ap = AttachParams::default()
        .stdin(true)
        .stdout(true)
        .stderr(false);
    let mut proc = pods.exec("x", ["cat"], &ap).await.unwrap();
    let mut stdin = proc.stdin().unwrap();
    let stdout = proc.stdout();
    let status = proc.take_status().unwrap();
    let payload = "x".repeat(200_000);
    let writer = async {
        stdin.write_all(payload.as_bytes()).await.unwrap();
        stdin.shutdown().await.unwrap();
    };
    sim.reset_exec_bytes();
    let (_, out) = tokio::join!(writer, read_all(stdout));
    assert_eq!(out.len(), payload.len());
    assert_eq!(status.await.unwrap().status.as_deref(), Some("Success"));
    // Every byte in and every byte out crossed the API server once: the counters see
    // the payloads, not the frame headers or the status.
    let bytes = sim.exec_bytes();
    assert_eq!((bytes.stdin, bytes.output), (200_000, 200_000), "{bytes:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_in_the_mapped_working_dir_with_container_env() {
    let (sim, client) = start().await;
    let pods = api(&client);
    let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "wd"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "cache", "persistentVolumeClaim": {"claimName": "cache"}}],
            "containers": [{
                "name": "main", "image": "busybox", "command": ["/jetbridge/pause"],
                "workingDir": "/tmp/build/work",
                "env": [{"name": "FOO", "value": "bar"}, {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/tmp/build/work/inputs/a"},
                    {"name": "cache", "mountPath": "/tmp/build/work/cache", "subPath": "sub"},
                ],
            }],
        },
    }))
    .unwrap();
    create(&pods, &p).await;
    wait_phase(&pods, "wd", "Running").await;
    let ap = AttachParams::default().stdout(true).stderr(true);
    let script = "echo $FOO $POD; pwd; echo hi > inputs/a/f; echo c > cache/g; cat inputs/a/f; echo $JETBRIDGE_SIM_ROOT";
    let mut proc = pods.exec("wd", ["sh", "-c", script], &ap).await.unwrap();
    let status = proc.take_status().unwrap();
    let (out, err) = tokio::join!(read_all(proc.stdout()), read_all(proc.stderr()));
    assert_eq!(
        status.await.unwrap().status.as_deref(),
        Some("Success"),
        "stderr: {err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "bar wd");
    assert!(lines[1].ends_with("/tmp/build/work"), "{out}");
    assert_eq!(lines[2], "hi");
    assert!(
        lines[1].starts_with(lines[3]),
        "cwd is inside the container root: {out}"
    );
    let claimed = sim.pvc_root().join("cache").join("sub").join("g");
    assert_eq!(std::fs::read_to_string(claimed).unwrap(), "c\n");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_into_unscheduled_pod_unknown_container_or_completed_pod_is_400() {
    let (sim, client) = start().await;
    let pods = api(&client);
    sim.set_unschedulable(true);
    create(&pods, &pod("pending", &["sleep", "infinity"])).await;
    let ap = AttachParams::default();
    let err = pods
        .exec("pending", ["true"], &ap)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{err:?}").contains("400")
            && format!("{err:?}").contains("does not have a host assigned"),
        "{err:?}"
    );
    sim.set_unschedulable(false);
    wait_phase(&pods, "pending", "Running").await;
    let err = pods
        .exec(
            "pending",
            ["true"],
            &AttachParams::default().container("nope"),
        )
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:?}").contains("400"), "{err:?}");
    create(&pods, &pod("done", &["true"])).await;
    wait_phase(&pods, "done", "Succeeded").await;
    let err = pods
        .exec("done", ["true"], &AttachParams::default())
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:?}").contains("400"), "{err:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_exec_stream_has_no_status() {
    let (sim, client) = start().await;
    let pods = running_pod(&client, "x").await;
    sim.drop_exec_streams(1);
    let ap = AttachParams::default().stdout(true).stderr(false);
    let mut proc = pods
        .exec("x", ["sh", "-c", "echo first; sleep 2; echo second"], &ap)
        .await
        .unwrap();
    let status = proc.take_status().unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), read_all(proc.stdout()))
        .await
        .expect("stdout ends");
    assert!(status.await.is_none(), "no status frame");
    assert!(!out.contains("second"), "{out}");
    // The next exec is normal again.
    let mut proc = pods.exec("x", ["true"], &ap).await.unwrap();
    assert!(proc.take_status().unwrap().await.is_some());
    sim.shutdown().await;
}

/// The command of a dropped stream runs on, as on a node: only its client (or the end
/// of its container) stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_streams_command_runs_on() {
    let (sim, client) = start().await;
    let pods = running_pod(&client, "x").await;
    sim.drop_exec_streams(1);
    let ap = AttachParams::default().stdout(true).stderr(false);
    let mut proc = pods
        .exec(
            "x",
            ["sh", "-c", "echo first; sleep 1; echo done > ran-on"],
            &ap,
        )
        .await
        .unwrap();
    let status = proc.take_status().unwrap();
    assert!(status.await.is_none(), "no status frame");
    // Its last act, after the stream is gone, still happens.
    let mut seen = false;
    for _ in 0..100 {
        let mut check = pods
            .exec("x", ["sh", "-c", "cat ran-on 2>/dev/null"], &ap)
            .await
            .unwrap();
        let out = read_all(check.stdout()).await;
        if out == "done\n" {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen, "the command finished after its stream was dropped");
    sim.shutdown().await;
}

/// Raw WebSocket exec offering only `proto`.
async fn raw_exec(
    sim: &jetbridge_kube_sim::Simulator,
    pod: &str,
    query: &str,
    proto: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
) {
    let url = format!(
        "{}/api/v1/namespaces/{NS}/pods/{pod}/exec?{query}",
        sim.url().replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", proto.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    (ws, chosen)
}

async fn collect(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> (Vec<u8>, serde_json::Value) {
    let mut out = Vec::new();
    while let Some(msg) = ws.next().await {
        if let Message::Binary(b) = msg.unwrap() {
            match b[0] {
                1 => out.extend_from_slice(&b[1..]),
                3 => return (out, serde_json::from_slice(&b[1..]).unwrap()),
                _ => {}
            }
        }
    }
    panic!("stream ended without status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_v4_and_v5_framing() {
    let (sim, client) = start().await;
    running_pod(&client, "x").await;
    let q = "command=sh&command=-c&command=echo%20hi%3B%20exit%202&stdout=true&stderr=true";
    let (mut ws, chosen) = raw_exec(&sim, "x", q, "v4.channel.k8s.io").await;
    assert_eq!(chosen, "v4.channel.k8s.io");
    let (out, status) = collect(&mut ws).await;
    assert_eq!(out, b"hi\n");
    assert_eq!(status["details"]["causes"][0]["message"], "2");

    // Client order decides.
    let q = "command=cat&stdin=true&stdout=true";
    let (mut ws, chosen) = raw_exec(&sim, "x", q, "v5.channel.k8s.io, v4.channel.k8s.io").await;
    assert_eq!(chosen, "v5.channel.k8s.io");
    ws.send(Message::Binary(b"\x00abc".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let (out, status) = collect(&mut ws).await;
    assert_eq!(out, b"abc");
    assert_eq!(status, json!({"metadata": {}, "status": "Success"}));
    let (_, chosen) = raw_exec(&sim, "x", q, "v4.channel.k8s.io,v5.channel.k8s.io").await;
    assert_eq!(chosen, "v4.channel.k8s.io");
    sim.shutdown().await;
}

/// What a v4 session does when the client closes it to end stdin: the session ends,
/// with no more output and no status (wsstream `Conn.handle`). A server offering only
/// v4 refuses nothing but never picks v5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_only_server_ends_the_session_when_the_client_closes() {
    let sim = jetbridge_kube_sim::Simulator::start(jetbridge_kube_sim::SimConfig {
        exec_protocols: jetbridge_kube_sim::ExecProtocols::V4Only,
        ..jetbridge_kube_sim::SimConfig::default()
    })
    .await
    .expect("start simulator");
    let client = client(&sim, true);
    running_pod(&client, "x").await;
    // The command prints only after its stdin has ended.
    let q = "command=sh&command=-c&command=cat%20%3E%2Fdev%2Fnull%3B%20echo%20after&stdin=true&stdout=true";
    let (mut ws, chosen) = raw_exec(&sim, "x", q, "v5.channel.k8s.io, v4.channel.k8s.io").await;
    assert_eq!(chosen, "v4.channel.k8s.io");
    ws.send(Message::Binary(b"\x00data".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Close(None)).await.unwrap();
    let mut frames = Vec::new();
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Binary(b) = msg {
            frames.push(b[0]);
        }
    }
    assert!(
        !frames.contains(&3) && !frames.contains(&1),
        "no output and no status after the close, got channels {frames:?}"
    );

    // kube's AttachedProcess ends stdin on v4 the same way: its status is lost too.
    let pods = api(&client);
    let ap = AttachParams::default()
        .stdin(true)
        .stdout(true)
        .stderr(false);
    let mut proc = pods.exec("x", ["cat"], &ap).await.unwrap();
    let mut stdin = proc.stdin().unwrap();
    let status = proc.take_status().unwrap();
    stdin.write_all(b"abc").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert!(
        status.await.is_none(),
        "a v4 session closed by the client has no status"
    );
    sim.shutdown().await;
}

/// A container that has not started (or has stopped) while its pod is bound: the
/// kubelet's `container not found`, as a plain 500 before the upgrade on 1.29 and as an
/// `InternalError` status frame after it from 1.30.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_into_a_container_not_running_answers_as_each_version_does() {
    for protocols in [
        jetbridge_kube_sim::ExecProtocols::V4Only,
        jetbridge_kube_sim::ExecProtocols::V5AndV4,
    ] {
        let sim = jetbridge_kube_sim::Simulator::start(jetbridge_kube_sim::SimConfig {
            exec_protocols: protocols,
            // Bound at once, containers started much later.
            start_delay: std::time::Duration::from_secs(30),
            ..jetbridge_kube_sim::SimConfig::default()
        })
        .await
        .expect("start simulator");
        let client = client(&sim, false);
        let pods = api(&client);
        create(&pods, &pod("starting", &["sleep", "infinity"])).await;
        // Bound to the node, container not started.
        let bound = || async {
            let p = pods.get("starting").await.unwrap();
            p.spec.and_then(|s| s.node_name).is_some()
        };
        while !bound().await {
            tokio::task::yield_now().await;
        }
        let r = pods
            .exec("starting", ["true"], &AttachParams::default())
            .await;
        match protocols {
            jetbridge_kube_sim::ExecProtocols::V4Only
            | jetbridge_kube_sim::ExecProtocols::HeaderStripped => {
                let err = r.err().expect("refused before the upgrade");
                let text = format!("{err:?}");
                assert!(
                    text.contains("500") && text.contains("container not found"),
                    "{text}"
                );
            }
            jetbridge_kube_sim::ExecProtocols::V5AndV4 => {
                let mut p = r.expect("upgraded");
                let st = p.take_status().unwrap().await.expect("a status frame");
                assert_eq!(st.reason.as_deref(), Some("InternalError"));
                assert!(
                    st.message
                        .unwrap_or_default()
                        .contains("container not found")
                );
            }
        }
        sim.shutdown().await;
    }
}
