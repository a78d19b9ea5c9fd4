//! A small `sh` for fake pods: the subset of the shell that suites and simple pipeline
//! scripts use (see the crate README): words with quotes and `$VAR` / `${VAR}` / `$?`
//! expansion, separators `;`, newline, `&&`, `||`, redirections `>`, `>>`, `<`,
//! `2>&1`, `>&2`, assignments, `cd`, `exit`, `export`, `set -e`. Everything else a
//! command needs (`echo`, `cat`, `cp`, ...) is dispatched like any program.
//!
//! Unsupported syntax (pipes, `&`, subshells, `$(...)`, here-documents, control
//! keywords) is a syntax error with exit status 2, never a silent misreading.

use std::collections::BTreeMap;

use bytes::Bytes;
use jetbridge_core::Result;

use crate::fs::{FILE_MODE, FsError, Node, join};
use crate::programs::{self, Output, ProgramContext};

/// One piece of a word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// Unquoted literal text.
    Lit(String),
    /// Quoted or escaped literal text.
    QLit(String),
    /// A parameter expansion; `quoted` ones are not field-split.
    Var { var: Var, quoted: bool },
}

/// What `$...` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VarName {
    Named(String),
    Status,
    Count,
    All,
    Pid,
    Positional(usize),
}

/// A parameter expansion, with an optional `${NAME:-default}` / `${NAME-default}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Var {
    pub(crate) name: VarName,
    /// `(colon, default)`: with `colon` the default also replaces an empty value.
    pub(crate) default: Option<(bool, String)>,
}

/// A word: parts glued together.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Word(pub(crate) Vec<Part>);

/// A redirection operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedirKind {
    /// `>`
    Out,
    /// `>>`
    Append,
    /// `<`
    In,
    /// `>&`
    Dup,
}

/// A token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    Word(Word),
    /// `;` or newline.
    Sep,
    And,
    Or,
    Redir {
        fd: u32,
        kind: RedirKind,
    },
}

/// Why a script cannot be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError(pub(crate) String);

