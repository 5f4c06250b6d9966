//! `imip-ingest` binary: arguments, stdin, and the exit status the MTA acts on.
//! The work is in the library; this file only wires it to the process.
//!
//! On Linux the binary starts at libc's `main` below rather than through
//! Rust's runtime start-up, which read and parsed /proc/self/maps and set up a
//! signal stack for a stack overflow message: 19 system calls and 43 k
//! instructions, ~65 µs of a run that does nothing else (bench/README.md).
//! `rt` keeps what of that start-up ingest relies on.
#![cfg_attr(target_os = "linux", no_main)]

use clap::Parser;
use imipflow_ingest::error::exit;
use imipflow_ingest::{Args, Envelope, IngestError, plan, publish};
use imipflow_schema::Namespace;
use std::io::{Read, Write};
use std::time::Duration;

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(ingest())
}

#[cfg(target_os = "linux")]
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    rt::init();
    // As Rust's runtime: a panic (after the hook has printed it) exits 101,
    // and what stdout still buffers is written out.
    let code = std::panic::catch_unwind(ingest).unwrap_or(101);
    let _ = std::io::stdout().flush();
    code.into()
}

/// What of Rust's runtime start-up ingest needs, on Linux (std's
/// `sys::pal::unix::init`): standard descriptors that are closed opened on
/// /dev/null (so that a socket never becomes stdout or stderr), and SIGPIPE
/// ignored (a closed stdout or stderr is an error to handle, not death).
/// Left out: the main thread's name in panic messages (`<unnamed>`), and the
/// handler that words a stack overflow (the process dies of SIGSEGV instead
/// of SIGABRT; neither can happen short of a bug).
#[cfg(target_os = "linux")]
mod rt {
    use std::ffi::{c_char, c_int, c_short, c_ulong};

    #[repr(C)]
    struct PollFd {
        fd: c_int,
        events: c_short,
        revents: c_short,
    }

    unsafe extern "C" {
        fn poll(fds: *mut PollFd, nfds: c_ulong, timeout: c_int) -> c_int;
        fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
        fn open(path: *const c_char, flags: c_int, ...) -> c_int;
        fn signal(signum: c_int, handler: usize) -> usize;
    }

    const POLLNVAL: c_short = 0x20;
    const F_GETFD: c_int = 1;
    const O_RDWR: c_int = 2;
    const EBADF: i32 = 9;
    const EINTR: i32 = 4;
    const SIGPIPE: c_int = 13;
    const SIG_IGN: usize = 1;

    pub fn init() {
        let mut fds = [0, 1, 2].map(|fd| PollFd {
            fd,
            events: 0,
            revents: 0,
        });
        // SAFETY: `fds` is an array of 3 pollfd structures; the other calls
        // take plain integers and a NUL-terminated path.
        unsafe {
            loop {
                if poll(fds.as_mut_ptr(), 3, 0) != -1 {
                    for f in &fds {
                        if f.revents & POLLNVAL != 0 {
                            open_dev_null();
                        }
                    }
                    break;
                }
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(EINTR) => continue,
                    // poll may be refused (RLIMIT_NOFILE, no memory): ask per descriptor.
                    _ => {
                        for fd in 0..3 {
                            if fcntl(fd, F_GETFD) == -1
                                && std::io::Error::last_os_error().raw_os_error() == Some(EBADF)
                            {
                                open_dev_null();
                            }
                        }
                        break;
                    }
                }
            }
            signal(SIGPIPE, SIG_IGN);
        }
    }

    /// Opens /dev/null on the lowest free descriptor, the closed one.
    unsafe fn open_dev_null() {
        // SAFETY: a NUL-terminated path and flags.
        if unsafe { open(c"/dev/null".as_ptr(), O_RDWR) } == -1 {
            std::process::abort();
        }
    }
}

/// The whole run; the process's exit status.
fn ingest() -> u8 {
    // The fast path: most mail is not calendar mail, and for it ingest only
    // has to read stdin and say 0. Deciding that before the argument parser
    // runs saves its code's page faults and instructions (the fast path's
    // target is 1.2 × a bare process spawn; bench/README.md). The parser
    // still runs first for --help/--version and without any argument, whose
    // stdin may be a terminal.
    // A misconfigured command line therefore shows on the first calendar
    // mail (exit 64), not on every mail.
    let prefix = if parse_first() {
        Vec::new()
    } else {
        match scan_stdin(FAST_PATH_CAP) {
            Ok(None) => return exit::OK,
            Ok(Some(prefix)) => prefix,
            Err(e) => {
                eprintln!("imip-ingest: {}", IngestError::Stdin(e));
                return exit::IOERR;
            }
        }
    };
    let plain = Args::parse_plain(std::env::args_os(), |k| std::env::var_os(k));
    let args = match plain.map_or_else(Args::try_parse, Ok) {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    match run(args, prefix) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("imip-ingest: {e}");
            e.exit_code()
        }
    }
}

