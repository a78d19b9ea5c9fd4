//! The helper's subcommands, run as the real binary.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const HELPER: &str = env!("CARGO_BIN_EXE_jetbridge-helper");
const DEADLINE: Duration = Duration::from_secs(10);

fn helper() -> Command {
    Command::new(HELPER)
}

fn run(args: &[&str]) -> Output {
    helper()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run helper")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `child` until it exits, or panics after [`DEADLINE`].
fn wait_exit(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "process {} still running after {DEADLINE:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` until it holds, or panics with `what` after [`DEADLINE`].
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

#[test]
fn version_and_help() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o),
        format!("jetbridge-helper {}\n", env!("CARGO_PKG_VERSION"))
    );
    let o = run(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("exec [--dir D]"), "{}", stdout(&o));
}

#[test]
fn bad_usage_exits_125() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["exec", "A=1", "/bin/true"],
        &["exec", "--"],
        &["exec", "--nope", "--", "/bin/true"],
        &["exec", "--stdin-len", "x", "--", "/bin/true"],
        &["exec", "=v", "--", "/bin/true"],
        &["kill", ""],
        &["kill"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {o:?}");
        assert!(stderr(&o).contains("usage:"), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn exec_sets_vars_and_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let o = helper()
        .current_dir(dir.path())
        .env("KEEP", "inherited")
        .env("A", "old")
        .args([
            "exec",
            "--dir",
            "sub",
            "A=x=1",
            "B=",
            "--",
            "/bin/sh",
            "-c",
            r#"echo "$A:$B:$KEEP:$(pwd)""#,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let want = format!(
        "x=1::inherited:{}\n",
        dir.path().join("sub").canonicalize().unwrap().display()
    );
    assert_eq!(stdout(&o), want);
}

#[test]
fn exec_bad_dir_exits_125() {
    let o = run(&["exec", "--dir", "/no/such/dir", "--", "/bin/true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).starts_with("jetbridge-helper: cannot enter directory \"/no/such/dir\": "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn exec_searches_path_of_the_new_environment() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hello-prog");
    std::fs::write(&script, "#!/bin/sh\necho \"hi $1\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("/bin/sh", dir.path().join("my-sh")).unwrap();
    let path = format!("PATH={}", dir.path().display());
    let o = run(&["exec", &path, "--", "hello-prog", "x y"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "hi x y\n");
    // argv[0] is PROG as given, like env(1).
    let o = run(&["exec", &path, "--", "my-sh", "-c", "echo $0"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "my-sh\n");
}

#[test]
fn exec_replaces_the_helper() {
    let child = helper()
        .args(["exec", "--", "/bin/sh", "-c", "echo $$"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), pid.to_string());
}

#[test]
fn exec_exit_codes() {
    let o = run(&["exec", "--", "/bin/sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    // Replaced by the command: its death by signal is the process's own.
    let o = run(&["exec", "--", "/bin/sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.signal(), Some(9));
    // With --stdin-len the helper waits and reports the status as a code.
    let o = run(&["exec", "--stdin-len", "0", "--", "/bin/sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    let o = run(&[
        "exec",
        "--stdin-len",
        "0",
        "--",
        "/bin/sh",
        "-c",
        "kill -9 $$",
    ]);
    assert_eq!(o.status.code(), Some(137));
}

#[test]
fn exec_not_found_127() {
    for args in [
        &["exec", "--", "no-such-program-jb"][..],
        &["exec", "--stdin-len", "0", "--", "no-such-program-jb"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(127), "{o:?}");
        assert_eq!(
            stderr(&o),
            "jetbridge-helper: exec \"no-such-program-jb\": executable file not found in $PATH\n"
        );
    }
    let o = run(&["exec", "--", "/no/such/prog"]);
    assert_eq!(o.status.code(), Some(127), "{o:?}");
}

#[test]
fn exec_permission_denied_126() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("noexec");
    std::fs::write(&file, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = format!("PATH={}", dir.path().display());
    let by_path = file.to_str().unwrap();
    for args in [
        &["exec", "--", by_path][..],
        &["exec", "--stdin-len", "0", "--", by_path],
        &["exec", &path, "--", "noexec"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(126), "{args:?}: {o:?}");
        assert!(
            stderr(&o).ends_with("\": permission denied\n"),
            "{}",
            stderr(&o)
        );
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn stdin_len_copies_exactly_n_bytes() {
    let mut child = helper()
        .args(["exec", "--stdin-len", "5", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"helloEXTRA")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout, b"hello");
}

#[test]
fn stdin_len_reads_no_byte_past_n() {
    // The helper's stdin shares one open file (one offset) with ours: whatever it does
    // not read is still there for us afterwards.
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(b"helloEXTRA").unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    let o = helper()
        .args(["exec", "--stdin-len", "5", "--", "cat"])
        .stdin(file.try_clone().unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout, b"hello");
    let mut rest = String::new();
    file.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "EXTRA");
}

#[test]
fn stdin_len_does_not_wait_for_our_stdin_to_close() {
    let mut child = helper()
        .args(["exec", "--stdin-len", "5", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep our end open for the whole test: the command must end regardless.
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"hello").unwrap();
    input.flush().unwrap();
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(out, b"hello");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(err, "");
    drop(input);
}

#[test]
fn stdin_len_short_input_warns_and_keeps_the_code() {
    let mut child = helper()
        .args([
            "exec",
            "--stdin-len",
            "10",
            "--",
            "/bin/sh",
            "-c",
            "cat; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(o.stdout, b"abc");
    assert_eq!(
        stderr(&o),
        "jetbridge-helper: stdin ended after 3 of 10 bytes\n"
    );
}

#[test]
fn stdin_len_command_that_stops_reading() {
    let mut child = helper()
        .args([
            "exec",
            "--stdin-len",
            "4000000",
            "--",
            "/bin/sh",
            "-c",
            "exit 4",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // Fails with EPIPE once the helper is gone; that is expected.
        let _ = input.write_all(&vec![b'x'; 4_000_000]);
    });
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(4));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(err, "");
    writer.join().unwrap();
}

fn spawn_marked(id: &str) -> Child {
    helper()
        .args([
            "exec",
            &format!("JETBRIDGE_EXEC_ID={id}"),
            "--",
            "sleep",
            "1000",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn environ_has(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|e| e.split(|&b| b == 0).any(|kv| kv == entry.as_bytes()))
}

#[test]
fn kill_by_marker() {
    let id = unique("abc");
    let other = format!("{id}d");
    let mut a = spawn_marked(&id);
    let mut b = spawn_marked(&id);
    let mut c = spawn_marked(&other);
    // The helper has exec'd into sleep once the marker is in the environment.
    for (p, want) in [(&a, &id), (&b, &id), (&c, &other)] {
        let entry = format!("JETBRIDGE_EXEC_ID={want}");
        eventually("the marker in the environment", || {
            environ_has(p.id(), &entry)
        });
    }
    let o = run(&["kill", &id]);
    assert!(o.status.success(), "{o:?}");
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");
    assert_eq!(wait_exit(&mut a).signal(), Some(9));
    assert_eq!(wait_exit(&mut b).signal(), Some(9));
    assert!(
        c.try_wait().unwrap().is_none(),
        "the other marker's process died"
    );
    c.kill().unwrap();
    c.wait().unwrap();
    // Nothing carries the marker any more: still exit 0.
    assert!(run(&["kill", &id]).status.success());
}

#[test]
fn read_first_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("memory.events");
    std::fs::write(&file, "low 0\noom_kill 2\n").unwrap();
    let missing = dir.path().join("nope");
    let o = run(&["read-first", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let o = run(&[
        "read-first",
        missing.to_str().unwrap(),
        file.to_str().unwrap(),
        "/etc/hostname",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "low 0\noom_kill 2\n");
    // A directory cannot be read as a file.
    let o = run(&["read-first", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn install_copies_itself() {
    let dir = tempfile::tempdir().unwrap();
    let o = helper()
        .current_dir(dir.path())
        .args(["install", "."])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let installed = dir.path().join("jetbridge-helper");
    let meta = std::fs::metadata(&installed).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o555);
    assert_eq!(meta.len(), std::fs::metadata(HELPER).unwrap().len());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["jetbridge-helper"], "a temporary file was left");
    let o = Command::new(&installed).arg("--version").output().unwrap();
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("jetbridge-helper "));
    // Installing again replaces the read-only file.
    let o = helper().args(["install"]).arg(dir.path()).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    // An unusable directory is an error.
    let o = run(&["install", "/no/such/dir"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("jetbridge-helper: "),
        "{}",
        stderr(&o)
    );
}

fn sig_caught(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .expect("SigCgt line");
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn pause_catches_term_and_exits_zero() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut child = helper().arg("pause").spawn().unwrap();
        let pid = child.id();
        eventually("SIGTERM caught", || sig_caught(pid) & (1 << 14) != 0);
        assert!(sig_caught(pid) & (1 << 1) != 0, "SIGINT not caught");
        assert!(child.try_wait().unwrap().is_none());
        kill(Pid::from_raw(pid as i32), sig).unwrap();
        let status = wait_exit(&mut child);
        assert_eq!(status.code(), Some(0), "{sig}: {status:?}");
    }
}

#[test]
fn pause_reaps_zombies() {
    // sh starts a child, then becomes the helper (same process): the helper inherits
    // a child it never spawned, as a PID 1 inherits orphans.
    let mut paused = Command::new("/bin/sh")
        .args(["-c", r#"sleep 1000 & echo $!; exec "$0" pause"#, HELPER])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let helper_pid = paused.id();
    let mut line = String::new();
    BufReader::new(paused.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let sleeper: u32 = line.trim().parse().unwrap();
    let proc_dir = format!("/proc/{sleeper}");
    eventually("the helper running", || {
        std::fs::read_link(format!("/proc/{helper_pid}/exe"))
            .is_ok_and(|exe| exe == Path::new(HELPER).canonicalize().unwrap())
            && sig_caught(helper_pid) & (1 << 14) != 0
    });
    kill(Pid::from_raw(sleeper as i32), Signal::SIGKILL).unwrap();
    // Reaped: the entry goes away rather than staying as a zombie.
    eventually("the zombie reaped", || !Path::new(&proc_dir).exists());
    kill(Pid::from_raw(helper_pid as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(&mut paused).code(), Some(0));
}

// ---- exec --record and attach: a command that outlives its exec stream ----

fn record_dir(tmp: &tempfile::TempDir) -> String {
    tmp.path().join("run").to_string_lossy().into_owned()
}

#[test]
fn record_keeps_the_output_and_status_and_attach_resumes_at_a_position() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = record_dir(&tmp);
    let script = "echo one; echo two >&2; echo three; exit 3";
    let o = run(&["exec", "--record", &dir, "--", "/bin/sh", "-c", script]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "one\nthree\n");
    assert_eq!(stderr(&o), "two\n");
    // From nothing seen: all of it; past the first line of stdout: the rest.
    let all = run(&["attach", &dir, "0", "0"]);
    assert_eq!(all.status.code(), Some(3));
    assert_eq!(
        (stdout(&all), stderr(&all)),
        ("one\nthree\n".into(), "two\n".into())
    );
    let rest = run(&["attach", &dir, "4", "0"]);
    assert_eq!(rest.status.code(), Some(3));
    assert_eq!(
        (stdout(&rest), stderr(&rest)),
        ("three\n".into(), "two\n".into())
    );
    // Mid-chunk: two bytes into "three\n".
    let mid = run(&["attach", &dir, "6", "4"]);
    assert_eq!(
        (stdout(&mid), stderr(&mid)),
        ("ree\n".into(), String::new())
    );
    // Past what was recorded: said, not silently empty.
    let past = run(&["attach", &dir, "100", "0"]);
    assert_eq!(past.status.code(), Some(125));
    assert!(
        stderr(&past).contains(&format!(
            "{ATTACH_FAILED}asked to resume at 100/0 bytes, but only 10/4 were recorded"
        )),
        "{}",
        stderr(&past)
    );
}

#[test]
fn a_second_start_with_the_same_record_attaches_and_never_runs_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = record_dir(&tmp);
    let counter = tmp.path().join("runs");
    let script = format!("echo run >> '{}'; echo out; exit 5", counter.display());
    for _ in 0..3 {
        let o = run(&["exec", "--record", &dir, "--", "/bin/sh", "-c", &script]);
        assert_eq!(o.status.code(), Some(5));
        assert_eq!(stdout(&o), "out\n");
    }
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n");
}

#[test]
fn attach_follows_a_running_command_to_its_status() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = record_dir(&tmp);
    let go = tmp.path().join("go");
    let script = format!(
        "echo a; while [ ! -e '{}' ]; do sleep 0.01; done; echo b; exit 4",
        go.display()
    );
    let mut first = helper()
        .args(["exec", "--record", &dir, "--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the first output is recorded", || {
        std::fs::metadata(Path::new(&dir).join("output")).is_ok_and(|m| m.len() > 0)
    });
    let attached = helper()
        .args(["attach", &dir, "0", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(&go, "").unwrap();
    let out = attached.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\n");
    assert_eq!(wait_exit(&mut first).code(), Some(4));
}

/// The exec stream goes away (our stdout is closed): the command runs on, all of its
/// output is still recorded, and the true status with it.
#[test]
fn a_closed_stream_does_not_stop_the_command_or_its_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = record_dir(&tmp);
    let mut child = helper()
        .args([
            "exec",
            "--record",
            &dir,
            "--",
            "/bin/sh",
            "-c",
            // Far more than a pipe holds, so the helper meets the closed stream.
            "i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done; exit 9",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert_eq!(wait_exit(&mut child).code(), Some(9));
    let o = run(&["attach", &dir, "0", "0"]);
    assert_eq!(o.status.code(), Some(9));
    let want: String = (0..20000).map(|i| format!("line{i}\n")).collect();
    assert!(stdout(&o) == want, "the record lost output");
}

#[test]
fn record_with_short_stdin_never_reports_the_commands_result() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = record_dir(&tmp);
    let mut child = helper()
        .args([
            "exec",
            "--record",
            &dir,
            "--stdin-len",
            "10",
            "--",
            "/bin/cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stdin ended after 3 bytes"),
        "{}",
        stderr(&o)
    );
    // A re-attach never passes it off as the command's result.
    let a = run(&["attach", &dir, "0", "0"]);
    assert_eq!(a.status.code(), Some(125));
    assert!(
        stderr(&a).contains(&format!("{ATTACH_FAILED}the command's stdin ended")),
        "{}",
        stderr(&a)
    );
}

/// What every `attach` that cannot give the command's result starts its stderr with.
const ATTACH_FAILED: &str = "jetbridge-helper: attach failed: ";

#[test]
fn attach_to_nothing_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&["attach", &record_dir(&tmp), "0", "0"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).starts_with(&format!("{ATTACH_FAILED}no recorded command")),
        "{}",
        stderr(&o)
    );
}

/// A recorder killed while its command runs leaves no status: an attach says so as soon
/// as it has read what there is, instead of following forever.
#[test]
fn attach_to_a_dead_recorder_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = record_dir(&tmp);
    let id = unique("dead");
    let marker = format!("JETBRIDGE_EXEC_ID={id}");
    let mut recorder = helper()
        .args([
            "exec",
            "--record",
            &dir,
            &marker,
            "--",
            "/bin/sh",
            "-c",
            "echo a; exec sleep 600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the first output is recorded", || {
        std::fs::metadata(Path::new(&dir).join("output")).is_ok_and(|m| m.len() > 0)
    });
    recorder.kill().unwrap();
    recorder.wait().unwrap();
    let o = run(&["attach", &dir, "0", "0"]);
    assert_eq!(stdout(&o), "a\n");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains(&format!("{ATTACH_FAILED}the recorder ended without")),
        "{}",
        stderr(&o)
    );
    assert_eq!(run(&["kill", &id]).status.code(), Some(0));
}

/// Past the record's limit the output still flows live, but a re-attach cannot give
/// what was not kept: it says so instead of a result with a gap.
#[test]
fn a_record_past_its_limit_is_not_passed_off_as_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = record_dir(&tmp);
    let o = helper()
        .args([
            "exec",
            "--record",
            &dir,
            "--",
            "/bin/sh",
            "-c",
            "head -c 70M /dev/zero",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(o.stdout.len(), 70 << 20, "all of it flows live");
    let a = helper()
        .args(["attach", &dir, "0", "0"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(a.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&a.stderr).contains(&format!("{ATTACH_FAILED}only the first")),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
}

/// A script that signals its own process group (`kill 0`) does not take the recorder
/// with it: the command's death is recorded.
#[test]
fn the_recorder_outlives_a_kill_of_the_process_group() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = record_dir(&tmp);
    // A process group of its own, as an exec'd command has: `kill 0` must not reach
    // this test.
    let o = helper()
        .args([
            "exec",
            "--record",
            &dir,
            "--",
            "/bin/sh",
            "-c",
            "echo a; kill 0; echo never",
        ])
        .process_group(0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    let a = run(&["attach", &dir, "0", "0"]);
    assert_eq!((a.status.code(), stdout(&a)), (Some(143), "a\n".to_owned()));
}

/// A command that cannot start is recorded with its reason, so a re-attach finds the
/// same 127 and the same words.
#[test]
fn a_command_that_cannot_start_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = record_dir(&tmp);
    let o = run(&["exec", "--record", &dir, "--", "no-such-program-here"]);
    assert_eq!(o.status.code(), Some(127));
    let a = run(&["attach", &dir, "0", "0"]);
    assert_eq!(a.status.code(), Some(127));
    assert_eq!(stderr(&a), stderr(&o));
    assert!(
        stderr(&a).contains("executable file not found"),
        "{}",
        stderr(&a)
    );
}
