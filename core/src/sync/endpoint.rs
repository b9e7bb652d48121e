//! The server's address, as the app gives it, normalized once.
//!
//! `http://host:port`, `https://host`, `ws://host:port` and
//! `wss://host/v1/sync` all name a server; the HTTP calls go to its
//! `http(s)://` base and the socket to the `ws(s)://` form of the same base
//! plus `/v1/sync`. A path is kept as a prefix (a server behind a proxy at
//! `https://example.com/tandem`). Anything else (another scheme, no host,
//! a query, credentials in the URL) is refused at once with
//! [`Error::InvalidConfig`], not after a connection attempt.

use url::Url;

use crate::error::Error;

/// The path of the sync socket under the base.
const SYNC_PATH: &str = "/v1/sync";

/// A server's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `http(s)://host[:port][/prefix]`, without a trailing slash.
    base: String,
    /// TLS (`https`/`wss`).
    secure: bool,
}

impl Endpoint {
    /// Parses and normalizes `url`.
    pub fn parse(url: &str) -> Result<Endpoint, Error> {
        let invalid = |why: &str| Error::InvalidConfig(format!("server URL {url:?}: {why}"));
        let parsed = Url::parse(url.trim()).map_err(|e| invalid(&e.to_string()))?;
        let secure = match parsed.scheme() {
            "http" | "ws" => false,
            "https" | "wss" => true,
            other => {
                return Err(invalid(&format!(
                    "the scheme must be http, https, ws or wss, not {other:?}"
                )));
            }
        };
        let host = match parsed.host_str() {
            Some(host) if !host.is_empty() => host,
            _ => return Err(invalid("it names no host")),
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "credentials do not belong in the URL: the token provider gives them",
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("a server URL has no query or fragment"));
        }
        let path = parsed.path().trim_end_matches('/');
        // The socket's own URL names the same server.
        let prefix = path.strip_suffix(SYNC_PATH).unwrap_or(path);
        let scheme = if secure { "https" } else { "http" };
        let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
        Ok(Endpoint {
            base: format!("{scheme}://{host}{port}{prefix}"),
            secure,
        })
    }

    /// The base of the HTTP endpoints, `http(s)://host[:port][/prefix]`.
    pub fn http_base(&self) -> &str {
        &self.base
    }

    /// The sync socket's URL, `ws(s)://host[:port][/prefix]/v1/sync`.
    pub fn sync_url(&self) -> String {
        let rest = self
            .base
            .split_once("://")
            .map_or(self.base.as_str(), |(_, rest)| rest);
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{rest}{SYNC_PATH}")
    }

    /// Whether connections use TLS.
    pub fn is_secure(&self) -> bool {
        self.secure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(url: &str) -> (String, String) {
        let endpoint = Endpoint::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        (endpoint.http_base().to_owned(), endpoint.sync_url())
    }

    #[test]
    fn every_form_of_one_server_is_the_same_endpoint() {
        let plain = (
            "http://127.0.0.1:7700".to_owned(),
            "ws://127.0.0.1:7700/v1/sync".to_owned(),
        );
        for url in [
            "http://127.0.0.1:7700",
            "http://127.0.0.1:7700/",
            "ws://127.0.0.1:7700",
            "ws://127.0.0.1:7700/v1/sync",
            " HTTP://127.0.0.1:7700 ",
        ] {
            assert_eq!(normalized(url), plain, "{url}");
        }
        let secure = (
            "https://sync.example.com".to_owned(),
            "wss://sync.example.com/v1/sync".to_owned(),
        );
        for url in [
            "https://sync.example.com",
            "wss://sync.example.com/v1/sync/",
            "https://sync.example.com:443",
        ] {
            assert_eq!(normalized(url), secure, "{url}");
        }
        assert_eq!(
            normalized("https://example.com/tandem/"),
            (
                "https://example.com/tandem".to_owned(),
                "wss://example.com/tandem/v1/sync".to_owned()
            )
        );
        assert!(Endpoint::parse("wss://h").unwrap().is_secure());
        assert!(!Endpoint::parse("ws://h").unwrap().is_secure());
    }

    #[test]
    fn anything_else_is_an_invalid_config_at_once() {
        for url in [
            "ftp://example.com",
            "127.0.0.1:7700",
            "example.com",
            "http://",
            "https://user:secret@example.com",
            "http://h/?x=1",
            "not a url",
            "",
        ] {
            match Endpoint::parse(url) {
                Err(Error::InvalidConfig(message)) => {
                    assert!(message.starts_with("server URL"), "{message}");
                    assert!(!message.contains("invalid_config"), "{message}");
                }
                other => panic!("{url:?}: {other:?}"),
            }
        }
    }
}
