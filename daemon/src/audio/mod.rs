//! Audio endpoints: where a call's sound comes from and goes to.

pub mod endpoints;
mod spec;

pub use spec::{InputSpec, OutputSpec, SpecError};
