//! `pods/exec` over WebSocket with the `v5.channel.k8s.io` / `v4.channel.k8s.io`
//! subprotocols.

use crate::ExecProtocols;
use crate::api::pick_container;
use crate::process;
use crate::state::{ProcHandle, Shared, lock};
use crate::util::{ApiError, Query};
use axum::body::Bytes;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const CLOSE: u8 = 255;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

/// The first subprotocol in the client's list that the server offers (`""`: the
/// unversioned `channel.k8s.io`, chosen when the client asked for none), or the
/// protocols asked for when none is offered.
///
/// As wsstream's `handshake` (k8s.io/apimachinery/pkg/util/httpstream/wsstream/
/// conn.go): an empty list counts as `[""]`, and `""` and `channel.k8s.io` are always
/// allowed.
fn negotiate(headers: &HeaderMap, offered: ExecProtocols) -> Result<&'static str, String> {
    let v5 = offered == ExecProtocols::V5AndV4;
    let asked: Vec<String> = if offered == ExecProtocols::HeaderStripped {
        Vec::new()
    } else {
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect()
    };
    if asked.is_empty() {
        return Ok("");
    }
    asked
        .iter()
        .find_map(|p| match p.as_str() {
            V5 if v5 => Some(V5),
            V4 => Some(V4),
            "channel.k8s.io" => Some("channel.k8s.io"),
            _ => None,
        })
        .ok_or_else(|| asked.join(" "))
}

fn container_running(pod: &Value, container: &str) -> bool {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .any(|k| {
            pod["status"][*k]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == container && c.pointer("/state/running").is_some())
        })
}

