//! The names this server answers to. A page on `evil.example` whose DNS name is re-pointed at
//! 127.0.0.1 (DNS rebinding) reaches us with `Host: evil.example`: without this check its
//! scripts could read our pages and streams as if same-origin. Accepted: loopback names, the
//! listen address, the host of `--public-url`, and `--allowed-hosts`; anything else is 421.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use axum::http::header::HOST;

use crate::error::Error;

#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// Lower-case host names and addresses, without ports.
    names: Vec<String>,
}

impl AllowedHosts {
    pub fn new(
        listen: SocketAddr,
        public_url: Option<&str>,
        allowed: &[String],
    ) -> Result<AllowedHosts, String> {
        let mut names: Vec<String> = allowed
            .iter()
            .map(|name| host_name(name.trim()).to_ascii_lowercase())
            .collect();
        if !listen.ip().is_unspecified() {
            names.push(listen.ip().to_string());
        }
        if let Some(url) = public_url {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("--public-url {url:?} is not a URL: {e}"))?;
            let host = parsed
                .host_str()
                .ok_or_else(|| format!("--public-url {url:?} names no host"))?;
            names.push(host.trim_matches(['[', ']']).to_ascii_lowercase());
        }
        Ok(AllowedHosts { names })
    }

    /// Whether the request's `Host` is one of ours. A request without one (HTTP/1.0) cannot
    /// come from a rebinding page, whose browser always sends it.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Error> {
        let Some(host) = headers.get(HOST) else {
            return Ok(());
        };
        let host = host.to_str().unwrap_or_default();
        let name = host_name(host).to_ascii_lowercase();
        if is_loopback(&name) || self.names.contains(&name) {
            return Ok(());
        }
        Err(Error::MisdirectedRequest(format!(
            "this server does not answer to Host {host:?}; if that is its name, start it with \
             --public-url or --allowed-hosts {name}"
        )))
    }
}

/// `name:port`, `[v6]:port` or a bare name, less its port and brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn is_loopback(name: &str) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, host.parse().unwrap());
        headers
    }

    #[test]
    fn loopback_listen_public_and_allowed_names_pass_and_others_are_421() {
        let hosts = AllowedHosts::new(
            "10.1.2.3:8153".parse().unwrap(),
            Some("https://CI.example.com/go"),
            &["build.internal:8153".to_string()],
        )
        .unwrap();
        for ok in [
            "localhost:8153",
            "127.0.0.1:9",
            "[::1]:8153",
            "app.localhost",
            "10.1.2.3:8153",
            "ci.example.com",
            "build.internal",
        ] {
            assert!(hosts.check(&with_host(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example:8153",
            "10.1.2.4:8153",
            "ci.example.com.evil.example",
        ] {
            let error = hosts.check(&with_host(bad)).unwrap_err();
            assert!(matches!(error, Error::MisdirectedRequest(_)), "{bad}");
        }
        assert!(hosts.check(&HeaderMap::new()).is_ok());
        assert!(AllowedHosts::new("0.0.0.0:1".parse().unwrap(), Some("not a url"), &[]).is_err());
    }
}
