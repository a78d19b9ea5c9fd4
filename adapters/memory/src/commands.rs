//! The commands of the shell subset (`echo`, `cat`, `cp`, ...), run against the pod's
//! filesystem. They print the errors a busybox or coreutils command would and return
//! its exit status.

use std::time::Duration;

use jetbridge_core::Result;

use crate::fs::{DIR_MODE, FILE_MODE, FsError, MemFs, Node, basename, join};
use crate::programs::ProgramContext;

const COMMANDS: &[&str] = &[
    "echo", "cat", "cp", "mkdir", "rm", "mv", "test", "[", "exit", "true", "false", "sleep", "cd",
    "pwd", "ls", "touch", "chmod", "ln", ":", "export", "unset", "set",
];

/// Whether `name` is one of the built-in commands.
pub(crate) fn is_command(name: &str) -> bool {
    COMMANDS.contains(&name)
}

/// Run the built-in command `name`.
pub(crate) async fn run(name: &str, ctx: &ProgramContext) -> Result<i32> {
    let args = &ctx.argv[1..];
    Ok(match name {
        "echo" => echo(ctx, args),
        "cat" => cat(ctx, args),
        "cp" => cp(ctx, args),
        "mkdir" => mkdir(ctx, args),
        "rm" => rm(ctx, args),
        "mv" => mv(ctx, args),
        "test" => test(ctx, args),
        "[" => match args.split_last() {
            Some((last, rest)) if last == "]" => test(ctx, rest),
            _ => {
                ctx.eprint("[: missing ]\n");
                2
            }
        },
        "exit" => args
            .first()
            .map_or(0, |n| n.parse::<i64>().map_or(2, |n| (n & 0xff) as i32)),
        "true" | ":" | "export" | "unset" | "set" => 0,
        "false" => 1,
        "sleep" => return sleep(ctx, args).await,
        "cd" => {
            let target = args.first().map_or("/", String::as_str);
            if ctx.fs.lock().is_dir(&ctx.path(target)) {
                0
            } else {
                ctx.eprint(&format!("cd: can't cd to {target}\n"));
                2
            }
        }
        "pwd" => {
            ctx.print(&format!("{}\n", ctx.cwd));
            0
        }
        "ls" => ls(ctx, args),
        "touch" => touch(ctx, args),
        "chmod" => chmod(ctx, args),
        "ln" => ln(ctx, args),
        _ => {
            ctx.eprint(&format!("sh: {name}: command not found\n"));
            127
        }
    })
}

/// Split leading `-xyz` flags (until `--` or the first operand) from operands.
fn flags<'a>(
    args: &'a [String],
    allowed: &str,
) -> std::result::Result<(String, Vec<&'a str>), char> {
    let mut f = String::new();
    let mut ops = Vec::new();
    let mut done = false;
    for a in args {
        if !done && a == "--" {
            done = true;
        } else if !done && a.len() > 1 && a.starts_with('-') {
            for c in a[1..].chars() {
                if !allowed.contains(c) {
                    return Err(c);
                }
                f.push(c);
            }
        } else {
            done = true;
            ops.push(a.as_str());
        }
    }
    Ok((f, ops))
}

fn bad_option(ctx: &ProgramContext, cmd: &str, c: char) -> i32 {
    ctx.eprint(&format!("{cmd}: invalid option -- '{c}'\n"));
    1
}

fn echo(ctx: &ProgramContext, args: &[String]) -> i32 {
    let mut newline = true;
    let mut rest = args;
    while let Some((first, tail)) = rest.split_first() {
        if first == "-n" {
            newline = false;
            rest = tail;
        } else {
            break;
        }
    }
    let mut s = rest.join(" ");
    if newline {
        s.push('\n');
    }
    ctx.print(&s);
    0
}

