//! Panshi's instruments: the deterministic simulator (`sim`, binary `panshi-sim`), the
//! in-process benchmark (`panshi-bench`) and the load harness (`load`, binary
//! `panshi-load`), and a TCP fault proxy for the links between cluster nodes (`netproxy`).
//! They drive the real engine, storage and actors, never copies.

pub mod gateway;
pub mod load;
pub mod netproxy;
pub mod sim;
