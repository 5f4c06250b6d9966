//! The errors of `imip-ctl` that an operator or a script acts on by kind
//! (the exit status and the `--json` error object say which); everything
//! else is the store's [`crate::ProcessorError`] or plain context.

/// What `imip-ctl` refuses to go on with.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The store has no row of this user at all (no message logged, no
    /// object, no request, no event, no dead letter): most likely a typo.
    #[error("no such user: {0} — imip-ctl users lists them")]
    NoSuchUser(String),
    /// No dead letter with this id (`imip-ctl dlq list --all` lists them).
    #[error("no dead letter {0} — imip-ctl dlq list --all lists them")]
    NoSuchDeadLetter(i64),
    /// Arguments that parse but make no sense together or name nothing
    /// (`--from` after `--to`, an unknown `--tz` zone): the sentence says
    /// what to give instead.
    #[error("{0}")]
    Usage(String),
}

impl CtlError {
    /// The exit status: 67 (EX_NOUSER, sysexits.h) for an unknown user, 64
    /// (EX_USAGE) for a usage error, 1 else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::NoSuchUser(_) => 67,
            CtlError::Usage(_) => 64,
            CtlError::NoSuchDeadLetter(_) => 1,
        }
    }

    /// A short machine name of the kind, the `--json` error's `"kind"`.
    pub fn kind(&self) -> &'static str {
        match self {
            CtlError::NoSuchUser(_) => "no_such_user",
            CtlError::NoSuchDeadLetter(_) => "no_such_dead_letter",
            CtlError::Usage(_) => "usage",
        }
    }
}
