//! The method semantics of imipflow, as pure functions with no I/O.
//!
//! [`method`] decides what one message does to one UID's stored state (SPEC
//! §3): new objects, free/busy periods, queue and change events. [`model`]
//! holds the stored state and the outcome; [`limits`] the per-message and
//! per-user bounds; [`events`] cuts changes into events that fit the broker;
//! [`apply`] is the whole write side of a batch (dedupe, limits, queue,
//! free/busy difference, event numbering) from loaded rows to rows to write.
//! The processor loads state, calls these, and writes what they return; the
//! fuzz targets and the malformed-input suite link only this crate.

pub mod apply;
pub mod error;
pub mod events;
pub mod limits;
pub mod method;
pub mod model;

pub use error::SemanticsError;
pub use method::{apply, materialise_bounded, periods_in_window};
