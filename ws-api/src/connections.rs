//! A cap on the connections one client address may hold open, so that a slow-loris from one
//! address (500 connections trickling bodies at the payment callback) cannot take the
//! server's connections from everyone else.
//!
//! A connection is counted from accept (`on_connect`) until it closes (its `Slot` is dropped
//! with the connection's data). One over the cap is answered 429 `too_many_connections` on
//! its first request and closed. Exempt addresses (a reverse proxy or load balancer in front,
//! which carries every client) are never counted.
//!
//! Invariant: the map holds only addresses with an open counted connection, so its size is
//! bounded by the server's connection limit.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use actix_web::dev::Extensions;
use actix_web::http::StatusCode;
use parking_lot::Mutex;

use crate::error::ApiError;

/// `Retry-After` for a connection refused over the cap.
pub const CONNECTION_CAP_RETRY_AFTER_SECS: u32 = 5;

#[derive(Debug)]
pub struct ConnectionCap {
    open: Mutex<HashMap<IpAddr, u32>>,
    /// 0: no cap.
    per_address_max: u32,
    exempt: HashSet<IpAddr>,
}

/// A counted connection; the count drops when the connection (and so this) is dropped.
#[derive(Debug)]
pub struct Slot {
    cap: Arc<ConnectionCap>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// Marks a connection accepted over its address's cap.
#[derive(Clone, Copy, Debug)]
pub struct OverCap;

impl ConnectionCap {
    pub fn new(per_address_max: u32, exempt: impl IntoIterator<Item = IpAddr>) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::default(),
            per_address_max,
            exempt: exempt.into_iter().map(|ip| ip.to_canonical()).collect(),
        })
    }

    /// Counts a new connection from `address`; `Err` when it is over the cap.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Option<Slot>, OverCap> {
        let address = address.to_canonical();
        if self.per_address_max == 0 || self.exempt.contains(&address) {
            return Ok(None);
        }
        let mut open = self.open.lock();
        let count = open.entry(address).or_insert(0);
        if *count >= self.per_address_max {
            return Err(OverCap);
        }
        *count += 1;
        Ok(Some(Slot {
            cap: self.clone(),
            address,
        }))
    }

    /// For `HttpServer::on_connect`: counts the connection, or marks it over the cap.
    pub fn on_connect(self: &Arc<Self>, connection: &dyn Any, data: &mut Extensions) {
        let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        match self.admit(peer.ip()) {
            Ok(Some(slot)) => {
                data.insert(slot);
            }
            Ok(None) => {}
            Err(over) => {
                metrics::counter!("panshi_http_connections_refused_total").increment(1);
                data.insert(over);
            }
        }
    }
}

/// The answer to every request on a connection over the cap (it is then closed).
pub fn refusal() -> ApiError {
    ApiError {
        retry_after_secs: Some(CONNECTION_CAP_RETRY_AFTER_SECS),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "too many open connections from this address; close some first",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_open_connections_per_address_and_forgets_closed_ones() {
        let exempt: IpAddr = "127.0.0.1".parse().unwrap();
        let cap = ConnectionCap::new(2, [exempt]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = cap.admit(a).unwrap();
        let second = cap.admit(a).unwrap();
        assert!(cap.admit(a).is_err());
        assert!(cap.admit("10.0.0.2".parse().unwrap()).is_ok());
        // The same address as IPv4-mapped IPv6 is the same client.
        assert!(cap.admit("::ffff:10.0.0.1".parse().unwrap()).is_err());
        drop(first);
        let third = cap.admit(a).unwrap();
        assert!(matches!(cap.admit(exempt), Ok(None)));
        drop((second, third));
        assert!(cap.open.lock().is_empty());
    }
}
