//! farmwatch: a network sensor that finds laptop farms.
//!
//! The data path runs one way: source → decode → flows → dissect → detect → sinks.

pub mod dissect;
pub mod timestamp;