fn unsupported(what: &str) -> SyntaxError {
    SyntaxError(format!("{what} not supported by this shell"))
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Split a script into tokens.
pub(crate) fn tokenize(src: &str) -> std::result::Result<Vec<Token>, SyntaxError> {
    let chars: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let mut word = Word::default();
    let mut in_word = false;
    let mut i = 0;

    fn push_lit(word: &mut Word, c: char, quoted: bool) {
        match (word.0.last_mut(), quoted) {
            (Some(Part::Lit(s)), false) | (Some(Part::QLit(s)), true) => s.push(c),
            _ => word.0.push(if quoted {
                Part::QLit(c.to_string())
            } else {
                Part::Lit(c.to_string())
            }),
        }
    }

    macro_rules! end_word {
        () => {
            if in_word {
                toks.push(Token::Word(std::mem::take(&mut word)));
                in_word = false;
            }
        };
    }

    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\r' => {
                end_word!();
                i += 1;
            }
            '\n' => {
                end_word!();
                toks.push(Token::Sep);
                i += 1;
            }
            ';' => {
                end_word!();
                toks.push(Token::Sep);
                i += 1;
            }
            '&' => {
                end_word!();
                if chars.get(i + 1) == Some(&'&') {
                    toks.push(Token::And);
                    i += 2;
                } else {
                    return Err(unsupported("background jobs ('&') are"));
                }
            }
            '|' => {
                end_word!();
                if chars.get(i + 1) == Some(&'|') {
                    toks.push(Token::Or);
                    i += 2;
                } else {
                    return Err(unsupported("pipes ('|') are"));
                }
            }
            '(' | ')' => return Err(unsupported("subshells ('(' and ')') are")),
            '`' => return Err(unsupported("command substitution ('`') is")),
            '>' | '<' => {
                // An unquoted all-digit word right before is the file descriptor.
                let mut fd = if c == '>' { 1 } else { 0 };
                if in_word {
                    if let [Part::Lit(s)] = word.0.as_slice()
                        && !s.is_empty()
                        && s.chars().all(|d| d.is_ascii_digit())
                    {
                        fd = s
                            .parse()
                            .map_err(|_| SyntaxError(format!("bad file descriptor {s}")))?;
                        word = Word::default();
                        in_word = false;
                    } else {
                        end_word!();
                    }
                }
                let next = chars.get(i + 1).copied();
                let (kind, len) = match (c, next) {
                    ('>', Some('>')) => (RedirKind::Append, 2),
                    ('>', Some('&')) => (RedirKind::Dup, 2),
                    ('>', Some('|')) => (RedirKind::Out, 2),
                    ('>', _) => (RedirKind::Out, 1),
                    ('<', Some('<')) => return Err(unsupported("here-documents ('<<') are")),
                    ('<', Some('&')) => return Err(unsupported("'<&' is")),
                    ('<', Some('>')) => return Err(unsupported("'<>' is")),
                    _ => (RedirKind::In, 1),
                };
                toks.push(Token::Redir { fd, kind });
                i += len;
            }
            '#' if !in_word => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '\\' => {
                in_word = true;
                match chars.get(i + 1) {
                    Some('\n') => {
                        i += 2;
                        // A line continuation does not start a word by itself.
                        if word.0.is_empty() {
                            in_word = false;
                        }
                    }
                    Some(&n) => {
                        push_lit(&mut word, n, true);
                        i += 2;
                    }
                    None => {
                        push_lit(&mut word, '\\', true);
                        i += 1;
                    }
                }
            }
            '\'' => {
                in_word = true;
                let start = i + 1;
                let end = chars[start..]
                    .iter()
                    .position(|&q| q == '\'')
                    .ok_or_else(|| SyntaxError("unterminated quoted string".into()))?;
                let s: String = chars[start..start + end].iter().collect();
                word.0.push(Part::QLit(s));
                i = start + end + 1;
            }
            '"' => {
                in_word = true;
                word.0.push(Part::QLit(String::new()));
                i += 1;
                loop {
                    let Some(&q) = chars.get(i) else {
                        return Err(SyntaxError("unterminated quoted string".into()));
                    };
                    match q {
                        '"' => {
                            i += 1;
                            break;
                        }
                        '\\' => match chars.get(i + 1) {
                            Some('\n') => i += 2,
                            Some(&n @ ('$' | '`' | '"' | '\\')) => {
                                push_lit(&mut word, n, true);
                                i += 2;
                            }
                            _ => {
                                push_lit(&mut word, '\\', true);
                                i += 1;
                            }
                        },
                        '`' => return Err(unsupported("command substitution ('`') is")),
                        '$' => {
                            i = parse_var(&chars, i, true, &mut word)?;
                        }
                        q => {
                            push_lit(&mut word, q, true);
                            i += 1;
                        }
                    }
                }
            }
            '$' => {
                in_word = true;
                i = parse_var(&chars, i, false, &mut word)?;
            }
            c => {
                in_word = true;
                push_lit(&mut word, c, false);
                i += 1;
            }
        }
    }
    if in_word {
        toks.push(Token::Word(word));
    }
    Ok(toks)
}

