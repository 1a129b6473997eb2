//! The address guard: receivers must be on the public internet unless the operator allows more.
//!
//! Every address a receiver's name resolves to is checked at connect time (the HTTP client's
//! resolver goes through [`GuardedResolver`]), so a name that resolves to a private address —
//! or rebinds to one later — is refused. IP-literal URLs skip name resolution and are checked by
//! [`Guard::check`] before sending.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which non-public addresses are allowed anyway.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// `--dev`: loopback is allowed.
    pub allow_loopback: bool,
    /// `allow_networks`: these CIDRs are allowed whatever their class.
    pub allow_networks: Vec<IpNet>,
}

/// Why an address is not public, or `None` when it is.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let table: &[([u8; 4], u32, &'static str)] = &[
        ([0, 0, 0, 0], 8, "unspecified (0.0.0.0/8)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([10, 0, 0, 0], 8, "private"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 168, 0, 0], 16, "private"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT (100.64.0.0/10)"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([192, 0, 0, 0], 24, "reserved (IETF protocol assignments)"),
        ([192, 0, 2, 0], 24, "reserved (documentation)"),
        ([198, 51, 100, 0], 24, "reserved (documentation)"),
        ([203, 0, 113, 0], 24, "reserved (documentation)"),
        ([198, 18, 0, 0], 15, "reserved (benchmarking)"),
        ([192, 88, 99, 0], 24, "reserved (6to4 relay)"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4 and broadcast)"),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => Some("unspecified"),
        [0, 0, 0, 0, 0, 0, 0, 1] => Some("loopback"),
        // IPv4-compatible addresses are deprecated; NAT64 is judged by the embedded address.
        [0, 0, 0, 0, 0, 0, _, _] => Some("reserved (IPv4-compatible)"),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
            classify_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32))
        }
        [0x100, 0, 0, 0, ..] => Some("reserved (discard-only)"),
        [0x2001, 0xdb8, ..] => Some("reserved (documentation)"),
        [0x2001, b, ..] if b < 0x200 => Some("reserved (IETF protocol assignments)"),
        [0x2002, ..] => Some("reserved (6to4)"),
        [a, ..] if a & 0xfe00 == 0xfc00 => Some("private (unique local)"),
        [a, ..] if a & 0xffc0 == 0xfe80 => Some("link-local"),
        [a, ..] if a & 0xffc0 == 0xfec0 => Some("reserved (site-local)"),
        [a, ..] if a & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

impl Guard {
    /// Refuses an address that is not public and not allowed; the message says why.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let Some(why) = classify(ip) else {
            return Ok(());
        };
        let loopback = why == "loopback";
        if (loopback && self.allow_loopback) || self.allow_networks.iter().any(|n| n.contains(&ip))
        {
            return Ok(());
        }
        let hint = if loopback {
            " (use --dev for local receivers)"
        } else {
            ""
        };
        Err(format!(
            "address {ip} is {why}; refused by the address guard{hint}, see allow_networks"
        ))
    }
}

impl Guard {
    /// Checks `host` (a URL's host, IPv6 in brackets or not) when it is an IP literal, which no
    /// resolver sees; a name passes here (the resolver checks it when connecting).
    pub fn check_literal(&self, host: &str) -> Result<(), String> {
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => self.check(ip),
            Err(_) => Ok(()),
        }
    }

    /// `host`'s addresses (an IP literal, or every address the name resolves to now), each of
    /// which must pass: for connections the resolver does not make itself (a broker's, or a
    /// receiver's through the egress proxy, which resolves the name again).
    pub async fn resolve_all(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![(ip, port).into()],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| format!("resolving {host}: {e}"))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(format!("{host} did not resolve"));
        }
        addrs.iter().try_for_each(|a| self.check(a.ip()))?;
        Ok(addrs)
    }

    /// [`Guard::resolve_all`], for a host about to be reached through the egress proxy.
    pub async fn check_host(&self, host: &str, port: u16) -> Result<(), String> {
        self.resolve_all(host, port).await.map(|_| ())
    }
}

/// Resolves names with the system resolver, then keeps only addresses the guard allows.
#[derive(Clone)]
pub struct GuardedResolver(pub Arc<Guard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match guard.check(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused = Some(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| format!("{host} did not resolve"));
                return Err(why.into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ip: &str, want: Option<&str>) {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(classify(ip), want, "{ip}");
    }

    #[test]
    fn classification() {
        // Public.
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
        ] {
            check(ip, None);
        }
        check("127.0.0.1", Some("loopback"));
        check("127.255.255.254", Some("loopback"));
        check("::1", Some("loopback"));
        check("::ffff:127.0.0.1", Some("loopback"));
        for ip in [
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "::ffff:10.1.2.3",
        ] {
            check(ip, Some("private"));
        }
        check("fc00::1", Some("private (unique local)"));
        check("fd12:3456::1", Some("private (unique local)"));
        check("169.254.169.254", Some("link-local"));
        check("fe80::1", Some("link-local"));
        check("100.64.0.1", Some("carrier-grade NAT (100.64.0.0/10)"));
        check("100.127.255.255", Some("carrier-grade NAT (100.64.0.0/10)"));
        check("224.0.0.1", Some("multicast"));
        check("239.255.255.250", Some("multicast"));
        check("ff02::1", Some("multicast"));
        check("0.0.0.0", Some("unspecified (0.0.0.0/8)"));
        check("::", Some("unspecified"));
        check(
            "255.255.255.255",
            Some("reserved (240.0.0.0/4 and broadcast)"),
        );
        check("240.0.0.1", Some("reserved (240.0.0.0/4 and broadcast)"));
        check("192.0.2.1", Some("reserved (documentation)"));
        check("2001:db8::1", Some("reserved (documentation)"));
        check("198.18.0.1", Some("reserved (benchmarking)"));
        check("64:ff9b::a00:1", Some("private"));
        check("64:ff9b::808:808", None);
        check("::a00:1", Some("reserved (IPv4-compatible)"));
        check("fec0::1", Some("reserved (site-local)"));
        check("2002:a00:1::", Some("reserved (6to4)"));
    }

    #[test]
    fn guard_allows_what_the_operator_allows() {
        let strict = Guard::default();
        let err = strict.check("127.0.0.1".parse().unwrap()).unwrap_err();
        assert!(err.contains("loopback") && err.contains("--dev"), "{err}");
        assert!(strict.check("8.8.8.8".parse().unwrap()).is_ok());
        let dev = Guard {
            allow_loopback: true,
            ..Guard::default()
        };
        assert!(dev.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(dev.check("::1".parse().unwrap()).is_ok());
        assert!(dev.check("10.0.0.1".parse().unwrap()).is_err());
        let nets = Guard {
            allow_networks: vec!["10.1.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
            ..Guard::default()
        };
        assert!(nets.check("10.1.2.3".parse().unwrap()).is_ok());
        assert!(nets.check("10.2.0.1".parse().unwrap()).is_err());
        assert!(nets.check("fd00::5".parse().unwrap()).is_ok());
        assert!(nets.check("127.0.0.1".parse().unwrap()).is_err());
    }
}
