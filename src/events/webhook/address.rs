//! Where webhooks may go. An endpoint URL must be `https` (plain `http` only
//! for a loopback address, and only when the operator turned that on for
//! development), carry no credentials, and resolve only to public
//! addresses, unless the address is inside an operator's allowed network.
//! The check runs when the endpoint is created and again on every attempt,
//! through [`CheckedResolver`], so a name that later resolves to a private
//! address (DNS rebinding) is refused then too.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use url::Url;

/// Longest endpoint URL accepted.
const MAX_URL_LEN: usize = 2048;

/// Why an endpoint URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointUrlError {
    /// Not a URL tokenvault can POST to.
    #[error("url is not a valid absolute URL: {0}")]
    Malformed(String),
    /// `http` (or another scheme) where `https` is required.
    #[error("url must use https (plain http only for a loopback address with events.webhooks.allow_http_loopback)")]
    NotHttps,
    /// Credentials in the URL.
    #[error("url must not carry a user name or password")]
    Credentials,
    /// The host does not resolve.
    #[error("host `{0}` does not resolve")]
    Unresolvable(String),
    /// The host resolves to an address the policy refuses.
    #[error(
        "host `{host}` resolves to {address}, a private, loopback, link-local or reserved address; \
         allow its network in events.webhooks.allowed_networks if this is intended"
    )]
    Private {
        /// The host.
        host: String,
        /// The refused address.
        address: IpAddr,
    },
}

/// The operator's policy for endpoint addresses.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
    allow_http_loopback: bool,
}

impl AddressPolicy {
    /// The policy from `events.webhooks` (networks as CIDR text).
    pub fn new(allowed_networks: &[String], allow_http_loopback: bool) -> Result<Self, String> {
        let allowed = allowed_networks
            .iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .map_err(|_| format!("events.webhooks.allowed_networks: `{n}` is not a network in CIDR form"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            allowed,
            allow_http_loopback,
        })
    }

    /// Whether a delivery may connect to `address`.
    pub fn allows(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        is_public(address) || self.allowed.iter().any(|n| n.contains(&address))
    }

    /// Parses and checks an endpoint URL, resolving its host.
    pub async fn check(&self, raw: &str) -> Result<Url, EndpointUrlError> {
        let url = self.check_form(raw)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        for address in resolve(&url).await? {
            if !self.allows(address) {
                return Err(EndpointUrlError::Private { host, address });
            }
        }
        Ok(url)
    }

    /// The checks of each attempt before it connects: form, scheme and
    /// credentials again (the policy may have changed since creation), and an
    /// IP-literal host against the networks (names are checked by the
    /// [`CheckedResolver`] when the client resolves them).
    pub fn check_before_sending(&self, raw: &str) -> Result<(), EndpointUrlError> {
        let url = self.check_form(raw)?;
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        match literal {
            Some(address) if !self.allows(address) => Err(EndpointUrlError::Private {
                host: url.host_str().unwrap_or_default().to_owned(),
                address,
            }),
            _ => Ok(()),
        }
    }

    /// The checks that need no lookup: form, scheme, credentials.
    fn check_form(&self, raw: &str) -> Result<Url, EndpointUrlError> {
        if raw.len() > MAX_URL_LEN || raw.chars().any(char::is_control) {
            return Err(EndpointUrlError::Malformed(format!(
                "at most {MAX_URL_LEN} characters without control characters"
            )));
        }
        let url = Url::parse(raw).map_err(|e| EndpointUrlError::Malformed(e.to_string()))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(EndpointUrlError::Malformed("no host".to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EndpointUrlError::Credentials);
        }
        match url.scheme() {
            "https" => Ok(url),
            "http" if self.allow_http_loopback && is_loopback_host(&url) => Ok(url),
            _ => Err(EndpointUrlError::NotHttps),
        }
    }

    /// A DNS resolver for the delivery client that drops refused addresses.
    pub fn resolver(self: &Arc<Self>) -> Arc<CheckedResolver> {
        Arc::new(CheckedResolver {
            policy: Arc::clone(self),
        })
    }
}

