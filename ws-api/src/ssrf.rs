//! Where reseller webhooks may go when `resellers.webhook_private_addresses_allowed` is
//! false: never to this machine or a private network. Checked on the address actually
//! connected to (a resolver that refuses names resolving to a forbidden address, and a
//! check of IP literals before each try), not on the URL's spelling: `127.1`,
//! `2130706433`, `0x7f000001`, `[::ffff:127.0.0.1]` and `localhost.` all reach loopback.
//! Redirects are never followed (a 307 would re-POST the signed body, keys included,
//! wherever it points).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is an address a webhook must not reach: loopback, unspecified, RFC 1918,
/// CGNAT (100.64/10), link-local, ULA (fc00::/7), multicast, broadcast, reserved, and
/// IPv4 wrapped in IPv6 (mapped, compatible, NAT64) when the IPv4 inside is one of those.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || a >= 240
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return forbidden_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
}

/// The IPv4 address an IPv6 address carries: mapped (::ffff:a.b.c.d), compatible
/// (::a.b.c.d) or the NAT64 well-known prefix (64:ff9b::a.b.c.d).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let low = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    let compatible = s[..6].iter().all(|x| *x == 0) && !ip.is_loopback() && !ip.is_unspecified();
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0);
    (compatible || nat64).then_some(low)
}

/// The URL's host when it is an IP literal (as the URL parser normalised it).
pub fn literal_host(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Refuses a URL whose host is a forbidden IP literal (names are checked on resolution).
pub fn check_literal(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|_| "the webhook URL does not parse".to_owned())?;
    match literal_host(&parsed) {
        Some(ip) if forbidden(ip) => Err("the webhook URL points at a private address".into()),
        _ => Ok(()),
    }
}

/// Resolves names as the system does, and refuses any name with a forbidden address among
/// its answers (a name that resolves both ways is refused whole: the connection could go
/// either way).
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addresses.iter().any(|a| forbidden(a.ip())) {
                return Err("the webhook host resolves to a private address".into());
            }
            let addresses: Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Postmortem: the filter was lexical; each of these reached loopback or a private
    /// network.
    #[test]
    fn every_spelling_of_a_private_address_is_caught() {
        for url in [
            "http://127.1/hook",
            "http://2130706433/hook",
            "http://0x7f000001/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://[fd00::1]/hook",
            "http://[::1]:8080/hook",
            "http://10.1.2.3/hook",
            "http://100.64.0.1/hook",
            "http://169.254.169.254/latest",
            "http://[fe80::1]/hook",
            "http://0.0.0.0/hook",
            "http://224.0.0.1/hook",
            "http://[64:ff9b::7f00:1]/hook",
        ] {
            assert!(check_literal(url).is_err(), "{url}");
        }
        for url in [
            "http://93.184.215.14/hook",
            "https://[2606:4700::1111]/hook",
            "https://example.com/h",
        ] {
            assert!(check_literal(url).is_ok(), "{url}");
        }
    }
}