/// The exec handler: checks happen before the upgrade so failures are plain
/// HTTP 4xx `Status` responses.
pub(crate) async fn handler(
    State(sh): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let q = Query::parse(q.as_deref());
    let Some(pod) = sh.get_pod(&ns, &name) else {
        return ApiError::not_found(&name).into_response();
    };
    let container = match pick_container(&pod, &name, q.get("container")) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Some(phase @ ("Succeeded" | "Failed")) = pod["status"]["phase"].as_str() {
        return ApiError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        ))
        .into_response();
    }
    // apiserver pkg/registry/core/pod/strategy.go `streamLocation`: no node, no kubelet
    // to ask.
    if !crate::store::is_bound(&pod) {
        return ApiError::bad_request(format!("pod {name} does not have a host assigned"))
            .into_response();
    }
    if !container_running(&pod, &container) {
        return not_running(&sh, &headers, ws, &container);
    }
    let argv = q.all("command");
    if argv.is_empty() {
        return ApiError::bad_request("you must specify at least 1 command").into_response();
    }
    let image = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .find(|c| c["name"] == container.as_str())
        .and_then(|c| c["image"].as_str())
        .unwrap_or_default()
        .to_owned();
    let missing = {
        let name = argv[0].rsplit('/').next().unwrap_or_default().to_owned();
        lock(&sh.flags)
            .image_lacks
            .iter()
            .any(|(pat, exes)| image.contains(pat.as_str()) && exes.contains(&name))
            .then_some(argv[0].clone())
    };
    let (want_in, want_out, want_err) = (q.flag("stdin"), q.flag("stdout"), q.flag("stderr"));
    if !(want_in || want_out || want_err) {
        return ApiError::bad_request("you must specify at least 1 of stdin, stdout, stderr")
            .into_response();
    }
    let rt = sh.runtime_of(&ns, &name);
    let cenv = rt
        .as_ref()
        .and_then(|rt| lock(&rt.containers).get(&container).cloned());
    let (Some(rt), Some(cenv)) = (rt, cenv) else {
        return not_running(&sh, &headers, ws, &container);
    };
    // The kubelet finds the container through the runtime's list of running containers
    // (pkg/kubelet/kubelet_pods.go `GetExec` -> `findContainer` -> the runtime's
    // `GetPods(ctx, false)`, a CRI ListContainers of running ones), not through
    // the status it last wrote: a container that has just ended is not found, however
    // long its status takes to reach the API.
    if rt.has_exited(&container) {
        return not_running(&sh, &headers, ws, &container);
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => return ApiError::bad_request("Upgrade request required").into_response(),
    };
    let proto = match negotiate(&headers, sh.config.exec_protocols) {
        Ok(p) => p,
        // x/net/websocket answers a failed handshake 403, with the handshake's words.
        Err(asked) => {
            let supports = match sh.config.exec_protocols {
                ExecProtocols::V5AndV4 => format!("[{V5} {V4} channel.k8s.io]"),
                _ => format!("[{V4} channel.k8s.io]"),
            };
            return (
                axum::http::StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("requested protocol(s) are not supported: [{asked}]; supports {supports}"),
            )
                .into_response();
        }
    };
    if lock(&sh.flags).node_down {
        // The API server cannot reach the kubelet (pkg/kubelet/client, the proxy's
        // dial error).
        return ApiError::new(
            500,
            "InternalError",
            "error dialing backend: dial tcp 10.0.0.2:10250: i/o timeout",
        )
        .into_response();
    }
    let drop_stream = {
        let mut f = lock(&sh.flags);
        if f.drop_exec > 0 {
            f.drop_exec -= 1;
            true
        } else {
            false
        }
    };
    let generation_token = sh.generation();
    if let Some(exe) = missing {
        return internal_error_session(
            ws,
            proto,
            format!(
                "error executing command in container: failed to exec in container: failed to start exec: OCI runtime exec failed: exec failed: unable to start container process: exec: \"{exe}\": executable file not found in $PATH: unknown"
            ),
        );
    }
    // The image's own files, where the test said what they are (`Simulator::image_file`).
    let argv = crate::images::host_argv(&lock(&sh.flags), &image, argv);
    let argv = cenv.resolve_program(argv);
    let spawned = cenv
        .command(&argv)
        .ok_or_else(|| std::io::Error::other("empty command"))
        .and_then(|mut cmd| {
            let io = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
            cmd.stdin(io(want_in))
                .stdout(io(want_out))
                .stderr(io(want_err))
                // An exec'd command outlives its session: neither the client going
                // away nor a broken stream stops it (the kubelet's exec has no such
                // link; CRI stops containers, not execs). It ends with its container.
                .kill_on_drop(false);
            cmd.spawn()
        });
    let proc_id = match &spawned {
        Ok(child) => {
            process::pgid(child).map(|g| rt.add_proc(ProcHandle::Group(g), &container, true))
        }
        Err(_) => None,
    };
    let v5 = proto == V5;
    let node_gone = {
        let sh = sh.clone();
        async move { sh.wait_node_down().await }
    };
    let counts = sh.exec_bytes.clone();
    ws.protocols([proto]).on_upgrade(move |socket| async move {
        session(
            socket,
            v5,
            spawned,
            drop_stream,
            generation_token,
            node_gone,
            counts,
        )
        .await;
        // What the command left running in the background stays in the container until
        // the container stops, as on a node, where stopping it kills every process of
        // its cgroup (CRI StopContainer; kubelet kuberuntime_container.go killContainer).
        // So the group stays registered for the pod's end while it has members.
        if let Some(id) = proc_id
            && !proc_group_alive(&rt, id)
        {
            rt.remove_proc(id);
        }
    })
}

/// The answer to an exec into a container that is not running (not started yet, or
/// exited while the pod runs on), which the kubelet gives as `container not found`:
///
/// - through 1.29 the API server proxies the upgrade to the kubelet, whose refusal comes
///   back before the upgrade as a plain-text 500 (kubelet server.go `getExec` ->
///   `streaming` error `container not found ("NAME")`);
/// - from 1.30 the stream translator (gate `TranslateStreamCloseWebsocketRequests`)
///   accepts the WebSocket first, then reports the kubelet's refusal as a status frame
///   with reason `InternalError` (apiserver pkg/util/proxy translatinghandler.go and
///   streamtranslator.go write upstream errors to the error stream).
///
/// `ExecProtocols::V4Only` stands for 1.29, `V5AndV4` for 1.30 and later.
fn not_running(
    sh: &Shared,
    headers: &HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    container: &str,
) -> Response {
    let message = format!("container not found (\"{container}\")");
    let translated = sh.config.exec_protocols == ExecProtocols::V5AndV4;
    let (Ok(ws), Ok(proto), true) = (ws, negotiate(headers, sh.config.exec_protocols), translated)
    else {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            message,
        )
            .into_response();
    };
    internal_error_session(ws, proto, message)
}

