//! HTTP client to Nextcloud: the credential check (spec §4.1) and the self-test calls (§4.2).
//!
//! With a [`NextcloudRoute`] loopback address every call goes to that address (the Apache this
//! daemon belongs to) with the original URL, so Host and SNI stay those of the Nextcloud URL
//! (reqwest `resolve`), and carries the client-IP vouching header ([`crate::vouch`]).

use crate::error::{AuthError, NextcloudError};
use crate::ip::join_chain;
use crate::vouch::{self, VouchKey};
use reqwest::StatusCode;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How the daemon reaches Nextcloud: through the Apache it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NextcloudRoute {
    /// The vhost's own address and port (`*` becomes 127.0.0.1). `None`: connect where the
    /// Nextcloud URL points (`NextcloudPushLoopback Off`, Nextcloud on another server).
    pub loopback: Option<SocketAddr>,
    /// The per-daemon vouching key; the header is only sent on the loopback route.
    pub vouch: Option<VouchKey>,
}

/// Upper bound of each self-test call to Nextcloud.
const TEST_CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct NextcloudClient {
    /// `None` once [`NextcloudClient::close`] dropped it (and its idle connections).
    http: std::sync::RwLock<Option<reqwest::Client>>,
    uid_url: String,
    base_url: String,
    vouch: Option<VouchKey>,
}

