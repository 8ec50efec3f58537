//! `return_url` policy: the browser is only ever sent back to an origin the
//! operator allowed (no open redirect).

use url::Url;

/// An allowed origin: scheme, host and port (any port for a loopback `:*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
    any_port: bool,
}

impl Origin {
    /// Whether `candidate` (a return URL's origin) is this allowed origin.
    fn admits(&self, candidate: &Origin) -> bool {
        self.scheme == candidate.scheme && self.host == candidate.host && (self.any_port || self.port == candidate.port)
    }
}

/// Hosts whose origins may allow any port (`http://localhost:*`): only this machine.
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The return origins of the development defaults: this machine, any port.
pub const DEVELOPMENT_ORIGINS: [&str; 2] = ["http://localhost:*", "http://127.0.0.1:*"];

/// Parses a configured origin such as `https://app.example.com`,
/// `http://localhost:3000`, or `http://localhost:*` (a loopback host, any port).
pub fn parse_origin(text: &str) -> Result<Origin, &'static str> {
    if let Some(base) = text.strip_suffix(":*") {
        let mut origin = parse_origin(base)?;
        if !LOOPBACK_HOSTS.contains(&origin.host.as_str()) {
            return Err("may allow any port (`:*`) only on localhost, 127.0.0.1 or [::1]");
        }
        origin.any_port = true;
        return Ok(origin);
    }
    let url = Url::parse(text).map_err(|_| "is not a URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be http:// or https://");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("must be an origin only (scheme://host[:port]), without path, query or fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials");
    }
    let host = url.host_str().ok_or("has no host")?.to_ascii_lowercase();
    Ok(Origin {
        scheme: url.scheme().to_owned(),
        host,
        port: url.port_or_known_default(),
        any_port: false,
    })
}

/// The configured allow-list of return origins.
#[derive(Debug, Clone, Default)]
pub struct ReturnUrlPolicy {
    origins: Vec<Origin>,
}

impl ReturnUrlPolicy {
    /// A policy from configured origins (validated at start-up).
    pub fn new(origins: &[String]) -> Result<Self, String> {
        let origins = origins
            .iter()
            .map(|o| parse_origin(o).map_err(|reason| format!("`{o}` {reason}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { origins })
    }

    /// Checks a `return_url`: absolute http(s), no credentials, origin allowed.
    pub fn check(&self, return_url: &str) -> Result<Url, String> {
        if return_url.len() > 2048 {
            return Err("return_url is longer than 2048 characters".to_owned());
        }
        let url = Url::parse(return_url).map_err(|_| "return_url is not an absolute URL".to_owned())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("return_url must be http:// or https://".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("return_url must not contain credentials".to_owned());
        }
        let candidate = Origin {
            scheme: url.scheme().to_owned(),
            host: url.host_str().unwrap_or_default().to_ascii_lowercase(),
            port: url.port_or_known_default(),
            any_port: false,
        };
        if self.origins.iter().any(|origin| origin.admits(&candidate)) {
            Ok(url)
        } else {
            // The port is part of the origin: name it whenever the URL gave one.
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            Err(format!(
                "return_url origin {}://{}{port} is not in consent.allowed_return_origins",
                candidate.scheme,
                url.host_str().unwrap_or_default()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_must_be_bare() {
        assert!(parse_origin("https://app.example.com").is_ok());
        assert!(parse_origin("http://localhost:3000").is_ok());
        assert!(parse_origin("https://app.example.com/path").is_err());
        assert!(parse_origin("ftp://x").is_err());
        assert!(parse_origin("https://u:p@x.com").is_err());
        assert!(parse_origin("nonsense").is_err());
    }

    #[test]
    fn loopback_origins_may_allow_any_port() {
        let policy = ReturnUrlPolicy::new(&DEVELOPMENT_ORIGINS.map(str::to_owned)).unwrap();
        assert!(policy.check("http://localhost:3000/connected").is_ok());
        assert!(policy.check("http://127.0.0.1:8123/x").is_ok());
        assert!(policy.check("http://localhost/").is_ok());
        for bad in [
            "https://localhost:3000/",
            "http://localhost.evil.com:3000/",
            "http://10.0.0.1:3000/",
        ] {
            assert!(policy.check(bad).is_err(), "{bad} must be refused");
        }
        assert!(
            parse_origin("https://app.example.com:*").is_err(),
            "any port only on loopback"
        );
        assert!(parse_origin("http://[::1]:*").is_ok());
    }

    #[test]
    fn only_allowed_origins_pass() {
        let policy = ReturnUrlPolicy::new(&["https://app.example.com".into(), "http://localhost:3000".into()]).unwrap();
        assert!(policy.check("https://app.example.com/done?x=1").is_ok());
        assert!(policy.check("https://APP.example.com:443/done").is_ok());
        assert!(policy.check("http://localhost:3000/cb").is_ok());
        for bad in [
            "https://app.example.com.evil.com/",
            "https://evil.com/?https://app.example.com",
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "javascript:alert(1)",
            "//app.example.com/",
            "https://user@app.example.com/",
        ] {
            assert!(policy.check(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn a_refusal_names_the_whole_origin_port_included() {
        let policy = ReturnUrlPolicy::new(&["http://localhost:3000".to_owned()]).unwrap();
        let error = policy.check("http://localhost:8080/done").unwrap_err();
        assert!(error.contains("http://localhost:8080 is not in"), "{error}");
        let error = policy.check("https://app.example.com/x").unwrap_err();
        assert!(error.contains("https://app.example.com is not in"), "{error}");
    }
}
