//! Calls: the pure state machine, and the task that owns each call.

pub mod machine;

pub use machine::{CallMachine, Direction, EndReason, FailCause, Glare, Input, Output, State, Timeouts, resolve_glare};
