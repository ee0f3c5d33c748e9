//! farmwatch: a network sensor that finds laptop farms.
//!
//! The data path runs one way: source → decode → flows → dissect → detect → sinks.

pub mod accounts;
pub mod app;
pub mod bounded;
pub mod config;
pub mod control;
pub mod decode;
pub mod detect;
pub mod dissect;
pub mod event;
pub mod flows;
pub mod geo;
pub mod identity;
pub mod jetstream;
pub mod live;
pub mod metrics;
pub mod pipeline;
pub mod replay;
pub mod report;
pub mod sink;
pub mod source;
pub mod timestamp;