/// Parse `$...` starting at `chars[i] == '$'`; push the part; return the next index.
fn parse_var(
    chars: &[char],
    i: usize,
    quoted: bool,
    word: &mut Word,
) -> std::result::Result<usize, SyntaxError> {
    let simple = |name: VarName| Part::Var {
        var: Var {
            name,
            default: None,
        },
        quoted,
    };
    match chars.get(i + 1).copied() {
        Some('{') => {
            let start = i + 2;
            let len = chars[start..]
                .iter()
                .position(|&c| c == '}')
                .ok_or_else(|| SyntaxError("missing '}'".into()))?;
            let inner: String = chars[start..start + len].iter().collect();
            let name_len = if inner.starts_with(|c: char| c.is_ascii_digit()) {
                inner.chars().take_while(char::is_ascii_digit).count()
            } else if inner.starts_with(['?', '#', '@', '*', '$']) {
                1
            } else {
                inner.chars().take_while(|&c| is_name_char(c)).count()
            };
            let (name, rest) = inner.split_at(name_len);
            let name = match name {
                "" => return Err(SyntaxError(format!("${{{inner}}}: bad substitution"))),
                "?" => VarName::Status,
                "#" => VarName::Count,
                "@" | "*" => VarName::All,
                "$" => VarName::Pid,
                n if n.starts_with(|c: char| c.is_ascii_digit()) => VarName::Positional(
                    n.parse()
                        .map_err(|_| SyntaxError(format!("${{{inner}}}: bad substitution")))?,
                ),
                n if n.starts_with(is_name_start) => VarName::Named(n.to_owned()),
                _ => return Err(SyntaxError(format!("${{{inner}}}: bad substitution"))),
            };
            let default = if rest.is_empty() {
                None
            } else if let Some(d) = rest.strip_prefix(":-") {
                Some((true, d.to_owned()))
            } else if let Some(d) = rest.strip_prefix('-') {
                Some((false, d.to_owned()))
            } else {
                return Err(SyntaxError(format!("${{{inner}}}: bad substitution")));
            };
            word.0.push(Part::Var {
                var: Var { name, default },
                quoted,
            });
            Ok(start + len + 1)
        }
        Some('(') => Err(unsupported("command substitution ('$(') is")),
        Some('?') => {
            word.0.push(simple(VarName::Status));
            Ok(i + 2)
        }
        Some('#') => {
            word.0.push(simple(VarName::Count));
            Ok(i + 2)
        }
        Some('@' | '*') => {
            word.0.push(simple(VarName::All));
            Ok(i + 2)
        }
        Some('$') => {
            word.0.push(simple(VarName::Pid));
            Ok(i + 2)
        }
        Some(d) if d.is_ascii_digit() => {
            word.0.push(simple(VarName::Positional(
                d.to_digit(10).unwrap_or(0) as usize
            )));
            Ok(i + 2)
        }
        Some(c) if is_name_start(c) => {
            let len = chars[i + 1..]
                .iter()
                .take_while(|&&c| is_name_char(c))
                .count();
            let name: String = chars[i + 1..i + 1 + len].iter().collect();
            word.0.push(simple(VarName::Named(name)));
            Ok(i + 1 + len)
        }
        _ => {
            // A lone `$` is literal.
            let lit = if quoted {
                Part::QLit("$".into())
            } else {
                Part::Lit("$".into())
            };
            word.0.push(lit);
            Ok(i + 1)
        }
    }
}

/// A simple command: words and redirections in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Command {
    pub(crate) words: Vec<Word>,
    pub(crate) redirs: Vec<(u32, RedirKind, Word)>,
}

/// How a command joins the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Connector {
    And,
    Or,
}

/// `cmd && cmd || cmd ...`
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AndOr {
    pub(crate) first: Command,
    pub(crate) rest: Vec<(Connector, Command)>,
}

const KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
    "function", "{", "}", "!", "select",
];

/// Parse a script into and-or lists.
pub(crate) fn parse(src: &str) -> std::result::Result<Vec<AndOr>, SyntaxError> {
    let toks = tokenize(src)?;
    let mut lists = Vec::new();
    let mut it = toks.into_iter().peekable();
    loop {
        while it.peek() == Some(&Token::Sep) {
            it.next();
        }
        if it.peek().is_none() {
            break;
        }
        let first = parse_command(&mut it)?;
        let mut rest = Vec::new();
        loop {
            let conn = match it.peek() {
                Some(Token::And) => Connector::And,
                Some(Token::Or) => Connector::Or,
                _ => break,
            };
            it.next();
            // A newline may follow `&&` / `||`.
            while it.peek() == Some(&Token::Sep) {
                it.next();
            }
            rest.push((conn, parse_command(&mut it)?));
        }
        lists.push(AndOr { first, rest });
        match it.peek() {
            None | Some(Token::Sep) => {}
            Some(t) => return Err(SyntaxError(format!("unexpected {t:?}"))),
        }
    }
    Ok(lists)
}