fn cat(ctx: &ProgramContext, args: &[String]) -> i32 {
    if args.is_empty() {
        ctx.stdout.write(&ctx.stdin);
        return 0;
    }
    let mut status = 0;
    for a in args {
        if a == "-" {
            ctx.stdout.write(&ctx.stdin);
            continue;
        }
        let r = ctx.fs.lock().read_file(&ctx.path(a));
        match r {
            Ok(d) => ctx.stdout.write(&d),
            Err(e) => {
                ctx.eprint(&format!("cat: {a}: {}\n", e.text()));
                status = 1;
            }
        }
    }
    status
}

/// Copy `src` (absolute) to `dst` (absolute, the final name).
fn copy_node(
    fs: &mut MemFs,
    src: &str,
    dst: &str,
    recursive: bool,
) -> std::result::Result<(), String> {
    let node = fs
        .stat(src, true)
        .cloned()
        .ok_or_else(|| FsError::NotFound.text().to_owned())?;
    match node {
        Node::Dir { mode } => {
            if !recursive {
                return Err("omitting directory (-r not specified)".into());
            }
            let sk = fs.resolve(src, true).map_err(|e| e.text().to_owned())?;
            let dk = fs.resolve(dst, true).map_err(|e| e.text().to_owned())?;
            if dk == sk || dk.starts_with(&format!("{sk}/")) || sk.is_empty() && !dk.is_empty() {
                return Err("cannot copy a directory into itself".into());
            }
            let entries = fs.subtree(src).map_err(|e| e.text().to_owned())?;
            match fs.stat(dst, true) {
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(FsError::NotADirectory.text().into()),
                None => fs
                    .mkdir(dst, false, mode)
                    .map_err(|e| e.text().to_owned())?,
            }
            let dk = fs.resolve(dst, true).map_err(|e| e.text().to_owned())?;
            for (rel, n) in entries {
                let key = if dk.is_empty() {
                    rel
                } else {
                    format!("{dk}/{rel}")
                };
                match (fs.get_key(&key), &n) {
                    (Some(Node::Dir { .. }), Node::Dir { .. }) => {}
                    (Some(Node::Dir { .. }), _) => {
                        return Err(format!("cannot overwrite directory '{key}'"));
                    }
                    _ => fs.insert_key(key, n),
                }
            }
            Ok(())
        }
        Node::File { mode, data } => {
            fs.write_file(dst, &data, false, mode)
                .map_err(|e| e.text().to_owned())?;
            fs.chmod(dst, mode).map_err(|e| e.text().to_owned())
        }
        // `stat` followed links, so a symlink here is dangling.
        Node::Symlink { .. } => Err(FsError::NotFound.text().into()),
    }
}

/// The destination of `src` given the last operand `dst` (into it if it is a directory).
fn dest_for(fs: &MemFs, src: &str, dst: &str) -> String {
    if fs.is_dir(dst) {
        join(dst, basename(src))
    } else {
        dst.to_owned()
    }
}

fn cp(ctx: &ProgramContext, args: &[String]) -> i32 {
    let (f, ops) = match flags(args, "rRpfaPLd") {
        Ok(v) => v,
        Err(c) => return bad_option(ctx, "cp", c),
    };
    let recursive = f.contains(['r', 'R', 'a']);
    let Some((dst, srcs)) = ops.split_last().filter(|(_, s)| !s.is_empty()) else {
        ctx.eprint("cp: missing file operand\n");
        return 1;
    };
    let dst = ctx.path(dst);
    let mut fs = ctx.fs.lock();
    if srcs.len() > 1 && !fs.is_dir(&dst) {
        drop(fs);
        ctx.eprint(&format!("cp: target '{dst}' is not a directory\n"));
        return 1;
    }
    let mut status = 0;
    for s in srcs {
        let src = ctx.path(s);
        let target = dest_for(&fs, &src, &dst);
        if let Err(e) = copy_node(&mut fs, &src, &target, recursive) {
            ctx.eprint(&format!("cp: {s}: {e}\n"));
            status = 1;
        }
    }
    status
}

