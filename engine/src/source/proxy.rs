//! HTTP CONNECT proxies for AMQP over WebSockets, as corporate networks have them:
//! `proxy = "http://[user:password@]host[:port]"`, else `HTTPS_PROXY` (or `https_proxy`) from the
//! environment, except for the hosts `NO_PROXY` (or `no_proxy`) lists.
//!
//! The conventions are curl's and Go's: a proxy URL without a port uses 80, `NO_PROXY` is a comma
//! separated list of host names, domain suffixes (`example.com` and `.example.com` both match
//! `a.example.com`) and IP addresses, with `*` for every host, and (as Go does) the environment's
//! proxy is never used for loopback hosts (`localhost`, `127.0.0.0/8`, `::1`). As in the official SDKs, a proxy
//! applies to WebSockets only (`transport = "amqp_websockets"`): proxies let port 443 out, not 5671.
//!
//! The tunnel is one `CONNECT host:port` request; TLS and the WebSocket handshake then run through
//! it end to end, so the proxy sees the host name and port and nothing else.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The environment variables naming a proxy for HTTPS (and so for `wss`), in order of preference.
const PROXY_VARIABLES: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];
/// The environment variables listing hosts reached without the proxy.
const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];
/// The largest proxy answer read before giving up.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// How long the proxy may take to answer CONNECT.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP proxy. `Debug` and `Display` mask the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = match &self.credentials {
            Some((user, _)) => format!("{user}:***@"),
            None => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "http://{user}{host}:{}", self.port)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

impl ProxyUrl {
    /// Parses `http://[user:password@]host[:port][/]` (the scheme may be left out). Errors name
    /// what is wrong, never the password.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(
                    "an https:// proxy (TLS to the proxy itself) is not supported; give its \
                     http:// address: the tunnel carries TLS end to end either way"
                        .to_owned(),
                );
            }
            Some((scheme, _)) => {
                return Err(format!(
                    "proxy scheme `{scheme}` is not supported; give an http:// proxy"
                ));
            }
            None => text,
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err("a proxy URL has no path: give http://host:port".to_owned());
        }
        let (userinfo, authority) = match rest.rsplit_once('@') {
            Some((userinfo, authority)) => (Some(userinfo), authority),
            None => (None, rest),
        };
        let credentials = userinfo.map(|userinfo| {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |part: &str| percent_decode_str(part).decode_utf8_lossy().into_owned();
            (decode(user), decode(password))
        });
        let (host, port) = match authority.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or("the proxy's IPv6 address has no closing `]`")?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err("the proxy URL has no host".to_owned());
        }
        let port = match port {
            Some(port) => port
                .parse()
                .map_err(|_| format!("the proxy port `{port}` is not a number"))?,
            None => 80,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            credentials,
        })
    }

    /// The proxy the environment names for `host`: `HTTPS_PROXY` unless `NO_PROXY` lists the host.
    /// An unparsable value is an error naming the variable.
    pub(crate) fn from_environment(host: &str) -> Result<Option<Self>, String> {
        let variable = |names: [&'static str; 2]| {
            names.iter().find_map(|name| {
                std::env::var(name)
                    .ok()
                    .filter(|value| !value.trim().is_empty())
                    .map(|value| (*name, value))
            })
        };
        let Some((name, value)) = variable(PROXY_VARIABLES) else {
            return Ok(None);
        };
        if is_loopback(host) {
            return Ok(None);
        }
        let proxy = Self::parse(&value).map_err(|problem| format!("{name}: {problem}"))?;
        if let Some((_, no_proxy)) = variable(NO_PROXY_VARIABLES)
            && bypasses(&no_proxy, host)
        {
            return Ok(None);
        }
        Ok(Some(proxy))
    }

    /// Opens a tunnel through the proxy to `host:port`.
    pub(crate) async fn tunnel(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|error| format!("cannot reach the proxy {self}: {error}"))?;
        stream
            .set_nodelay(true)
            .map_err(|error| error.to_string())?;
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: hubroute/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some((user, password)) = &self.credentials {
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request.push_str(&format!("Proxy-Authorization: Basic {basic}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| format!("writing CONNECT to the proxy {self}: {error}"))?;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, read_answer(&mut stream))
            .await
            .map_err(|_| {
                format!("the proxy {self} did not answer CONNECT within {ANSWER_TIMEOUT:?}")
            })?
            .map_err(|problem| format!("the proxy {self}: {problem}"))?;
        let status_line = answer.lines().next().unwrap_or_default();
        let status = status_line.split_whitespace().nth(1).unwrap_or_default();
        match status {
            "200" => Ok(stream),
            "407" => Err(format!(
                "the proxy {self} requires authentication ({status_line}); put the user and \
                 password in the proxy URL: http://user:password@host:port"
            )),
            _ => Err(format!(
                "the proxy {self} refused CONNECT {target}: {status_line}"
            )),
        }
    }
}

/// Reads the proxy's answer up to its blank line. The client speaks first after a tunnel opens
/// (TLS or the WebSocket request), so nothing may follow the answer yet.
async fn read_answer(stream: &mut TcpStream) -> Result<String, String> {
    let mut answer = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|error| format!("reading its answer to CONNECT: {error}"))?;
        if read == 0 {
            return Err("it closed the connection instead of answering CONNECT".to_owned());
        }
        answer.extend_from_slice(&chunk[..read]);
        if let Some(end) = answer.windows(4).position(|window| window == b"\r\n\r\n") {
            if end + 4 != answer.len() {
                return Err("it sent data after its answer to CONNECT".to_owned());
            }
            return Ok(String::from_utf8_lossy(&answer).into_owned());
        }
        if answer.len() > MAX_ANSWER_BYTES {
            return Err("its answer to CONNECT has no end".to_owned());
        }
    }
}