fn parse_command(
    it: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
) -> std::result::Result<Command, SyntaxError> {
    let mut cmd = Command::default();
    loop {
        match it.peek() {
            Some(Token::Word(_)) => {
                if let Some(Token::Word(w)) = it.next() {
                    if cmd.words.is_empty()
                        && let [Part::Lit(s)] = w.0.as_slice()
                        && KEYWORDS.contains(&s.as_str())
                    {
                        return Err(unsupported(&format!("'{s}' is")));
                    }
                    cmd.words.push(w);
                }
            }
            Some(Token::Redir { .. }) => {
                let Some(Token::Redir { fd, kind }) = it.next() else {
                    break;
                };
                match it.next() {
                    Some(Token::Word(w)) => cmd.redirs.push((fd, kind, w)),
                    _ => return Err(SyntaxError("redirection without a target".into())),
                }
            }
            _ => break,
        }
    }
    if cmd.words.is_empty() && cmd.redirs.is_empty() {
        let what = match it.peek() {
            Some(Token::And) => "'&&'",
            Some(Token::Or) => "'||'",
            Some(Token::Sep) => "';'",
            _ => "end of input",
        };
        return Err(SyntaxError(format!("unexpected {what}")));
    }
    Ok(cmd)
}

/// Whether `s` is a valid variable name.
fn is_name(s: &str) -> bool {
    s.starts_with(is_name_start) && s.chars().all(is_name_char)
}

/// The shell's own state.
struct Shell {
    vars: BTreeMap<String, String>,
    cwd: String,
    status: i32,
    /// `$0`, `$1`, ...
    args: Vec<String>,
    errexit: bool,
    base: ProgramContext,
}

enum Flow {
    Next,
    Exit(i32),
}

