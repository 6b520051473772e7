//! Calls, as tasks: the registry drives the switchboard and owns every call's
//! handle; each call's task drives its machine. The protocol and the policy
//! themselves are pure and live in `voicelink_core` (`call_machine`, `switchboard`).

pub mod registry;
pub mod task;
