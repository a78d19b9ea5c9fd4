//! The command-line grammar, parsed by hand into [`Cmd`]: a small fixed grammar that
//! the kube adapter generates, so no argument-parsing crate.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

pub const USAGE: &str = "\
usage:
  jetbridge-helper install DIR
  jetbridge-helper pause
  jetbridge-helper exec [--dir D] [--stdin-len N] [--record DIR] [NAME=VALUE]... -- PROG [ARG]...
  jetbridge-helper attach DIR OUT ERR
  jetbridge-helper kill ID
  jetbridge-helper read-first FILE...
  jetbridge-helper --version
  jetbridge-helper --help
";

/// One invocation of the helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Copy this executable to `DIR/jetbridge-helper`.
    Install {
        dir: OsString,
    },
    /// Idle as PID 1, reaping children, until SIGTERM or SIGINT.
    Pause,
    /// Run a command like `env NAME=VALUE... PROG ARG...`.
    Exec(ExecSpec),
    /// Replay a recorded command's output past `out`/`err` bytes, follow it, and exit
    /// with its status.
    Attach {
        dir: OsString,
        out: u64,
        err: u64,
    },
    /// SIGKILL every process whose environment holds `JETBRIDGE_EXEC_ID=ID`.
    Kill {
        id: OsString,
    },
    /// Print the first readable file.
    ReadFirst {
        files: Vec<OsString>,
    },
    Version,
    Help,
}

/// What `exec` runs and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// `--dir D`: the directory to enter first.
    pub dir: Option<OsString>,
    /// `--stdin-len N`: copy exactly N bytes of stdin to the command.
    pub stdin_len: Option<u64>,
    /// `--record DIR`: run the command as a child, keeping its output and status in DIR
    /// (created; if it exists, attach to the earlier run instead of starting again).
    pub record: Option<OsString>,
    /// `NAME=VALUE` pairs, split at the first `=`, in order.
    pub env: Vec<(OsString, OsString)>,
    /// The command's first word, as given.
    pub prog: OsString,
    /// The rest of the command, verbatim.
    pub args: Vec<OsString>,
}

/// A usage error: the message is printed before the usage text, and the helper exits 125.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Parses the arguments after the program name.
pub fn parse(args: &[OsString]) -> Result<Cmd, UsageError> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(usage("no subcommand given"));
    };
    let sub = sub.as_bytes();
    match sub {
        b"--version" | b"-V" if rest.is_empty() => Ok(Cmd::Version),
        b"--help" | b"-h" | b"help" if rest.is_empty() => Ok(Cmd::Help),
        b"install" => match rest {
            [dir] if !dir.is_empty() => Ok(Cmd::Install { dir: dir.clone() }),
            _ => Err(usage("install takes exactly one non-empty DIR")),
        },
        b"pause" => match rest {
            [] => Ok(Cmd::Pause),
            _ => Err(usage("pause takes no arguments")),
        },
        b"kill" => match rest {
            [id] if !id.is_empty() => Ok(Cmd::Kill { id: id.clone() }),
            _ => Err(usage("kill takes exactly one non-empty ID")),
        },
        b"read-first" => {
            if rest.is_empty() {
                Err(usage("read-first needs at least one FILE"))
            } else {
                Ok(Cmd::ReadFirst {
                    files: rest.to_vec(),
                })
            }
        }
        b"exec" => parse_exec(rest).map(Cmd::Exec),
        b"attach" => match rest {
            [dir, out, err] if !dir.is_empty() => {
                let n = |s: &OsString| {
                    parse_u64(s).ok_or_else(|| {
                        usage(format!(
                            "attach: not a decimal byte count: {}",
                            s.to_string_lossy()
                        ))
                    })
                };
                Ok(Cmd::Attach {
                    dir: dir.clone(),
                    out: n(out)?,
                    err: n(err)?,
                })
            }
            _ => Err(usage("attach takes DIR OUT ERR")),
        },
        _ => Err(usage(format!(
            "unknown subcommand or arguments: {}",
            String::from_utf8_lossy(sub)
        ))),
    }
}