impl Shell {
    fn lookup(&self, v: &Var) -> Option<String> {
        let value = match &v.name {
            VarName::Named(n) => self.vars.get(n).cloned(),
            VarName::Status => Some(self.status.to_string()),
            VarName::Count => Some(self.args.len().saturating_sub(1).to_string()),
            VarName::All => Some(
                self.args
                    .iter()
                    .skip(1)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            VarName::Pid => Some("1".into()),
            VarName::Positional(n) => self.args.get(*n).cloned(),
        };
        match (&v.default, value) {
            (Some((true, d)), Some(v)) if v.is_empty() => Some(d.clone()),
            (Some((_, d)), None) => Some(d.clone()),
            (_, v) => v,
        }
    }

    /// Expand a word into fields (unquoted expansions are split on blanks).
    fn expand(&self, w: &Word) -> Vec<String> {
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut has = false;
        for p in &w.0 {
            match p {
                Part::Lit(s) | Part::QLit(s) => {
                    cur.push_str(s);
                    has = true;
                }
                Part::Var { var, quoted: true } => {
                    cur.push_str(&self.lookup(var).unwrap_or_default());
                    has = true;
                }
                Part::Var { var, quoted: false } => {
                    let v = self.lookup(var).unwrap_or_default();
                    let blank = |c: char| c == ' ' || c == '\t' || c == '\n';
                    let pieces: Vec<&str> = v.split(blank).filter(|s| !s.is_empty()).collect();
                    if v.starts_with(blank) && has {
                        fields.push(std::mem::take(&mut cur));
                        has = false;
                    }
                    for (i, piece) in pieces.iter().enumerate() {
                        if i > 0 {
                            fields.push(std::mem::take(&mut cur));
                        }
                        cur.push_str(piece);
                        has = true;
                    }
                    if v.ends_with(blank) && has {
                        fields.push(std::mem::take(&mut cur));
                        has = false;
                    }
                }
            }
        }
        if has {
            fields.push(cur);
        }
        fields
    }

    /// Expand a word without splitting (assignment values, redirection targets).
    fn expand_one(&self, w: &Word) -> String {
        let mut s = String::new();
        for p in &w.0 {
            match p {
                Part::Lit(t) | Part::QLit(t) => s.push_str(t),
                Part::Var { var, .. } => s.push_str(&self.lookup(var).unwrap_or_default()),
            }
        }
        s
    }

    /// `NAME=value` at the start of a command, if `w` is one.
    fn assignment(&self, w: &Word) -> Option<(String, String)> {
        let Some(Part::Lit(first)) = w.0.first() else {
            return None;
        };
        let (name, value) = first.split_once('=')?;
        if !is_name(name) {
            return None;
        }
        let mut rest = Word(w.0[1..].to_vec());
        rest.0.insert(0, Part::QLit(value.to_owned()));
        Some((name.to_owned(), self.expand_one(&rest)))
    }

    async fn run_list(&mut self, lists: &[AndOr]) -> Result<Flow> {
        for list in lists {
            if let Flow::Exit(code) = self.run_and_or(list).await? {
                return Ok(Flow::Exit(code));
            }
        }
        Ok(Flow::Next)
    }

    async fn run_and_or(&mut self, list: &AndOr) -> Result<Flow> {
        if let Flow::Exit(c) = self.run_command(&list.first).await? {
            return Ok(Flow::Exit(c));
        }
        let mut last_ran = 0;
        for (i, (conn, cmd)) in list.rest.iter().enumerate() {
            let run = match conn {
                Connector::And => self.status == 0,
                Connector::Or => self.status != 0,
            };
            if run {
                if let Flow::Exit(c) = self.run_command(cmd).await? {
                    return Ok(Flow::Exit(c));
                }
                last_ran = i + 1;
            }
        }
        // `set -e` ignores failures of commands that are not last in an and-or list.
        if self.errexit && self.status != 0 && last_ran == list.rest.len() {
            return Ok(Flow::Exit(self.status));
        }
        Ok(Flow::Next)
    }

    fn redirect(
        &self,
        cmd: &Command,
        io: &mut [Output; 3],
        stdin: &mut Bytes,
    ) -> std::result::Result<(), String> {
        let fs = self.base.fs.clone();
        for (fd, kind, target) in &cmd.redirs {
            let target = self.expand_one(target);
            let fd = *fd as usize;
            match kind {
                RedirKind::Out | RedirKind::Append => {
                    let path = join(&self.cwd, &target);
                    let append = *kind == RedirKind::Append;
                    fs.lock()
                        .write_file(&path, b"", append, FILE_MODE)
                        .map_err(|e| format!("can't create {target}: {}", e.text()))?;
                    if fd == 1 || fd == 2 {
                        io[fd] = Output::file(fs.clone(), path);
                    }
                }
                RedirKind::In => {
                    let path = join(&self.cwd, &target);
                    let data = fs
                        .lock()
                        .read_file(&path)
                        .map_err(|e| format!("can't open {target}: {}", e.text()))?;
                    if fd == 0 {
                        *stdin = data;
                    }
                }
                RedirKind::Dup => {
                    let to: usize = match target.as_str() {
                        "1" => 1,
                        "2" => 2,
                        _ => return Err(format!("{target}: bad file descriptor")),
                    };
                    if fd == 1 || fd == 2 {
                        io[fd] = io[to].clone();
                    }
                }
            }
        }
        Ok(())
    }

    async fn run_command(&mut self, cmd: &Command) -> Result<Flow> {
        let mut assigns = Vec::new();
        let mut words = cmd.words.iter().peekable();
        while let Some(w) = words.peek() {
            match self.assignment(w) {
                Some(a) => {
                    assigns.push(a);
                    words.next();
                }
                None => break,
            }
        }
        let argv: Vec<String> = words.flat_map(|w| self.expand(w)).collect();
        let mut io = [
            Output::discard(),
            self.base.stdout.clone(),
            self.base.stderr.clone(),
        ];
        let mut stdin = self.base.stdin.clone();
        if let Err(msg) = self.redirect(cmd, &mut io, &mut stdin) {
            self.base.stderr.print(&format!("sh: {msg}\n"));
            self.status = 1;
            return Ok(Flow::Next);
        }
        let [_, out, err] = io;
        if argv.is_empty() {
            for (k, v) in assigns {
                self.vars.insert(k, v);
            }
            self.status = 0;
            return Ok(Flow::Next);
        }
        let flow = match argv[0].as_str() {
            "exit" => {
                let code = match argv.get(1) {
                    None => self.status,
                    Some(n) => match n.parse::<i64>() {
                        Ok(n) => (n & 0xff) as i32,
                        Err(_) => {
                            err.print(&format!("sh: exit: Illegal number: {n}\n"));
                            2
                        }
                    },
                };
                return Ok(Flow::Exit(code));
            }
            "cd" => {
                self.status = self.cd(&argv, &err);
                Flow::Next
            }
            "pwd" => {
                out.print(&format!("{}\n", self.cwd));
                self.status = 0;
                Flow::Next
            }
            "export" => {
                for a in &argv[1..] {
                    match a.split_once('=') {
                        Some((k, v)) if is_name(k) => {
                            self.vars.insert(k.to_owned(), v.to_owned());
                        }
                        _ => {}
                    }
                }
                self.status = 0;
                Flow::Next
            }
            "unset" => {
                for a in &argv[1..] {
                    self.vars.remove(a);
                }
                self.status = 0;
                Flow::Next
            }
            "set" => {
                for a in &argv[1..] {
                    match a.as_str() {
                        "-e" => self.errexit = true,
                        "+e" => self.errexit = false,
                        // Tracing and unset-variable checks change no result here.
                        "-x" | "+x" | "-u" | "+u" | "-eu" | "-ex" | "-eux" | "-o" | "pipefail" => {
                            if a.contains('e') && a.starts_with('-') {
                                self.errexit = true;
                            }
                        }
                        other => {
                            err.print(&format!("sh: set: unsupported option {other}\n"));
                        }
                    }
                }
                self.status = 0;
                Flow::Next
            }
            _ => {
                let mut env = self.vars.clone();
                env.extend(assigns);
                let ctx = ProgramContext {
                    argv,
                    env,
                    cwd: self.cwd.clone(),
                    stdin,
                    fs: self.base.fs.clone(),
                    stdout: out,
                    stderr: err,
                    sys: self.base.sys.clone(),
                };
                self.status = programs::run(ctx).await?;
                Flow::Next
            }
        };
        Ok(flow)
    }

    fn cd(&mut self, argv: &[String], err: &Output) -> i32 {
        let target = match argv.get(1) {
            Some(t) => t.clone(),
            None => self.vars.get("HOME").cloned().unwrap_or_else(|| "/".into()),
        };
        let path = join(&self.cwd, &target);
        let fs = self.base.fs.lock();
        match fs.stat(&path, true) {
            Some(Node::Dir { .. }) => {
                drop(fs);
                self.cwd = path.clone();
                self.vars.insert("PWD".into(), path);
                0
            }
            Some(_) => {
                err.print(&format!(
                    "sh: cd: can't cd to {target}: {}\n",
                    FsError::NotADirectory.text()
                ));
                2
            }
            None => {
                err.print(&format!(
                    "sh: cd: can't cd to {target}: {}\n",
                    FsError::NotFound.text()
                ));
                2
            }
        }
    }
}

/// Run `script` with positional arguments `args` (`$0` first).
pub(crate) async fn run_script(
    ctx: ProgramContext,
    script: &str,
    args: Vec<String>,
) -> Result<i32> {
    run_script_opts(ctx, script, args, false).await
}

async fn run_script_opts(
    ctx: ProgramContext,
    script: &str,
    args: Vec<String>,
    errexit: bool,
) -> Result<i32> {
    let lists = match parse(script) {
        Ok(l) => l,
        Err(SyntaxError(msg)) => {
            ctx.eprint(&format!("sh: syntax error: {msg}\n"));
            return Ok(2);
        }
    };
    let mut vars = ctx.env.clone();
    vars.insert("PWD".into(), ctx.cwd.clone());
    let mut sh = Shell {
        vars,
        cwd: ctx.cwd.clone(),
        status: 0,
        args,
        errexit,
        base: ctx,
    };
    match sh.run_list(&lists).await? {
        Flow::Exit(code) => Ok(code),
        Flow::Next => Ok(sh.status),
    }
}

/// `sh [-e] [-c SCRIPT [NAME [ARG...]] | FILE [ARG...]]`; with neither, the script is
/// read from stdin.
pub(crate) async fn sh_main(ctx: ProgramContext) -> Result<i32> {
    let argv = ctx.argv.clone();
    let mut i = 1;
    let mut errexit = false;
    let mut command = false;
    while let Some(a) = argv.get(i) {
        if a == "--" {
            i += 1;
            break;
        }
        let Some(flags) = a.strip_prefix('-').filter(|f| !f.is_empty()) else {
            break;
        };
        for f in flags.chars() {
            match f {
                'c' => command = true,
                'e' => errexit = true,
                'x' | 'u' | 's' => {}
                other => {
                    ctx.eprint(&format!("sh: illegal option -{other}\n"));
                    return Ok(2);
                }
            }
        }
        i += 1;
    }
    if command {
        let Some(script) = argv.get(i).cloned() else {
            ctx.eprint("sh: -c requires an argument\n");
            return Ok(2);
        };
        let mut args: Vec<String> = argv[i + 1..].to_vec();
        if args.is_empty() {
            args.push(argv[0].clone());
        }
        return run_script_opts(ctx, &script, args, errexit).await;
    }
    if let Some(file) = argv.get(i).cloned() {
        let script = match ctx.fs.lock().read_file(&ctx.path(&file)) {
            Ok(d) => String::from_utf8_lossy(&d).into_owned(),
            Err(e) => {
                ctx.eprint(&format!("sh: can't open {file}: {}\n", e.text()));
                return Ok(2);
            }
        };
        let args = argv[i..].to_vec();
        return run_script_opts(ctx, &script, args, errexit).await;
    }
    let script = ctx.stdin_str();
    let mut child = ctx.child(argv.clone());
    child.stdin = Bytes::new();
    run_script_opts(child, &script, vec![argv[0].clone()], errexit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Part {
        Part::Lit(s.into())
    }

    #[test]
    fn tokenizes_quotes_operators_and_redirections() {
        let t = tokenize("echo 'a b'\"$X\" 2>&1 >>f && x || y; z\n").unwrap();
        assert_eq!(t.len(), 13, "{t:?}");
        assert_eq!(
            t[1],
            Token::Word(Word(vec![
                Part::QLit("a b".into()),
                Part::QLit(String::new()),
                Part::Var {
                    var: Var {
                        name: VarName::Named("X".into()),
                        default: None
                    },
                    quoted: true
                }
            ]))
        );
        assert_eq!(
            t[2],
            Token::Redir {
                fd: 2,
                kind: RedirKind::Dup
            }
        );
        assert_eq!(t[3], Token::Word(Word(vec![lit("1")])));
        assert_eq!(
            t[4],
            Token::Redir {
                fd: 1,
                kind: RedirKind::Append
            }
        );
        assert_eq!(t[6], Token::And);
        assert_eq!(t[8], Token::Or);
        assert_eq!(t[10], Token::Sep);
    }

    #[test]
    fn rejects_what_it_does_not_support() {
        for s in [
            "a | b",
            "a &",
            "(a)",
            "echo $(x)",
            "echo `x`",
            "cat <<EOF",
            "'open",
            "\"open",
            "${",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
        assert!(parse("if true; then x; fi").is_err());
        assert!(parse("&& x").is_err());
        assert!(parse("x &&").is_err());
        assert!(parse("echo >").is_err());
    }

    #[test]
    fn comments_and_continuations() {
        let l = parse("# c\necho a \\\n b # trailing\n").unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].first.words.len(), 3);
        // `#` inside a word is literal.
        let l = parse("echo a#b").unwrap();
        assert_eq!(l[0].first.words[1], Word(vec![lit("a#b")]));
    }
}
