//! `jetbridge-helper`: the small static program that runs inside every step pod's main
//! container. It is PID 1 there (`pause`), wraps every command jetbridge execs into the
//! container (`exec`), kills a command's processes by their environment marker
//! (`kill`) and reads files without a shell (`read-first`). The step image may hold
//! no shell or coreutils at all, so the helper never runs any program of the image but
//! the command it is asked to run. See README.md for the grammar and exit codes.

mod cli;
mod exec;
mod files;
mod kill;
mod pause;
mod record;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use cli::Cmd;

/// Exit code for the helper's own errors (bad usage, unenterable directory), as `env`.
pub const EXIT_USAGE: u8 = 125;

/// Prints `jetbridge-helper: MSG` to stderr.
pub fn complain(msg: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "jetbridge-helper: {msg}");
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let cmd = match cli::parse(&args) {
        Ok(cmd) => cmd,
        Err(cli::UsageError(msg)) => {
            complain(format_args!("{msg}"));
            let _ = std::io::stderr().write_all(cli::USAGE.as_bytes());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cmd {
        Cmd::Version => {
            println!("jetbridge-helper {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Cmd::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Cmd::Install { dir } => files::install(dir.as_ref()),
        Cmd::ReadFirst { files } => files::read_first(&files),
        Cmd::Pause => pause::pause(),
        Cmd::Kill { id } => kill::kill(&id),
        Cmd::Exec(spec) => exec::exec(spec),
        Cmd::Attach { dir, out, err } => record::attach(std::path::Path::new(&dir), out, err),
    }
}