fn parse_exec(args: &[OsString]) -> Result<ExecSpec, UsageError> {
    let mut dir = None;
    let mut stdin_len = None;
    let mut record = None;
    let mut env = Vec::new();
    let mut it = args.iter().enumerate();
    while let Some((i, arg)) = it.next() {
        let bytes = arg.as_bytes();
        match bytes {
            b"--" => {
                let command = &args[i + 1..];
                let Some((prog, rest)) = command.split_first() else {
                    return Err(usage("exec: empty command after --"));
                };
                if prog.is_empty() {
                    return Err(usage("exec: empty command after --"));
                }
                return Ok(ExecSpec {
                    dir,
                    stdin_len,
                    record,
                    env,
                    prog: prog.clone(),
                    args: rest.to_vec(),
                });
            }
            b"--dir" => {
                let Some((_, d)) = it.next() else {
                    return Err(usage("exec: --dir needs a value"));
                };
                if dir.is_some() {
                    return Err(usage("exec: --dir given twice"));
                }
                if d.is_empty() {
                    return Err(usage("exec: --dir needs a non-empty value"));
                }
                dir = Some(d.clone());
            }
            b"--record" => {
                let Some((_, d)) = it.next() else {
                    return Err(usage("exec: --record needs a value"));
                };
                if record.is_some() {
                    return Err(usage("exec: --record given twice"));
                }
                if d.is_empty() {
                    return Err(usage("exec: --record needs a non-empty value"));
                }
                record = Some(d.clone());
            }
            b"--stdin-len" => {
                let Some((_, n)) = it.next() else {
                    return Err(usage("exec: --stdin-len needs a value"));
                };
                if stdin_len.is_some() {
                    return Err(usage("exec: --stdin-len given twice"));
                }
                stdin_len = Some(parse_u64(n).ok_or_else(|| {
                    usage(format!(
                        "exec: --stdin-len: not a decimal byte count: {}",
                        n.to_string_lossy()
                    ))
                })?);
            }
            _ if bytes.first() == Some(&b'-') => {
                return Err(usage(format!(
                    "exec: unknown option {}",
                    arg.to_string_lossy()
                )));
            }
            _ => {
                let Some(eq) = bytes.iter().position(|&b| b == b'=') else {
                    return Err(usage(format!(
                        "exec: expected NAME=VALUE or --, got {}",
                        arg.to_string_lossy()
                    )));
                };
                if eq == 0 {
                    return Err(usage(format!(
                        "exec: empty variable name in {}",
                        arg.to_string_lossy()
                    )));
                }
                env.push((
                    OsStr::from_bytes(&bytes[..eq]).to_owned(),
                    OsStr::from_bytes(&bytes[eq + 1..]).to_owned(),
                ));
            }
        }
    }
    Err(usage("exec: missing -- before the command"))
}

