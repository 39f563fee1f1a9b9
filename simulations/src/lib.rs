//! Panshi's instruments: the deterministic simulator (`sim`, binary `panshi-sim`), the
//! in-process benchmark (`panshi-bench`) and the load harness (`load`, binary
//! `panshi-load`). They drive the real engine, storage and actors, never copies.

pub mod gateway;
pub mod load;
pub mod sim;