/// Whether `host` is this machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_matches(|c| c == '[' || c == ']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `NO_PROXY`'s list covers `host`.
fn bypasses(no_proxy: &str, host: &str) -> bool {
    let host = host
        .trim_matches(|c| c == '[' || c == ']')
        .to_ascii_lowercase();
    no_proxy.split(',').map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = entry.trim_start_matches("*.").trim_start_matches('.');
        // An entry may carry a port; the port does not narrow it here.
        let entry = match entry.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => name,
            _ => entry,
        };
        let entry = entry
            .trim_matches(|c| c == '[' || c == ']')
            .to_ascii_lowercase();
        !entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_like_curl_and_hide_the_password() {
        let cases = [
            ("http://proxy.corp:3128", ("proxy.corp", 3128, None)),
            ("proxy.corp", ("proxy.corp", 80, None)),
            ("http://[::1]:8080/", ("::1", 8080, None)),
            (
                "http://me:p%40ss@proxy.corp:3128",
                ("proxy.corp", 3128, Some(("me", "p@ss"))),
            ),
        ];
        for (text, (host, port, credentials)) in cases {
            let proxy = ProxyUrl::parse(text).unwrap();
            assert_eq!((proxy.host.as_str(), proxy.port), (host, port), "{text}");
            assert_eq!(
                proxy
                    .credentials
                    .as_ref()
                    .map(|(u, p)| (u.as_str(), p.as_str())),
                credentials,
                "{text}"
            );
            assert!(!format!("{proxy} {proxy:?}").contains("p@ss"));
        }
        let failures = [
            ("https://proxy:443", "not supported"),
            ("socks5://proxy:1080", "`socks5` is not supported"),
            ("http://proxy:port", "not a number"),
            ("http://proxy:80/path", "no path"),
            ("http://:80", "no host"),
        ];
        for (text, expected) in failures {
            let error = ProxyUrl::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn no_proxy_matches_hosts_suffixes_and_addresses() {
        let cases = [
            ("*", "anything.example", true),
            ("example.com", "example.com", true),
            ("example.com", "ns.example.com", true),
            (".example.com", "ns.example.com", true),
            ("*.example.com", "ns.example.com", true),
            ("example.com", "notexample.com", false),
            ("localhost, 127.0.0.1:5673", "127.0.0.1", true),
            ("::1", "[::1]", true),
            ("other.net", "ns.servicebus.windows.net", false),
            ("", "ns.servicebus.windows.net", false),
        ];
        for (no_proxy, host, expected) in cases {
            assert_eq!(bypasses(no_proxy, host), expected, "{no_proxy} / {host}");
        }
        for (host, expected) in [
            ("localhost", true),
            ("127.0.0.2", true),
            ("[::1]", true),
            ("10.0.0.1", false),
        ] {
            assert_eq!(is_loopback(host), expected, "{host}");
        }
    }
}
