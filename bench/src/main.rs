//! `voicelink-bench`: see the crate documentation.

fn main() {}