/// Upgrade, then end the session with an `InternalError` status carrying `cause`, as
/// the kubelet's remotecommand server reports an exec it could not start
/// (`apierrors.NewInternalError`: "Internal error occurred: CAUSE").
fn internal_error_session(ws: WebSocketUpgrade, proto: &'static str, cause: String) -> Response {
    ws.protocols([proto]).on_upgrade(move |socket| async move {
        let (mut sink, _stream) = socket.split();
        let status = json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {cause}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": cause}]},
            "code": 500,
        });
        let mut frame = vec![STATUS];
        frame.extend(serde_json::to_vec(&status).unwrap_or_default());
        let _ = sink.send(Message::Binary(frame.into())).await;
        let _ = sink.send(Message::Close(None)).await;
    })
}

async fn pump(mut r: impl AsyncRead + Unpin, channel: u8, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf[0] = channel;
                if tx.send(buf[..=n].to_vec()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn status_frame(code: i32) -> Vec<u8> {
    let status = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    let mut frame = vec![STATUS];
    frame.extend(serde_json::to_vec(&status).unwrap_or_default());
    frame
}

async fn session(
    socket: WebSocket,
    v5: bool,
    spawned: std::io::Result<Child>,
    drop_stream: bool,
    generation_token: CancellationToken,
    node_gone: impl std::future::Future<Output = ()>,
    counts: Arc<crate::state::ExecByteCounts>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    tokio::pin!(node_gone);
    let (mut sink, mut stream) = socket.split();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let code = process::spawn_error_code(&e);
            let msg = format!("failed to start exec process: {e}\n");
            let _ = sink
                .send(Message::Binary([&[STDERR], msg.as_bytes()].concat().into()))
                .await;
            let _ = sink.send(Message::Binary(status_frame(code).into())).await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
    if let Some(o) = child.stdout.take() {
        tokio::spawn(pump(o, STDOUT, out_tx.clone()));
    }
    if let Some(e) = child.stderr.take() {
        tokio::spawn(pump(e, STDERR, out_tx.clone()));
    }
    drop(out_tx);

    // stdin: a writer task fed by the WebSocket reader, so a process that does
    // not read its stdin never stalls the output path.
    let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(16);
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            while let Some(b) = in_rx.recv().await {
                if stdin.write_all(&b).await.is_err() {
                    break;
                }
            }
            let _ = stdin.shutdown().await;
        });
    }
    // Cancelled when the client closes the WebSocket or the connection breaks: the
    // session ends there, on v4 and v5 alike, with no more output and no status
    // (wsstream conn.go: `handle` returns when its read loop ends, and the deferred
    // `Close` shuts every channel). On v4 that is also the client's only way to end
    // stdin, which is why a client must not use it to.
    let client_gone = CancellationToken::new();
    let gone = client_gone.clone();
    let stdin_counts = counts.clone();
    let reader = tokio::spawn(async move {
        let mut in_tx = Some(in_tx);
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(b)) => match b.first() {
                    Some(&STDIN) => {
                        stdin_counts.stdin.fetch_add(b.len() as u64 - 1, Relaxed);
                        if let Some(tx) = &in_tx
                            && tx.send(b.slice(1..)).await.is_err()
                        {
                            in_tx = None;
                        }
                    }
                    // v5 "close stream" signal: [255, channel].
                    Some(&CLOSE) if v5 && b.get(1) == Some(&STDIN) => in_tx = None,
                    // Resize and unknown channels: no terminal here.
                    _ => {}
                },
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // The client went away: the session ends first, then the command's stdin, so
        // nothing the command writes after its end of input is sent.
        gone.cancel();
        drop(in_tx);
    });

    let mut sink_ok = true;
    loop {
        tokio::select! {
            // An ended session sends nothing more, even what is already waiting.
            biased;
            () = client_gone.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
            () = &mut node_gone => {
                stay_silent(&generation_token, &client_gone).await;
                reader.abort();
                return;
            }
            frame = out_rx.recv() => match frame {
                Some(f) => {
                    let payload = f.len().saturating_sub(1) as u64;
                    if sink_ok && sink.send(Message::Binary(f.into())).await.is_err() {
                        sink_ok = false;
                    } else if sink_ok {
                        counts.output.fetch_add(payload, Relaxed);
                    }
                    if drop_stream {
                        // A clean close without a status frame.
                        let _ = sink.send(Message::Close(None)).await;
                        reader.abort();
                        return;
                    }
                }
                None => break,
            },
            () = generation_token.cancelled() => {
                reader.abort();
                return;
            }
        }
    }
    let status = tokio::select! {
        biased;
        () = client_gone.cancelled() => {
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
        () = &mut node_gone => {
            stay_silent(&generation_token, &client_gone).await;
            reader.abort();
            return;
        }
        s = child.wait() => s,
        () = generation_token.cancelled() => {
            reader.abort();
            return;
        }
    };
    if drop_stream {
        let _ = sink.send(Message::Close(None)).await;
        reader.abort();
        return;
    }
    let code = status.map(process::exit_code).unwrap_or(1);
    if sink_ok {
        let _ = sink.send(Message::Binary(status_frame(code).into())).await;
        let _ = sink.send(Message::Close(None)).await;
    }
    reader.abort();
}