fn mkdir(ctx: &ProgramContext, args: &[String]) -> i32 {
    let (f, ops) = match flags(args, "p") {
        Ok(v) => v,
        Err(c) => return bad_option(ctx, "mkdir", c),
    };
    if ops.is_empty() {
        ctx.eprint("mkdir: missing operand\n");
        return 1;
    }
    let mut status = 0;
    for d in ops {
        let r = ctx.fs.lock().mkdir(&ctx.path(d), f.contains('p'), DIR_MODE);
        if let Err(e) = r {
            ctx.eprint(&format!(
                "mkdir: can't create directory '{d}': {}\n",
                e.text()
            ));
            status = 1;
        }
    }
    status
}

fn rm(ctx: &ProgramContext, args: &[String]) -> i32 {
    let (f, ops) = match flags(args, "rRfv") {
        Ok(v) => v,
        Err(c) => return bad_option(ctx, "rm", c),
    };
    let recursive = f.contains(['r', 'R']);
    let force = f.contains('f');
    let mut status = 0;
    for p in ops {
        let path = ctx.path(p);
        let mut fs = ctx.fs.lock();
        let r = match fs.stat(&path, false) {
            None => Err(FsError::NotFound),
            Some(Node::Dir { .. }) if !recursive => Err(FsError::IsADirectory),
            Some(_)
                if fs
                    .resolve(&path, false)
                    .map(|k| k.is_empty())
                    .unwrap_or(false) =>
            {
                Err(FsError::Invalid)
            }
            Some(_) => fs.remove(&path, true),
        };
        drop(fs);
        match r {
            Err(FsError::NotFound) if force => {}
            Err(e) => {
                ctx.eprint(&format!("rm: can't remove '{p}': {}\n", e.text()));
                status = 1;
            }
            Ok(()) => {}
        }
    }
    status
}

fn mv(ctx: &ProgramContext, args: &[String]) -> i32 {
    let (_, ops) = match flags(args, "fnv") {
        Ok(v) => v,
        Err(c) => return bad_option(ctx, "mv", c),
    };
    let Some((dst, srcs)) = ops.split_last().filter(|(_, s)| !s.is_empty()) else {
        ctx.eprint("mv: missing file operand\n");
        return 1;
    };
    let dst = ctx.path(dst);
    let mut fs = ctx.fs.lock();
    let mut status = 0;
    for s in srcs {
        let src = ctx.path(s);
        let target = dest_for(&fs, &src, &dst);
        if let Err(e) = fs.rename(&src, &target) {
            ctx.eprint(&format!("mv: can't rename '{s}': {}\n", e.text()));
            status = 1;
        }
    }
    status
}

fn test(ctx: &ProgramContext, args: &[String]) -> i32 {
    match eval_test(ctx, args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(msg) => {
            ctx.eprint(&format!("test: {msg}\n"));
            2
        }
    }
}

fn eval_test(ctx: &ProgramContext, args: &[String]) -> std::result::Result<bool, String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    const BINARY: &[&str] = &["=", "==", "!=", "-eq", "-ne", "-lt", "-le", "-gt", "-ge"];
    match a.as_slice() {
        [] => Ok(false),
        [s] => Ok(!s.is_empty()),
        [l, op, r] if BINARY.contains(op) => binary(l, op, r),
        ["!", ..] => eval_test(ctx, &args[1..]).map(|b| !b),
        [op, x] => unary(ctx, op, x),
        [l, op, r] => binary(l, op, r),
        _ => Err("too many arguments".into()),
    }
}

fn unary(ctx: &ProgramContext, op: &str, x: &str) -> std::result::Result<bool, String> {
    let fs = ctx.fs.lock();
    let path = ctx.path(x);
    Ok(match op {
        "-z" => x.is_empty(),
        "-n" => !x.is_empty(),
        "-e" => fs.stat(&path, true).is_some(),
        "-f" => matches!(fs.stat(&path, true), Some(Node::File { .. })),
        "-d" => matches!(fs.stat(&path, true), Some(Node::Dir { .. })),
        "-s" => matches!(fs.stat(&path, true), Some(Node::File { data, .. }) if !data.is_empty()),
        "-L" | "-h" => matches!(fs.stat(&path, false), Some(Node::Symlink { .. })),
        "-x" => {
            matches!(fs.stat(&path, true), Some(Node::File { mode, .. } | Node::Dir { mode }) if mode & 0o111 != 0)
        }
        "-r" | "-w" => fs.stat(&path, true).is_some(),
        _ => return Err(format!("{op}: unary operator expected")),
    })
}

