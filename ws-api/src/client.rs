//! Who the client is, as far as the edge can trust it: the TCP peer, or, only when the peer
//! is one of the configured `trusted_proxies`, the address that proxy reports in
//! `X-Forwarded-For` (else `Forwarded`). Rate limits, risk rules and idempotency scopes key
//! on `ClientKey`: the IPv4 address, or the IPv6 /64 (one subscriber's whole network), so
//! that rotating through a /64 buys no fresh buckets.
//!
//! Invariant: a header is read only from a trusted peer; anything else could be forged by
//! any client. Without trusted proxies the headers are ignored altogether.

use std::net::{IpAddr, Ipv6Addr};

use actix_web::HttpRequest;
use ipnet::IpNet;
use serde::Deserialize;

/// Most trusted proxy entries (a bound on every request's scan).
pub const TRUSTED_PROXIES_MAX: usize = 64;
/// Most `X-Forwarded-For` hops read (right to left) before giving up on a header.
pub const FORWARDED_HOPS_MAX: usize = 16;

/// The `trusted_proxies` setting: addresses or CIDR ranges, as a list or one
/// comma-separated string (`PANSHI_TRUSTED_PROXIES=10.0.0.0/8,::1`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<String>),
            Text(String),
        }
        let entries = match Form::deserialize(deserializer)? {
            Form::List(list) => list,
            Form::Text(text) => text.split(',').map(str::to_owned).collect(),
        };
        TrustedProxies::parse(entries.iter().map(String::as_str)).map_err(serde::de::Error::custom)
    }
}

/// Serialized as the list of its entries (the settings' tree of known keys).
impl serde::Serialize for TrustedProxies {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

impl TrustedProxies {
    /// Parses addresses (`10.0.0.1`, `::1`) and ranges (`10.0.0.0/8`); blanks are skipped.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("trusted_proxies: {entry:?} is no address or CIDR range"))?;
            nets.push(net);
        }
        if nets.len() > TRUSTED_PROXIES_MAX {
            return Err(format!(
                "trusted_proxies: at most {TRUSTED_PROXIES_MAX} entries"
            ));
        }
        Ok(Self(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client's address: the peer, unless the peer is trusted and reports one.
    pub fn client_ip(&self, request: &HttpRequest) -> Option<IpAddr> {
        let peer = canonical(request.peer_addr()?.ip());
        if !self.trusts(peer) {
            return Some(peer);
        }
        self.forwarded_for(request).or(Some(peer))
    }

    /// The rightmost address in the forwarding headers that is not itself a trusted proxy
    /// (each proxy appends the address it saw, so everything left of it is the client's
    /// own claim).
    fn forwarded_for(&self, request: &HttpRequest) -> Option<IpAddr> {
        let hops: Vec<String> = if let Some(list) = header_text(request, "x-forwarded-for") {
            list.split(',').map(|h| h.trim().to_owned()).collect()
        } else {
            let forwarded = header_text(request, "forwarded")?;
            forwarded
                .split(',')
                .flat_map(|element| element.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .filter(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                .map(|(_, value)| forwarded_node(value))
                .collect()
        };
        for hop in hops.iter().rev().take(FORWARDED_HOPS_MAX) {
            let address = canonical(hop.parse::<IpAddr>().ok()?);
            if !self.trusts(address) {
                return Some(address);
            }
        }
        None
    }
}

/// Every value of a header, joined by commas (proxies may send several lines).
fn header_text(request: &HttpRequest, name: &str) -> Option<String> {
    let values: Vec<&str> = request
        .headers()
        .get_all(name)
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// A `Forwarded: for=` node without quotes, brackets or port (RFC 7239).
fn forwarded_node(value: &str) -> String {
    let value = value.trim().trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_owned();
    }
    match value.rsplit_once(':') {
        // An IPv4 address with a port; a bare IPv6 address has more than one colon.
        Some((host, _)) if !host.contains(':') => host.to_owned(),
        _ => value.to_owned(),
    }
}

/// An IPv4-mapped IPv6 address is its IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The unit a limit or a scope applies to: an IPv4 address, or an IPv6 /64.
pub fn client_key(address: IpAddr) -> IpAddr {
    match canonical(address) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// The client's key for limits, risk rules and idempotency scopes.
pub fn client_of(request: &HttpRequest, proxies: &TrustedProxies) -> Option<IpAddr> {
    // A request another node of the cluster passed on names its client in a signed header
    // (verified before the request got here): that client, not the node, is the buyer.
    use actix_web::HttpMessage;
    if let Some(crate::cluster::forward::ForwardedFor(ip)) = request
        .extensions()
        .get::<crate::cluster::forward::ForwardedFor>(
    ) {
        return Some(client_key(*ip));
    }
    proxies.client_ip(request).map(client_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn request(peer: &str, headers: &[(&str, &str)]) -> HttpRequest {
        let mut builder = TestRequest::default().peer_addr(peer.parse().unwrap());
        for (name, value) in headers {
            builder = builder.insert_header((*name, *value));
        }
        builder.to_http_request()
    }

    #[test]
    fn headers_count_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        let proxy = TrustedProxies::parse(["10.0.0.0/8", "::1"]).unwrap();
        let forged = request("203.0.113.9:5000", &[("X-Forwarded-For", "198.51.100.1")]);
        assert_eq!(
            none.client_ip(&forged),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(
            proxy.client_ip(&forged),
            Some("203.0.113.9".parse().unwrap())
        );
        // Behind the proxy: the rightmost untrusted hop, not the client's own claim.
        let via = request(
            "10.1.2.3:80",
            &[("X-Forwarded-For", "6.6.6.6, 198.51.100.1, 10.9.9.9")],
        );
        assert_eq!(proxy.client_ip(&via), Some("198.51.100.1".parse().unwrap()));
        assert_eq!(none.client_ip(&via), Some("10.1.2.3".parse().unwrap()));
        let rfc = request(
            "10.1.2.3:80",
            &[(
                "Forwarded",
                "for=\"[2001:db8::7]:443\";proto=https, for=10.2.2.2",
            )],
        );
        assert_eq!(proxy.client_ip(&rfc), Some("2001:db8::7".parse().unwrap()));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a = client_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = client_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = client_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            client_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert!(TrustedProxies::parse(["nonsense"]).is_err());
    }
}
