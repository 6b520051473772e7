//! Audio endpoints: where a call's sound comes from and goes to.

mod spec;

pub use spec::{InputSpec, OutputSpec, SpecError};
