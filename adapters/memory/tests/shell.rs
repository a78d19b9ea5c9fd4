//! The mini shell, through `Exec` as a user would drive it.

use std::collections::BTreeMap;
use std::sync::Arc;

use jetbridge_core::ports::{CaptureOutput, Exec, ExecRequest, PodSpec, Pods, bytes_stream};
use jetbridge_core::{ErrorKind, Result};
use jetbridge_memory::MemoryBackend;

struct Run {
    code: i32,
    out: String,
    err: String,
}

async fn backend() -> MemoryBackend {
    let b = MemoryBackend::new();
    let mut spec = PodSpec::new("p", "busybox:1.36");
    spec.env = BTreeMap::from([("GREETING".to_owned(), "hello world".to_owned())]);
    b.create(&spec).await.unwrap();
    b
}

async fn exec(b: &MemoryBackend, req: ExecRequest) -> Result<Run> {
    let cap = Arc::new(CaptureOutput::new());
    let code = b.exec(req, cap.clone()).await?;
    Ok(Run {
        code,
        out: String::from_utf8_lossy(&cap.stdout()).into_owned(),
        err: String::from_utf8_lossy(&cap.stderr()).into_owned(),
    })
}

async fn sh(b: &MemoryBackend, script: &str) -> Run {
    let argv = vec!["sh".into(), "-c".into(), script.into()];
    exec(b, ExecRequest::new("p", argv)).await.unwrap()
}

