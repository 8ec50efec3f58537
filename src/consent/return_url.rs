//! `return_url` policy: the browser is only ever sent back to an origin the
//! operator allowed (no open redirect).

use url::Url;

/// An allowed origin: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

/// Parses a configured origin such as `https://app.example.com` or `http://localhost:3000`.
pub fn parse_origin(text: &str) -> Result<Origin, &'static str> {
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
        };
        if self.origins.contains(&candidate) {
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
