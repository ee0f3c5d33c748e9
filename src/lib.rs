//! farmwatch: a network sensor that finds laptop farms.
//!
//! The data path runs one way: source → decode → flows → dissect → detect → sinks.

pub mod accounts;
pub mod app;
pub mod dissect;
pub mod event;
pub mod geo;
pub mod identity;
pub mod timestamp;