/// Plain decimal digits only: no sign, no spaces, no `0x`.
fn parse_u64(s: &OsStr) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn exec(v: &[&str]) -> Result<ExecSpec, UsageError> {
        match parse(&os(v))? {
            Cmd::Exec(spec) => Ok(spec),
            other => panic!("not exec: {other:?}"),
        }
    }

    #[test]
    fn subcommands() {
        assert_eq!(parse(&os(&["pause"])), Ok(Cmd::Pause));
        assert_eq!(parse(&os(&["--version"])), Ok(Cmd::Version));
        assert_eq!(parse(&os(&["--help"])), Ok(Cmd::Help));
        assert_eq!(
            parse(&os(&["install", "."])),
            Ok(Cmd::Install { dir: ".".into() })
        );
        assert_eq!(
            parse(&os(&["kill", "x1"])),
            Ok(Cmd::Kill { id: "x1".into() })
        );
        assert_eq!(
            parse(&os(&["attach", "/r/1", "4", "0"])),
            Ok(Cmd::Attach {
                dir: "/r/1".into(),
                out: 4,
                err: 0
            })
        );
        assert_eq!(
            exec(&["exec", "--record", "/r/2", "--", "p"])
                .unwrap()
                .record,
            Some("/r/2".into())
        );
        assert_eq!(
            parse(&os(&["read-first", "a", "b"])),
            Ok(Cmd::ReadFirst {
                files: os(&["a", "b"])
            })
        );
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &[][..],
            &["nope"],
            &["pause", "x"],
            &["install"],
            &["install", ""],
            &["install", "a", "b"],
            &["kill"],
            &["kill", ""],
            &["read-first"],
            &["--version", "x"],
            &["exec"],
            &["exec", "A=1", "true"],
            &["exec", "--"],
            &["exec", "--", ""],
            &["exec", "--bogus", "--", "true"],
            &["exec", "=x", "--", "true"],
            &["exec", "NOEQ", "--", "true"],
            &["exec", "--stdin-len", "-1", "--", "true"],
            &["exec", "--stdin-len", "+1", "--", "true"],
            &["exec", "--stdin-len", "0x10", "--", "true"],
            &["exec", "--stdin-len", "", "--", "true"],
            &["exec", "--stdin-len", "99999999999999999999", "--", "true"],
            &["exec", "--stdin-len"],
            &["exec", "--dir"],
            &["exec", "--dir", "", "--", "true"],
            &["exec", "--dir", "a", "--dir", "b", "--", "true"],
            &["exec", "--record", "", "--", "true"],
            &["exec", "--record", "a", "--record", "b", "--", "true"],
            &["attach", "d", "1"],
            &["attach", "d", "1", "-2"],
            &["attach", "", "0", "0"],
        ] {
            assert!(parse(&os(bad)).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn exec_full() {
        let spec = exec(&[
            "exec",
            "--dir",
            "src",
            "A=1",
            "--stdin-len",
            "42",
            "B=x=y",
            "E=",
            "--",
            "prog=odd",
            "--dir",
            "C=3",
            "--",
        ])
        .unwrap();
        assert_eq!(spec.dir, Some("src".into()));
        assert_eq!(spec.stdin_len, Some(42));
        assert_eq!(
            spec.env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("E".into(), "".into())
            ]
        );
        assert_eq!(spec.prog, OsString::from("prog=odd"));
        assert_eq!(spec.args, os(&["--dir", "C=3", "--"]));
    }

    fn name() -> impl Strategy<Value = String> {
        // Any non-empty name without `=` that does not look like an option.
        "[^=\\-\u{0}][^=\u{0}]{0,12}"
    }

    proptest! {
        #[test]
        fn command_after_dashes_is_verbatim(
            env in proptest::collection::vec((name(), "[^\u{0}]{0,12}"), 0..4),
            dir in proptest::option::of("[^\u{0}]{1,8}"),
            len in proptest::option::of(any::<u64>()),
            command in proptest::collection::vec("[^\u{0}]{0,12}", 1..8),
        ) {
            prop_assume!(!command[0].is_empty());
            let mut argv = vec!["exec".to_owned()];
            if let Some(d) = &dir {
                argv.extend(["--dir".to_owned(), d.clone()]);
            }
            if let Some(n) = len {
                argv.extend(["--stdin-len".to_owned(), n.to_string()]);
            }
            for (k, v) in &env {
                argv.push(format!("{k}={v}"));
            }
            argv.push("--".to_owned());
            argv.extend(command.iter().cloned());
            let argv: Vec<OsString> = argv.into_iter().map(OsString::from).collect();
            let Ok(Cmd::Exec(spec)) = parse(&argv) else {
                panic!("did not parse: {argv:?}");
            };
            prop_assert_eq!(spec.dir, dir.map(OsString::from));
            prop_assert_eq!(spec.stdin_len, len);
            let got: Vec<(String, String)> = spec
                .env
                .into_iter()
                .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
                .collect();
            prop_assert_eq!(got, env);
            prop_assert_eq!(spec.prog, OsString::from(&command[0]));
            let rest: Vec<OsString> = command[1..].iter().map(OsString::from).collect();
            prop_assert_eq!(spec.args, rest);
        }

        #[test]
        fn assignment_splits_at_first_equals(n in name(), v in "[^\u{0}]{0,16}") {
            let arg = format!("{n}={v}");
            let spec = exec(&["exec", &arg, "--", "p"]).unwrap();
            prop_assert_eq!(spec.env, vec![(OsString::from(n), OsString::from(v))]);
        }
    }
}