impl NextcloudClient {
    pub fn with_route(
        base_url: &str,
        allow_self_signed: bool,
        route: &NextcloudRoute,
    ) -> Result<NextcloudClient, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .danger_accept_invalid_certs(allow_self_signed)
            .redirect(reqwest::redirect::Policy::limited(10));
        let mut vouch = None;
        if let Some(addr) = route.loopback {
            // Connect from loopback even when the vhost is bound to a public address of this
            // host: Apache honours the vouching header only from a loopback peer.
            builder = builder.local_address(if addr.is_ipv4() {
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            });
            // Only a host name can be pointed elsewhere; an IP-literal URL is used as it is, and
            // vouches only if it is a loopback address itself (the header never leaves the host).
            let host = reqwest::Url::parse(base_url)
                .ok()
                .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()));
            match host.as_deref().map(|h| (h, h.parse::<IpAddr>())) {
                Some((name, Err(_))) => {
                    builder = builder.resolve(name, addr);
                    vouch = route.vouch.clone();
                }
                Some((_, Ok(ip))) if vouch::is_loopback(ip) => vouch = route.vouch.clone(),
                _ => {}
            }
        }
        let http = builder.build()?;
        Ok(NextcloudClient {
            http: std::sync::RwLock::new(Some(http)),
            uid_url: format!("{base_url}index.php/apps/notify_push/uid"),
            base_url: base_url.to_owned(),
            vouch,
        })
    }

    /// The HTTP client (a cheap handle), or [`NextcloudError::Closed`] after [`Self::close`].
    fn http(&self) -> Result<reqwest::Client, NextcloudError> {
        self.http.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or(NextcloudError::Closed)
    }

    /// Closes the idle keep-alive connections to Nextcloud (through this Apache, usually) now,
    /// at the start of a stop, rather than when the process ends: Apache's event MPM stops its
    /// children right after the daemon's answer, and a worker still finishing such a
    /// connection then races httpd's `close_worker_sockets` (a child segfault at stop). Calls
    /// after this fail with [`NextcloudError::Closed`]; a request in flight keeps its own
    /// connection until it ends.
    pub fn close(&self) {
        drop(self.http.write().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// Adds the vouching header for `client` when this client vouches.
    fn vouched(
        &self,
        request: reqwest::RequestBuilder,
        client: Option<IpAddr>,
    ) -> reqwest::RequestBuilder {
        match (&self.vouch, client) {
            (Some(key), Some(ip)) => request.header(vouch::HEADER, key.sign(ip, vouch::now_secs())),
            _ => request,
        }
    }

    fn test_url(&self, name: &str) -> String {
        format!("{}index.php/apps/notify_push/test/{name}", self.base_url)
    }

    /// `/test/reverse_cookie`: `GET …/test/cookie` with the token; the cookie or the error text
    /// the incumbent answers with (spec §5).
    pub async fn test_cookie(&self, token: &str) -> Result<u32, String> {
        let response = self
            .http()
            .map_err(|e| e.to_string())?
            .get(self.test_url("cookie"))
            .header("token", token)
            .header(reqwest::header::ACCEPT, "*/*")
            .timeout(TEST_CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| NextcloudError::Connect(e).to_string())?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_client_error() && body.contains("admin-trusted-domains") {
            let host = reqwest::Url::parse(&self.base_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(format!(
                "{host} is not configured as a trusted domain for the nextcloud server"
            ));
        }
        check_status(status)?;
        body.trim()
            .parse::<u32>()
            .map_err(|e| format!("Invalid response when getting test cookie: {e}"))
    }

    /// `/test/remote/<ip>`: `GET …/test/remote` with `X-Forwarded-For: ip`, the token and the
    /// vouch for `ip`; the address Nextcloud resolved, or the error text.
    pub async fn test_remote(&self, ip: IpAddr, token: &str) -> Result<IpAddr, String> {
        let request = self
            .http()
            .map_err(|e| e.to_string())?
            .get(self.test_url("remote"))
            .header("X-Forwarded-For", ip.to_string())
            .header("token", token)
            .header(reqwest::header::ACCEPT, "*/*")
            .timeout(TEST_CALL_TIMEOUT);
        let response = self
            .vouched(request, Some(ip))
            .send()
            .await
            .map_err(|e| NextcloudError::Connect(e).to_string())?;
        check_status(response.status())?;
        let body = response.text().await.map_err(|e| NextcloudError::Connect(e).to_string())?;
        body.trim().parse::<IpAddr>().map_err(|e| {
            format!("Invalid response when testing if the push server is a trusted proxy: {e}")
        })
    }

    /// `GET …/test/version` (no token): Nextcloud writes Redis `notify_push_app_version`.
    pub async fn request_app_version(&self) -> Result<(), String> {
        let response = self
            .http()
            .map_err(|e| e.to_string())?
            .get(self.test_url("version"))
            .header(reqwest::header::ACCEPT, "*/*")
            .timeout(TEST_CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| NextcloudError::Connect(e).to_string())?;
        check_status(response.status())
    }

    /// `GET index.php/apps/notify_push/uid` with Basic auth; 200 → the body as-is is the uid.
    pub async fn uid(
        &self,
        username: &str,
        password: &str,
        chain: &[IpAddr],
    ) -> Result<String, AuthError> {
        let response = self
            .http()?
            .get(&self.uid_url)
            .basic_auth(username, Some(password))
            .header("X-Forwarded-For", join_chain(chain))
            .header(reqwest::header::ACCEPT, "*/*");
        // The client is the last entry of the chain: the address Apache decided for the
        // WebSocket request (r->useragent_ip).
        let response = self
            .vouched(response, chain.last().copied())
            .send()
            .await
            .map_err(NextcloudError::Connect)?;
        match response.status() {
            StatusCode::OK => Ok(response.text().await.map_err(NextcloudError::Connect)?),
            StatusCode::UNAUTHORIZED => Err(AuthError::InvalidCredentials),
            status if status.is_server_error() => Err(NextcloudError::Server(status).into()),
            status if status.is_client_error() => Err(NextcloudError::Client(status).into()),
            status => Err(NextcloudError::Unexpected(status).into()),
        }
    }
}

fn check_status(status: StatusCode) -> Result<(), String> {
    if status.is_success() {
        Ok(())
    } else if status.is_server_error() {
        Err(NextcloudError::Server(status).to_string())
    } else if status.is_client_error() {
        Err(NextcloudError::Client(status).to_string())
    } else {
        Err(NextcloudError::Unexpected(status).to_string())
    }
}