fn binary(l: &str, op: &str, r: &str) -> std::result::Result<bool, String> {
    let num = |s: &str| {
        s.trim()
            .parse::<i64>()
            .map_err(|_| format!("{s}: integer expression expected"))
    };
    Ok(match op {
        "=" | "==" => l == r,
        "!=" => l != r,
        "-eq" => num(l)? == num(r)?,
        "-ne" => num(l)? != num(r)?,
        "-lt" => num(l)? < num(r)?,
        "-le" => num(l)? <= num(r)?,
        "-gt" => num(l)? > num(r)?,
        "-ge" => num(l)? >= num(r)?,
        _ => return Err(format!("{op}: binary operator expected")),
    })
}

async fn sleep(ctx: &ProgramContext, args: &[String]) -> Result<i32> {
    let Some(a) = args.first() else {
        ctx.eprint("sleep: missing operand\n");
        return Ok(1);
    };
    let secs = a
        .strip_suffix('s')
        .unwrap_or(a)
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0);
    let Some(secs) = secs else {
        ctx.eprint(&format!("sleep: invalid time interval '{a}'\n"));
        return Ok(1);
    };
    // Clamp absurd values instead of overflowing the duration.
    tokio::time::sleep(Duration::from_secs_f64(secs.min(1e9))).await;
    Ok(0)
}

fn ls(ctx: &ProgramContext, args: &[String]) -> i32 {
    let (f, ops) = match flags(args, "1aA") {
        Ok(v) => v,
        Err(c) => return bad_option(ctx, "ls", c),
    };
    let all = f.contains(['a', 'A']);
    let ops: Vec<&str> = if ops.is_empty() { vec!["."] } else { ops };
    let fs = ctx.fs.lock();
    let mut status = 0;
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut err = String::new();
    for o in &ops {
        let p = ctx.path(o);
        match fs.stat(&p, true) {
            None => {
                err.push_str(&format!(
                    "ls: cannot access '{o}': No such file or directory\n"
                ));
                status = 2;
            }
            Some(Node::Dir { .. }) => dirs.push((*o, p)),
            Some(_) => files.push(*o),
        }
    }
    files.sort();
    let mut out = String::new();
    for f in &files {
        out.push_str(f);
        out.push('\n');
    }
    let headers = ops.len() > 1;
    for (i, (name, p)) in dirs.iter().enumerate() {
        if headers {
            if i > 0 || !files.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("{name}:\n"));
        }
        for n in fs.list(p).unwrap_or_default() {
            if all || !n.starts_with('.') {
                out.push_str(&n);
                out.push('\n');
            }
        }
    }
    drop(fs);
    ctx.eprint(&err);
    ctx.print(&out);
    status
}

fn touch(ctx: &ProgramContext, args: &[String]) -> i32 {
    let (_, ops) = match flags(args, "cam") {
        Ok(v) => v,
        Err(c) => return bad_option(ctx, "touch", c),
    };
    let mut status = 0;
    for p in ops {
        let r = ctx.fs.lock().write_file(&ctx.path(p), b"", true, FILE_MODE);
        match r {
            Ok(()) | Err(FsError::IsADirectory) => {}
            Err(e) => {
                ctx.eprint(&format!("touch: {p}: {}\n", e.text()));
                status = 1;
            }
        }
    }
    status
}