/// Whether the URL's host is `localhost` or a loopback literal.
fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Every address the URL's host stands for.
async fn resolve(url: &Url) -> Result<Vec<IpAddr>, EndpointUrlError> {
    let host = url.host_str().unwrap_or_default().to_owned();
    match url.host() {
        Some(url::Host::Ipv4(ip)) => return Ok(vec![IpAddr::V4(ip)]),
        Some(url::Host::Ipv6(ip)) => return Ok(vec![IpAddr::V6(ip)]),
        _ => {}
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let found: Vec<IpAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|_| EndpointUrlError::Unresolvable(host.clone()))?
        .map(|a| a.ip())
        .collect();
    if found.is_empty() {
        return Err(EndpointUrlError::Unresolvable(host));
    }
    Ok(found)
}

/// An IPv4 address written as IPv6 (mapped `::ffff:a.b.c.d`) is judged as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `address` is a public unicast address (not loopback, private,
/// shared, link-local, multicast, documentation, benchmarking or reserved).
pub fn is_public(address: IpAddr) -> bool {
    match canonical(address) {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return false;
    }
    // NAT64 (64:ff9b::/96) carries an IPv4 address: judge that one.
    if ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a, b, c, d] = ip.octets();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    // IPv4-compatible (::a.b.c.d, deprecated) and 6to4 (2002:a.b.c.d::/48) carry an IPv4 address too.
    if ip.segments()[..6] == [0, 0, 0, 0, 0, 0] {
        let [.., a, b, c, d] = ip.octets();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    if first == 0x2002 {
        let [_, _, a, b, c, d, ..] = ip.octets();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !((first & 0xfe00) == 0xfc00 // unique local
        || (first == 0x2001 && ip.segments()[1] == 0) // Teredo: an address behind a NAT, not judged
        || ip.segments()[..3] == [0x64, 0xff9b, 1] // NAT64 local use
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || first == 0x0100) // discard-only
}

/// The delivery client's resolver: resolves, then keeps only the addresses
/// the policy allows (none left: the attempt fails, naming the host).
#[derive(Debug)]
pub struct CheckedResolver {
    policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.iter().copied().filter(|a| policy.allows(a.ip())).collect();
            if allowed.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> = match found.first() {
                    Some(refused) => Box::new(EndpointUrlError::Private {
                        host,
                        address: refused.ip(),
                    }),
                    None => Box::new(EndpointUrlError::Unresolvable(host)),
                };
                return Err(error);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_reserved_addresses_are_not_public() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
            "::7f00:1",
            "2002:a00:1::1",
            "2001:0:4136:e378::1",
            "64:ff9b:1::a00:1",
            "192.88.99.1",
        ] {
            assert!(
                !is_public(refused.parse().unwrap()),
                "{refused} must not count as public"
            );
        }
        for public in [
            "93.184.215.14",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public} is public");
        }
    }

    #[test]
    fn allowed_networks_let_private_addresses_through() {
        let policy = AddressPolicy::new(&["10.20.0.0/16".to_owned()], false).unwrap();
        assert!(policy.allows("10.20.3.4".parse().unwrap()));
        assert!(!policy.allows("10.21.3.4".parse().unwrap()));
        assert!(AddressPolicy::new(&["ten".to_owned()], false).is_err());
    }

    #[tokio::test]
    async fn urls_must_be_https_without_credentials_and_public() {
        let strict = AddressPolicy::default();
        assert_eq!(
            strict.check("http://93.184.215.14/hook").await,
            Err(EndpointUrlError::NotHttps)
        );
        assert_eq!(
            strict.check("https://user:pw@93.184.215.14/hook").await,
            Err(EndpointUrlError::Credentials)
        );
        assert!(matches!(
            strict.check("https://127.0.0.1:8443/hook").await,
            Err(EndpointUrlError::Private { .. })
        ));
        assert!(matches!(
            strict.check("https://[::ffff:192.168.0.1]/hook").await,
            Err(EndpointUrlError::Private { .. })
        ));
        assert!(strict.check("https://93.184.215.14/hook").await.is_ok());
        // Development: http to loopback, when loopback is allowed too.
        let dev = AddressPolicy::new(&["127.0.0.0/8".to_owned()], true).unwrap();
        assert!(dev.check("http://127.0.0.1:9000/hook").await.is_ok());
        assert_eq!(
            dev.check("http://93.184.215.14/hook").await,
            Err(EndpointUrlError::NotHttps)
        );
    }
}
