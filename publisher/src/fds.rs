//! The descriptor limit (RLIMIT_NOFILE) the connection limit is derived from
//! and checked against.
//!
//! Every connection is a descriptor. Most systems start a process with a soft
//! limit of 1,024 (kept low for programs that use `select(2)`, which cannot
//! see descriptors above 1,023) and a much higher hard limit; this process
//! never uses `select`, so it raises the soft limit to the hard one at start,
//! as Go's runtime does. Under the systemd unit both limits are already equal
//! (`LimitNOFILE=`), so nothing changes there; its `SystemCallFilter` denies
//! `setrlimit` but allows `prlimit64`, which is what glibc calls for both.

/// The soft RLIMIT_NOFILE after raising it to the hard limit (when it was
/// lower and the kernel allows), and the soft limit before.
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit; failing leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        } else {
            tracing::warn!(
                soft = before,
                hard = lim.rlim_max,
                error = %std::io::Error::last_os_error(),
                "cannot raise RLIMIT_NOFILE to its hard limit"
            );
        }
    }
    Ok((before, lim.rlim_cur))
}