#[tokio::test]
async fn quoting_and_variables() {
    let b = backend().await;
    let r = sh(&b, r#"X='a  b'; echo $X "$X" '$X' "${X}c" \$X"#).await;
    assert_eq!(r.out, "a b a  b $X a  bc $X\n");
    let r = sh(&b, r#"echo "$GREETING" ${MISSING:-fallback} "${EMPTY-}" x"#).await;
    assert_eq!(r.out, "hello world fallback  x\n");
    let r = sh(&b, r#"echo "a\"b\\c" 'it'"'"'s'"#).await;
    assert_eq!(r.out, "a\"b\\c it's\n");
    let r = sh(&b, "echo -n no-newline").await;
    assert_eq!(r.out, "no-newline");
    // Assignments before a command reach only that command's environment.
    b.register_sync_program("show-env", |ctx| {
        let v = ctx.env.get("ONLY").cloned().unwrap_or_default();
        ctx.print(&format!("{v}\n"));
        0
    });
    let r = sh(&b, "ONLY=here show-env; echo \"[$ONLY]\"").await;
    assert_eq!(r.out, "here\n[]\n");
}

#[tokio::test]
async fn separators_and_exit_codes() {
    let b = backend().await;
    let r = sh(&b, "true && echo a || echo b; false && echo c || echo d").await;
    assert_eq!(r.out, "a\nd\n");
    let r = sh(&b, "false; echo $?; (exit 3) 2>/dev/null").await;
    assert_eq!(r.code, 2, "subshells are a syntax error");
    let r = sh(&b, "false\necho status=$?\nexit 7\necho never").await;
    assert_eq!((r.code, r.out.as_str()), (7, "status=1\n"));
    let r = sh(&b, "false || exit 4").await;
    assert_eq!(r.code, 4);
    let r = sh(&b, "true && false").await;
    assert_eq!(r.code, 1);
    let r = sh(&b, "set -e; false || true; echo ok; false; echo never").await;
    assert_eq!((r.code, r.out.as_str()), (1, "ok\n"));
    let r = sh(&b, "no-such-tool arg").await;
    assert_eq!(r.code, 127);
    assert!(
        r.err.contains("no-such-tool: command not found"),
        "{}",
        r.err
    );
    let r = sh(&b, "echo a | cat").await;
    assert_eq!(r.code, 2);
    assert!(r.err.contains("syntax error"));
}

#[tokio::test]
async fn redirections() {
    let b = backend().await;
    let r = sh(
        &b,
        "echo one > f; echo two >> f; cat f; cat < f > g; cat missing 2> err; echo e >&2; \
         cat missing 2>&1; echo x 1>&2",
    )
    .await;
    assert_eq!(r.out, "one\ntwo\ncat: missing: No such file or directory\n");
    assert_eq!(r.err, "e\nx\n");
    let fs = b.pod_fs("p").unwrap();
    assert_eq!(fs.read_to_string("g").unwrap(), "one\ntwo\n");
    assert!(fs.read_to_string("err").unwrap().contains("No such file"));
    // Order matters: `2>&1 > f` keeps stderr on the old stdout.
    let r = sh(&b, "cat nope 2>&1 > h; cat nope > h2 2>&1").await;
    assert!(r.out.contains("nope"));
    assert!(fs.read_to_string("h2").unwrap().contains("nope"));
    let r = sh(&b, "echo x > no/such/dir").await;
    assert_eq!(r.code, 1);
}

#[tokio::test]
async fn file_commands() {
    let b = backend().await;
    let r = sh(
        &b,
        "mkdir -p a/b && touch a/b/f && echo hi > a/x && cp -r a c && mv c/x c/y && \
         ln -s y c/link && chmod 751 c/y && rm -r a/b && ls c && ls && cat c/link && \
         test -d c/b && [ -f c/b/f ] && [ -s c/y ] && [ ! -s c/b/f ] && [ -z '' ] && \
         [ -n x ] && [ a = a ] && [ a != b ] && [ -e c/link ] && cd c && pwd",
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out, "b\nlink\ny\na\nc\nhi\n/workdir/c\n",);
    let fs = b.pod_fs("p").unwrap();
    assert_eq!(fs.mode("c/y").unwrap(), 0o751);
    assert_eq!(fs.read_link("c/link").unwrap(), "y");
    let r = sh(&b, "rm a; rm -f nothing; mkdir a").await;
    assert_eq!(r.code, 1);
    assert!(r.err.contains("rm: can't remove 'a'"), "{}", r.err);
    assert!(r.err.contains("File exists"), "{}", r.err);
    let r = sh(
        &b,
        "[ 1 -lt 2 ] && test 3 -ge 3 && [ x ]; echo $?; test; echo $?",
    )
    .await;
    assert_eq!(r.out, "0\n1\n");
}

#[tokio::test(start_paused = true)]
async fn sleep_uses_tokio_time() {
    let b = backend().await;
    let start = tokio::time::Instant::now();
    let r = sh(&b, "sleep 0.5 && sleep 2").await;
    assert_eq!(r.code, 0);
    assert!(start.elapsed() >= std::time::Duration::from_millis(2500));
}

#[tokio::test]
async fn scripts_stdin_and_dirs() {
    let b = backend().await;
    let fs = b.pod_fs("p").unwrap();
    fs.write("ci/test.sh", "#!/bin/sh\necho \"args: $# $1 $0\"\nexit 5\n")
        .unwrap();
    let r = exec(
        &b,
        ExecRequest::new("p", vec!["ci/test.sh".into(), "x".into()]),
    )
    .await
    .unwrap();
    assert_eq!(r.code, 126, "not executable yet");
    fs.set_mode("ci/test.sh", 0o755).unwrap();
    let r = exec(
        &b,
        ExecRequest::new("p", vec!["./test.sh".into(), "x".into()]).dir("ci"),
    )
    .await
    .unwrap();
    assert_eq!((r.code, r.out.as_str()), (5, "args: 1 x ./test.sh\n"));
    let r = exec(
        &b,
        ExecRequest::new("p", vec!["cat".into()]).stdin(bytes_stream("piped")),
    )
    .await
    .unwrap();
    assert_eq!(r.out, "piped");
    let r = exec(
        &b,
        ExecRequest::new("p", vec!["sh".into()]).stdin(bytes_stream("echo from-stdin")),
    )
    .await
    .unwrap();
    assert_eq!(r.out, "from-stdin\n");
    let e = exec(
        &b,
        ExecRequest::new("p", vec!["true".into()]).dir("missing"),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn single_quote(s: &str) -> String {
        format!("'{}'", s.replace('\'', r"'\''"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn quoted_words_come_back_verbatim(words in proptest::collection::vec("[^\\x00]{0,20}", 1..4)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let out = rt.block_on(async {
                let b = backend().await;
                let script = format!("echo -n {}", words.iter().map(|w| single_quote(w)).collect::<Vec<_>>().join(" "));
                sh(&b, &script).await.out
            });
            prop_assert_eq!(out, words.join(" "));
        }
    }
}