/// The node is unreachable: nothing more arrives and nothing says so; the connection
/// stays open, as a TCP connection to a vanished host does, until the simulator stops or
/// the client goes.
async fn stay_silent(generation: &CancellationToken, client_gone: &CancellationToken) {
    tokio::select! {
        () = generation.cancelled() => {}
        () = client_gone.cancelled() => {}
    }
}

/// Whether the process group registered as `id` still has a member.
fn proc_group_alive(rt: &crate::state::PodRuntime, id: u64) -> bool {
    rt.group_of(id).is_some_and(|pgid| {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn negotiation_follows_client_order() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io, v5.channel.k8s.io"),
        );
        assert_eq!(negotiate(&h, ExecProtocols::V5AndV4), Ok(V4));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("x.example,v5.channel.k8s.io"),
        );
        assert_eq!(negotiate(&h, ExecProtocols::V5AndV4), Ok(V5));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("channel.k8s.io,v5.channel.k8s.io"),
        );
        // The unversioned protocol is always allowed, and the client's order decides.
        assert_eq!(negotiate(&h, ExecProtocols::V5AndV4), Ok("channel.k8s.io"));
        assert_eq!(negotiate(&h, ExecProtocols::V4Only), Ok("channel.k8s.io"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("base64.channel.k8s.io"),
        );
        assert!(negotiate(&h, ExecProtocols::V5AndV4).is_err());
        assert_eq!(negotiate(&HeaderMap::new(), ExecProtocols::V5AndV4), Ok(""));
        // A proxy dropped the header: the unversioned protocol, whatever was asked.
        assert_eq!(negotiate(&h, ExecProtocols::HeaderStripped), Ok(""));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v5.channel.k8s.io, v4.channel.k8s.io"),
        );
        assert_eq!(negotiate(&h, ExecProtocols::V4Only), Ok(V4));
    }

    #[test]
    fn status_frames() {
        let ok: Value = serde_json::from_slice(&status_frame(0)[1..]).unwrap();
        assert_eq!(ok["status"], "Success");
        let f = status_frame(3);
        assert_eq!(f[0], STATUS);
        let v: Value = serde_json::from_slice(&f[1..]).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
    }
}