/// Apply a mode argument (octal, or symbolic like `+x`, `u+rw,go-w`) to `mode`.
fn apply_mode(spec: &str, mode: u32) -> Option<u32> {
    if spec.chars().all(|c| c.is_digit(8)) && !spec.is_empty() {
        return u32::from_str_radix(spec, 8).ok().filter(|m| *m <= 0o7777);
    }
    let mut mode = mode;
    for clause in spec.split(',') {
        let op_at = clause.find(['+', '-', '='])?;
        let (who, rest) = clause.split_at(op_at);
        let mut who_mask = 0;
        for w in who.chars() {
            who_mask |= match w {
                'u' => 0o700,
                'g' => 0o070,
                'o' => 0o007,
                'a' => 0o777,
                _ => return None,
            };
        }
        if who_mask == 0 {
            who_mask = 0o777;
        }
        let op = rest.chars().next()?;
        let mut bits = 0;
        for p in rest[1..].chars() {
            bits |= match p {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                _ => return None,
            };
        }
        let bits = bits & who_mask;
        mode = match op {
            '+' => mode | bits,
            '-' => mode & !bits,
            _ => (mode & !who_mask) | bits,
        };
    }
    Some(mode)
}

fn chmod(ctx: &ProgramContext, args: &[String]) -> i32 {
    let recursive = args.first().is_some_and(|a| a == "-R");
    let args = if recursive { &args[1..] } else { args };
    let Some((spec, paths)) = args.split_first().filter(|(_, p)| !p.is_empty()) else {
        ctx.eprint("chmod: missing operand\n");
        return 1;
    };
    let mut fs = ctx.fs.lock();
    let mut status = 0;
    for p in paths {
        let path = ctx.path(p);
        let mut targets = vec![path.clone()];
        if recursive && fs.is_dir(&path) {
            for (rel, n) in fs.subtree(&path).unwrap_or_default() {
                if !matches!(n, Node::Symlink { .. }) {
                    targets.push(join(&path, &rel));
                }
            }
        }
        for t in targets {
            let cur = match fs.stat(&t, true) {
                Some(Node::Dir { mode } | Node::File { mode, .. }) => *mode,
                _ => {
                    ctx.eprint(&format!("chmod: {p}: No such file or directory\n"));
                    status = 1;
                    continue;
                }
            };
            let Some(m) = apply_mode(spec, cur) else {
                ctx.eprint(&format!("chmod: invalid mode '{spec}'\n"));
                return 1;
            };
            if let Err(e) = fs.chmod(&t, m) {
                ctx.eprint(&format!("chmod: {p}: {}\n", e.text()));
                status = 1;
            }
        }
    }
    status
}

fn ln(ctx: &ProgramContext, args: &[String]) -> i32 {
    let (f, ops) = match flags(args, "sfn") {
        Ok(v) => v,
        Err(c) => return bad_option(ctx, "ln", c),
    };
    if !f.contains('s') {
        ctx.eprint("ln: hard links are not supported in memory pods; use ln -s\n");
        return 1;
    }
    let (target, link) = match ops.as_slice() {
        [t] => (*t, basename(t)),
        [t, l] => (*t, *l),
        _ => {
            ctx.eprint("ln: expected TARGET [LINK]\n");
            return 1;
        }
    };
    let mut link_path = ctx.path(link);
    let mut fs = ctx.fs.lock();
    if !f.contains('n') && fs.is_dir(&link_path) {
        link_path = join(&link_path, basename(target));
    }
    if f.contains('f') && fs.stat(&link_path, false).is_some() {
        let _ = fs.remove(&link_path, false);
    }
    match fs.symlink(target, &link_path) {
        Ok(()) => 0,
        Err(e) => {
            drop(fs);
            ctx.eprint(&format!("ln: {link}: {}\n", e.text()));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::apply_mode;

    #[test]
    fn modes() {
        assert_eq!(apply_mode("755", 0), Some(0o755));
        assert_eq!(apply_mode("+x", 0o644), Some(0o755));
        assert_eq!(apply_mode("go-w", 0o666), Some(0o644));
        assert_eq!(apply_mode("u=rx", 0o644), Some(0o544));
        assert_eq!(apply_mode("99", 0), None);
        assert_eq!(apply_mode("q+x", 0), None);
    }
}
