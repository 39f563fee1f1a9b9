//! Panshi's instruments: the deterministic simulator (`sim`, binary `panshi-sim`), the
//! in-process benchmark (`panshi-bench`) and the load harness (`load`, binary
//! `panshi-load`), a TCP fault proxy for the links between cluster nodes (`netproxy`), and the no-work
//! server of the purchase endpoints that the hot path is measured against (`nowork`).
//! They drive the real engine, storage and actors, never copies.

pub mod gateway;
pub mod load;
pub mod netproxy;
pub mod nowork;
pub mod sim;
