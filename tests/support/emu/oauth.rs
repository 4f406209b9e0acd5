//! An OAuth 2.0 authorization server for the emulators: the authorization code grant with
//! PKCE (RFC 6749 §4.1, RFC 7636, S256 only), refresh (§6) with optional rotation, the
//! device authorization grant (RFC 8628) and revocation (RFC 7009), and the bearer check
//! every API call starts with. An emulator owns one, routes its token endpoints to it, and
//! turns its [`OAuthReply`]s into HTTP responses; what differs between services (token
//! shapes, lifetimes, rotation, which scopes the device flow grants, how the device
//! endpoint names its URL, the status of "authorization pending") is in
//! [`OAuthSettings`].
//!
//! Every secret issued or received (codes, tokens, PKCE verifiers, the client secret) is
//! kept in [`OAuthServer::secrets`], for the tests that look for leaks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How one service's authorization server behaves.
#[derive(Clone, Debug)]
pub struct OAuthSettings {
    pub client_id: String,
    pub client_secret: String,
    pub access_token_lifetime: Duration,
    /// Issue a new refresh token on every refresh and invalidate the old one (Microsoft
    /// does; Google and Dropbox keep one refresh token).
    pub rotate_refresh_tokens: bool,
    /// Scopes the device flow grants (Google: only `drive.file` and `drive.appdata`);
    /// `None`: any.
    pub device_scopes: Option<Vec<String>>,
    /// What the service's secrets start with, so a leak is recognisable in a log.
    pub prefixes: TokenPrefixes,
    /// The device endpoint's field naming the page the user visits: RFC 8628 says
    /// `verification_uri`, Google answers `verification_url`.
    pub verification_field: &'static str,
    pub verification_url: String,
    /// The status of `authorization_pending` while the user has not approved: RFC 8628
    /// §3.5 says 400, Google answers 428.
    pub pending_status: u16,
    /// The polling interval the device endpoint announces; a client polling faster is
    /// told `slow_down` (RFC 8628 §3.5) when `enforce_interval` is set.
    pub device_interval: Duration,
    pub enforce_interval: bool,
    /// How long a device code lives (Google: 30 min, Microsoft: 15 min).
    pub device_code_lifetime: Duration,
    /// What revoking an unknown or already revoked token answers: RFC 7009 §2.2 says 200
    /// (the client's aim is reached); Google answers 400 `invalid_token`.
    pub revoke_unknown_status: u16,
    /// Microsoft's error bodies: `error_description` starting with an AADSTS code, plus
    /// `error_codes`, `timestamp`, `trace_id` and `correlation_id`.
    pub aad_errors: bool,
}

#[derive(Clone, Debug)]
pub struct TokenPrefixes {
    pub code: &'static str,
    pub access: &'static str,
    pub refresh: &'static str,
    pub device: &'static str,
}

/// What an endpoint answers, for the emulator to send.
#[derive(Debug)]
pub enum OAuthReply {
    Json(u16, Value),
    /// A page for the browser: the authorization endpoint does not redirect errors about
    /// the client or the redirect URI back to that URI (RFC 6749 §4.1.2.1).
    Page(u16, String),
    /// 302 to this location.
    Redirect(String),
}

/// What an `Authorization` header holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BearerState {
    Missing,
    Unknown,
    Expired,
    Live,
}

#[derive(Clone, Debug, Default)]
pub struct OAuthStats {
    /// API calls refused for a missing, unknown or expired access token.
    pub unauthorized: u64,
    /// Tokens issued for a code or a device grant.
    pub token_grants: u64,
    pub refresh_grants: u64,
    pub revocations: u64,
}

struct CodeGrant {
    redirect_uri: String,
    challenge: String,
    scope: String,
}

struct AccessGrant {
    expires: Instant,
    refresh: Option<String>,
}

struct RefreshGrant {
    scope: String,
    revoked: bool,
}

struct DeviceGrant {
    user_code: String,
    scope: String,
    approved: bool,
    last_poll: Option<Instant>,
    expires: Instant,
}

