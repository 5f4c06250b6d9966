//! The one error type of the semantics crate: what a message can be refused
//! for outside its disposition (it is dead-lettered with this text).

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SemanticsError {
    /// A change that cannot fit in one NATS message, even cut into parts.
    #[error("{0}")]
    TooLarge(String),
}
