//! Calls: the pure state machine, and the task that owns each call.

pub mod machine;
pub mod record;
pub mod registry;
pub mod task;

pub use machine::{
    CallMachine, Direction, EndReason, FailCause, Glare, Input, InvalidCommand, Output, State, Timeouts, resolve_glare,
};
pub use record::CallRecord;
