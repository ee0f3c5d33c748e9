//! farmwatch: a network sensor that finds laptop farms.
//!
//! The data path runs one way: source → decode → flows → dissect → detect → sinks, in two
//! stages (DESIGN §7): the flow stage ([`flow_stage`]) on N workers, then one account stage
//! ([`account_stage`]), run together by the [`engine`].

pub mod account_stage;
pub mod accounts;
pub mod app;
pub mod bounded;
pub mod config;
pub mod control;
pub mod convert;
pub mod correlate;
pub mod decode;
pub mod detect;
pub mod dissect;
pub mod engine;
pub mod event;
pub mod flow_stage;
pub mod flows;
pub mod geo;
pub mod health;
pub mod identity;
pub mod jetstream;
pub mod live;
pub mod mapped;
pub mod metrics;
pub mod observation;
pub mod prefetch;
pub mod publish;
pub mod replay;
pub mod report;
pub mod sink;
pub mod source;
pub mod state;
pub mod timestamp;
