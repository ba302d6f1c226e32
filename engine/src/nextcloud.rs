//! HTTP client to Nextcloud: the credential check (spec §4.1).

use crate::error::{AuthError, NextcloudError};
use crate::ip::join_chain;
use reqwest::StatusCode;
use std::net::IpAddr;

#[derive(Clone)]
pub(crate) struct NextcloudClient {
    http: reqwest::Client,
    uid_url: String,
}

impl NextcloudClient {
    pub fn new(base_url: &str, allow_self_signed: bool) -> Result<NextcloudClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(allow_self_signed)
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()?;
        Ok(NextcloudClient { http, uid_url: format!("{base_url}index.php/apps/notify_push/uid") })
    }

    /// `GET index.php/apps/notify_push/uid` with Basic auth; 200 → the body as-is is the uid.
    pub async fn uid(
        &self,
        username: &str,
        password: &str,
        chain: &[IpAddr],
    ) -> Result<String, AuthError> {
        let response = self
            .http
            .get(&self.uid_url)
            .basic_auth(username, Some(password))
            .header("X-Forwarded-For", join_chain(chain))
            .header(reqwest::header::ACCEPT, "*/*")
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