pub struct OAuthServer {
    pub settings: OAuthSettings,
    pub stats: OAuthStats,
    codes: HashMap<String, CodeGrant>,
    access: HashMap<String, AccessGrant>,
    refresh: HashMap<String, RefreshGrant>,
    device: HashMap<String, DeviceGrant>,
    secrets: Vec<String>,
    next_token: u64,
}

fn error(status: u16, error: &str, description: &str) -> OAuthReply {
    OAuthReply::Json(
        status,
        json!({"error": error, "error_description": description}),
    )
}

/// The AADSTS code Microsoft's token endpoint gives each error (from its error pages).
fn aad_code(error: &str) -> u32 {
    match error {
        "invalid_client" => 7000215,
        "invalid_grant" => 70000,
        "authorization_pending" => 70016,
        "slow_down" => 70016,
        "expired_token" => 70020,
        "invalid_scope" => 70011,
        "unsupported_grant_type" => 70003,
        _ => 900144,
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn random_suffix(n: usize) -> String {
    super::text::random_of(super::text::ALNUM, n)
}

/// Client id and secret from HTTP Basic (RFC 6749 §2.3.1, form-encoded inside) or the form.
fn client_credentials(
    authorization: Option<&str>,
    f: &HashMap<String, String>,
) -> (Option<String>, Option<String>) {
    if let Some(basic) = authorization.and_then(|v| v.strip_prefix("Basic ")) {
        if let Ok(dec) = base64::engine::general_purpose::STANDARD.decode(basic) {
            let s = String::from_utf8_lossy(&dec).into_owned();
            if let Some((id, secret)) = s.split_once(':') {
                let decode = |x: &str| {
                    url::form_urlencoded::parse(format!("x={x}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default()
                };
                return (Some(decode(id)), Some(decode(secret)));
            }
        }
    }
    (f.get("client_id").cloned(), f.get("client_secret").cloned())
}

impl OAuthServer {
    pub fn new(settings: OAuthSettings) -> Self {
        // A public client has no secret (an empty one would "appear" in every text).
        let secrets = [settings.client_secret.clone()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        OAuthServer {
            settings,
            stats: OAuthStats::default(),
            codes: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            device: HashMap::new(),
            secrets,
            next_token: 0,
        }
    }

    fn new_secret(&mut self, prefix: &str) -> String {
        self.next_token += 1;
        let s = format!("{prefix}{}{}", self.next_token, random_suffix(24));
        self.secrets.push(s.clone());
        s
    }

    /// Every token, code, verifier and client secret seen or issued.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// The authorization endpoint (GET with the query): checks the client, the loopback
    /// redirect URI and the PKCE challenge, and redirects back with a code (the user
    /// consents at once).
    pub fn authorize(&mut self, q: &HashMap<String, String>) -> OAuthReply {
        if q.get("client_id") != Some(&self.settings.client_id) {
            return OAuthReply::Page(401, "Error 401: invalid_client".into());
        }
        let Some(redirect) = q.get("redirect_uri") else {
            return OAuthReply::Page(400, "Error 400: invalid_request (redirect_uri)".into());
        };
        let loopback =
            redirect.starts_with("http://127.0.0.1:") || redirect.starts_with("http://[::1]:");
        let Some(back) = url::Url::parse(redirect).ok().filter(|_| loopback) else {
            return OAuthReply::Page(400, "Error 400: redirect_uri_mismatch".into());
        };
        let redirect_with = |pairs: &[(&str, &str)]| {
            let mut u = back.clone();
            if let Some(s) = q.get("state") {
                u.query_pairs_mut().append_pair("state", s);
            }
            for (k, v) in pairs {
                u.query_pairs_mut().append_pair(k, v);
            }
            OAuthReply::Redirect(u.into())
        };
        if q.get("response_type").map(String::as_str) != Some("code") {
            return redirect_with(&[("error", "unsupported_response_type")]);
        }
        let challenge = match (q.get("code_challenge_method"), q.get("code_challenge")) {
            (Some(m), Some(c)) if m == "S256" && c.len() >= 43 => c.clone(),
            _ => return redirect_with(&[("error", "invalid_request")]),
        };
        let Some(scope) = q.get("scope").cloned() else {
            return redirect_with(&[("error", "invalid_scope")]);
        };
        let code = self.new_secret(self.settings.prefixes.code);
        self.codes.insert(
            code.clone(),
            CodeGrant {
                redirect_uri: redirect.clone(),
                challenge,
                scope: scope.clone(),
            },
        );
        redirect_with(&[("code", &code), ("scope", &scope)])
    }

    fn issue(&mut self, scope: &str, refresh: Option<String>, new_refresh: bool) -> Value {
        let access = self.new_secret(self.settings.prefixes.access);
        let refresh = if new_refresh {
            let r = self.new_secret(self.settings.prefixes.refresh);
            self.refresh.insert(
                r.clone(),
                RefreshGrant {
                    scope: scope.to_owned(),
                    revoked: false,
                },
            );
            Some(r)
        } else {
            refresh
        };
        let lifetime = self.settings.access_token_lifetime;
        self.access.insert(
            access.clone(),
            AccessGrant {
                expires: Instant::now() + lifetime,
                refresh: refresh.clone(),
            },
        );
        let mut v = json!({
            "access_token": access,
            "expires_in": lifetime.as_secs().max(1),
            "scope": scope,
            "token_type": "Bearer",
        });
        if new_refresh {
            v["refresh_token"] = json!(refresh);
        }
        v
    }

    /// An error reply in the service's style.
    fn styled(&self, reply: OAuthReply) -> OAuthReply {
        match reply {
            OAuthReply::Json(status, mut v) if self.settings.aad_errors && status >= 400 => {
                let error = v["error"].as_str().unwrap_or_default().to_owned();
                let code = aad_code(&error);
                let description = v["error_description"].as_str().unwrap_or_default();
                v["error_description"] = json!(format!("AADSTS{code}: {description}"));
                v["error_codes"] = json!([code]);
                v["timestamp"] = json!("2026-01-01 00:00:00Z");
                v["trace_id"] = json!("0b1c2d3e-0000-4000-8000-000000000001");
                v["correlation_id"] = json!("0b1c2d3e-0000-4000-8000-000000000002");
                OAuthReply::Json(status, v)
            }
            other => other,
        }
    }

    /// The token endpoint (POST, form body; client authentication in `authorization`
    /// or the form).
    pub fn token(&mut self, authorization: Option<&str>, body: &[u8]) -> OAuthReply {
        let reply = self.token_reply(authorization, body);
        self.styled(reply)
    }

    fn token_reply(&mut self, authorization: Option<&str>, body: &[u8]) -> OAuthReply {
        let f = form(body);
        let (client, secret) = client_credentials(authorization, &f);
        if client.as_deref() != Some(self.settings.client_id.as_str()) {
            return error(401, "invalid_client", "The OAuth client was not found.");
        }
        // A public client (empty secret in the settings) sends none.
        let public = self.settings.client_secret.is_empty();
        if !public && secret.as_deref() != Some(self.settings.client_secret.as_str()) {
            return error(401, "invalid_client", "Unauthorized");
        }
        match f.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                let Some(code) = f.get("code") else {
                    return error(400, "invalid_request", "Missing required parameter: code");
                };
                // Codes are single use: removed whatever happens next.
                let Some(grant) = self.codes.remove(code) else {
                    return error(400, "invalid_grant", "Malformed auth code.");
                };
                if f.get("redirect_uri") != Some(&grant.redirect_uri) {
                    return error(400, "redirect_uri_mismatch", "Bad Request");
                }
                let Some(verifier) = f.get("code_verifier") else {
                    return error(400, "invalid_grant", "Missing code verifier.");
                };
                self.secrets.push(verifier.clone());
                let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(Sha256::digest(verifier.as_bytes()));
                if computed != grant.challenge {
                    return error(400, "invalid_grant", "Invalid code verifier.");
                }
                self.stats.token_grants += 1;
                OAuthReply::Json(200, self.issue(&grant.scope, None, true))
            }
            Some("refresh_token") => {
                let Some(rt) = f.get("refresh_token").cloned() else {
                    return error(
                        400,
                        "invalid_request",
                        "Missing required parameter: refresh_token",
                    );
                };
                let scope = match self.refresh.get(&rt) {
                    Some(g) if !g.revoked => g.scope.clone(),
                    _ => return error(400, "invalid_grant", "Token has been expired or revoked."),
                };
                self.stats.refresh_grants += 1;
                let rotate = self.settings.rotate_refresh_tokens;
                if rotate {
                    if let Some(g) = self.refresh.get_mut(&rt) {
                        g.revoked = true;
                    }
                }
                OAuthReply::Json(200, self.issue(&scope, Some(rt), rotate))
            }
            Some("urn:ietf:params:oauth:grant-type:device_code") => {
                let Some(dc) = f.get("device_code") else {
                    return error(
                        400,
                        "invalid_request",
                        "Missing required parameter: device_code",
                    );
                };
                let interval = self.settings.device_interval;
                let enforce = self.settings.enforce_interval;
                let Some(g) = self.device.get_mut(dc) else {
                    return error(400, "invalid_grant", "Malformed device code.");
                };
                if g.expires <= Instant::now() {
                    return error(400, "expired_token", "The device code has expired.");
                }
                let too_soon = g.last_poll.is_some_and(|at| at.elapsed() < interval);
                g.last_poll = Some(Instant::now());
                if enforce && too_soon {
                    return error(400, "slow_down", "Polling faster than the interval.");
                }
                if !g.approved {
                    return error(
                        self.settings.pending_status,
                        "authorization_pending",
                        "Precondition Required",
                    );
                }
                let scope = g.scope.clone();
                self.device.remove(dc);
                self.stats.token_grants += 1;
                OAuthReply::Json(200, self.issue(&scope, None, true))
            }
            _ => error(400, "unsupported_grant_type", "Invalid grant_type"),
        }
    }

    /// The revocation endpoint: the token from the form or the query. Revoking a refresh
    /// token ends the access tokens issued from it.
    pub fn revoke(&mut self, q: &HashMap<String, String>, body: &[u8]) -> OAuthReply {
        let f = form(body);
        let Some(token) = f.get("token").or(q.get("token")).cloned() else {
            return error(400, "invalid_request", "Missing required parameter: token");
        };
        self.stats.revocations += 1;
        let unknown = match self.settings.revoke_unknown_status {
            200 => OAuthReply::Json(200, json!({})),
            status => error(status, "invalid_token", "Token expired or revoked"),
        };
        if let Some(g) = self.refresh.get_mut(&token) {
            if g.revoked {
                return unknown;
            }
            g.revoked = true;
            self.access
                .retain(|_, a| a.refresh.as_deref() != Some(token.as_str()));
            return OAuthReply::Json(200, json!({}));
        }
        if self.access.remove(&token).is_some() {
            return OAuthReply::Json(200, json!({}));
        }
        unknown
    }

    /// The device authorization endpoint (RFC 8628 §3.1).
    pub fn device_code(&mut self, body: &[u8]) -> OAuthReply {
        let reply = self.device_reply(body);
        self.styled(reply)
    }

    fn device_reply(&mut self, body: &[u8]) -> OAuthReply {
        let f = form(body);
        if f.get("client_id") != Some(&self.settings.client_id) {
            return error(401, "invalid_client", "The OAuth client was not found.");
        }
        let scope = f.get("scope").cloned().unwrap_or_default();
        let allowed = |s: &str| {
            self.settings
                .device_scopes
                .as_ref()
                .is_none_or(|ok| ok.iter().any(|a| a == s))
        };
        if scope.is_empty() || !scope.split(' ').all(allowed) {
            return error(400, "invalid_scope", "Some requested scopes were invalid.");
        }
        let device_code = self.new_secret(self.settings.prefixes.device);
        let user_code = format!(
            "{}-{}",
            random_suffix(3).to_uppercase(),
            random_suffix(3).to_uppercase()
        );
        self.device.insert(
            device_code.clone(),
            DeviceGrant {
                user_code: user_code.clone(),
                scope,
                approved: false,
                last_poll: None,
                expires: Instant::now() + self.settings.device_code_lifetime,
            },
        );
        let interval = self.settings.device_interval.as_secs().max(1);
        let mut v = json!({"device_code": device_code, "user_code": user_code,
                           "expires_in": self.settings.device_code_lifetime.as_secs(),
                           "interval": interval});
        v[self.settings.verification_field] = json!(self.settings.verification_url);
        OAuthReply::Json(200, v)
    }

    /// Whether an API request's `Authorization` header holds a live access token; a
    /// refusal is counted.
    pub fn bearer_ok(&mut self, authorization: Option<&str>) -> bool {
        let token = authorization.and_then(|v| v.strip_prefix("Bearer "));
        let ok = token
            .and_then(|t| self.access.get(t))
            .is_some_and(|g| g.expires > Instant::now());
        if !ok {
            self.stats.unauthorized += 1;
        }
        ok
    }

    /// What an API request's `Authorization` header holds, for services whose 401 says
    /// which (Dropbox: `invalid_access_token` or `expired_access_token`); a refusal is
    /// counted.
    pub fn bearer_state(&mut self, authorization: Option<&str>) -> BearerState {
        let Some(header) = authorization else {
            self.stats.unauthorized += 1;
            return BearerState::Missing;
        };
        let state = match header
            .strip_prefix("Bearer ")
            .and_then(|t| self.access.get(t))
        {
            None => BearerState::Unknown,
            Some(g) if g.expires <= Instant::now() => BearerState::Expired,
            Some(_) => BearerState::Live,
        };
        if state != BearerState::Live {
            self.stats.unauthorized += 1;
        }
        state
    }

    /// Revocation by the access token in `Authorization` (Dropbox's `auth/token/revoke`):
    /// the token, the refresh token it came from and every access token from that one
    /// stop working. False when the header held no live token.
    pub fn revoke_bearer(&mut self, authorization: Option<&str>) -> bool {
        if self.bearer_state(authorization) != BearerState::Live {
            return false;
        }
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        self.stats.revocations += 1;
        let refresh = self.access.remove(&token).and_then(|g| g.refresh);
        if let Some(rt) = refresh {
            if let Some(g) = self.refresh.get_mut(&rt) {
                g.revoked = true;
            }
            self.access
                .retain(|_, a| a.refresh.as_deref() != Some(rt.as_str()));
        }
        true
    }

    /// Tokens for a session that skipped the browser: (access, refresh).
    pub fn issue_tokens(&mut self, scope: &str) -> (String, String) {
        let v = self.issue(scope, None, true);
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        (s("access_token"), s("refresh_token"))
    }

    /// Every access token issued so far stops working (as if they all reached their hour).
    pub fn expire_all_access_tokens(&mut self) {
        let past = Instant::now() - Duration::from_secs(1);
        for g in self.access.values_mut() {
            g.expires = past;
        }
    }

    /// The user revoked the app: refresh tokens and their access tokens die.
    pub fn revoke_all_refresh_tokens(&mut self) {
        for g in self.refresh.values_mut() {
            g.revoked = true;
        }
        self.access.clear();
    }

    pub fn refresh_token_valid(&self, token: &str) -> bool {
        self.refresh.get(token).is_some_and(|g| !g.revoked)
    }

    /// The user entered `user_code` and consented.
    pub fn approve_device(&mut self, user_code: &str) {
        for g in self.device.values_mut() {
            if g.user_code == user_code {
                g.approved = true;
            }
        }
    }
}