/// How much of a mail the fast path keeps in memory before it hands over to
/// the normal path undecided.
const FAST_PATH_CAP: usize = 1 << 20;

fn parse_first() -> bool {
    std::env::args_os().len() <= 1
        || std::env::args_os().skip(1).any(|a| {
            matches!(
                a.to_str(),
                Some("-h" | "--help" | "-V" | "--version" | "help")
            )
        })
}

/// Reads stdin until a calendar marker shows up (`Some`: the bytes read so
/// far, for the normal path to continue from), or up to `cap` bytes (`Some`
/// too), or to the end without one (`None`: nothing to do).
fn scan_stdin(cap: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut stdin = std::io::stdin().lock();
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let start = buf.len();
        let n = (&mut stdin).take(64 * 1024).read_to_end(&mut buf)?;
        // Overlap the previous read so a marker split across reads is seen.
        if imipflow_ingest::mime::looks_calendar(&buf[start.saturating_sub(32)..]) {
            return Ok(Some(buf));
        }
        if n == 0 {
            return Ok(None);
        }
        if buf.len() >= cap {
            return Ok(Some(buf));
        }
    }
}

/// Reads stdin (after the `prefix` already read) up to the limit, then
/// drains the rest (so the MTA's pipe write never fails) while watching
/// whether it still carries calendar data.
fn read_stdin(limit: usize, mut buf: Vec<u8>) -> Result<(Vec<u8>, u64, bool), IngestError> {
    let mut stdin = std::io::stdin().lock();
    if buf.len() <= limit {
        (&mut stdin)
            .take((limit + 1 - buf.len()) as u64)
            .read_to_end(&mut buf)?;
    }
    let mut total = buf.len() as u64;
    let mut calendar_beyond = false;
    if buf.len() > limit {
        // What the prefix already holds beyond the limit counts too.
        calendar_beyond =
            imipflow_ingest::mime::looks_calendar(&buf[(limit + 1).saturating_sub(32)..]);
        let mut chunk = vec![0u8; 1 << 20];
        // Keep a small tail so a marker split across chunks is still seen.
        let mut tail: Vec<u8> = buf[buf.len().saturating_sub(32)..].to_vec();
        loop {
            let n = stdin.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if !calendar_beyond {
                tail.extend_from_slice(&chunk[..n]);
                calendar_beyond = imipflow_ingest::mime::looks_calendar(&tail);
                tail.drain(..tail.len().saturating_sub(32));
            }
        }
        buf.truncate(limit);
    }
    Ok((buf, total, calendar_beyond))
}

fn run(args: Args, prefix: Vec<u8>) -> Result<(), IngestError> {
    let namespace =
        Namespace::new(&args.namespace).map_err(|e| IngestError::Usage(e.to_string()))?;
    if args.direction == imipflow_ingest::config::DirectionArg::Incoming
        && args.recipients.is_empty()
    {
        return Err(IngestError::Usage(
            "--direction incoming needs at least one --recipient".into(),
        ));
    }
    let (raw, total_size, calendar_beyond_limit) =
        read_stdin(args.limits.max_message_bytes, prefix)?;
    let envelope = Envelope {
        direction: args.direction.into(),
        sender: args.sender.clone(),
        recipients: args.recipients.clone(),
    };
    let mail = plan::RawMail {
        bytes: &raw,
        total_size,
        calendar_beyond_limit,
    };
    let plan = plan::plan(&mail, &envelope, &args.limits, chrono::Utc::now());
    if args.print {
        let mut out = std::io::stdout().lock();
        for o in &plan.outputs {
            out.write_all(&o.to_json())?;
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    if plan.outputs.is_empty() {
        return Ok(());
    }
    let target = publish::Target {
        url: &args.nats_url,
        auth: &args.nats_auth,
        namespace: &namespace,
        partitions: args.partitions,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    publish::publish(&plan, &target)
}
