//! Reaching the server: TCP, then TLS as configured (implicit TLS, STARTTLS, or none on
//! loopback only), then LOGIN with the password from a 0600 file or a command.
//!
//! The session type hides which of those it is (`Box<dyn Stream>`), so the provider has
//! one `Session` whatever the transport.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::accounts::BearerTokens;
use crate::provider::{ProviderError, ProviderResult};
use crate::secrets::Secret;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (port 993).
    #[default]
    Implicit,
    /// Plain text until `STARTTLS` (port 143); the password is sent only after TLS is up.
    Starttls,
    /// No TLS at all: refused unless the server is on loopback (a password must never
    /// cross a network in clear).
    None,
}

/// How the account logs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// LOGIN with the password from `password_file` or `password_command`.
    #[default]
    Password,
    /// SASL XOAUTH2 with an access token of the connection's OAuth login (`cloudmount
    /// login imap --name …`), from Google or Microsoft (`oauth_provider`).
    Xoauth2,
}

/// One IMAP account, as written under `[connections.settings]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    pub host: String,
    /// Default: 993 with implicit TLS, 143 otherwise.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: TlsMode,
    pub user: String,
    #[serde(default)]
    pub auth: AuthMethod,
    /// With `auth = "xoauth2"`: "google" or "microsoft" (whose endpoints and IMAP scope the
    /// login uses).
    #[serde(default)]
    pub oauth_provider: Option<String>,
    /// A file only its owner may read, holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A command printing the password (`pass show mail`); used when there is no file.
    #[serde(default)]
    pub password_command: Option<String>,
    /// PEM certificates trusted besides the system's (a server with its own CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Show each message's attachments in a `<message>.d/` folder beside it.
    #[serde(default = "yes")]
    pub attachments: bool,
    /// Wait for new mail in INBOX with IDLE between polls (when the server offers it).
    #[serde(default = "yes")]
    pub idle: bool,
    /// A connection unused for this many seconds is checked with NOOP before use (and
    /// made again if it went away): servers log idle clients out, NATs forget idle flows.
    #[serde(default = "default_idle_check")]
    pub idle_check_secs: u64,
}

fn default_idle_check() -> u64 {
    60
}

fn yes() -> bool {
    true
}

impl fmt::Debug for ImapConfig {
    // Written out so that adding a secret field later cannot leak it into a log by derive.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapConfig")
            .field("host", &self.host)
            .field("port", &self.port())
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("auth", &self.auth)
            .field("oauth_provider", &self.oauth_provider)
            .field("password_file", &self.password_file)
            .field(
                "password_command",
                &self.password_command.as_ref().map(|_| "…"),
            )
            .field("ca_file", &self.ca_file)
            .field("attachments", &self.attachments)
            .field("idle", &self.idle)
            .field("idle_check_secs", &self.idle_check_secs)
            .finish()
    }
}

impl ImapConfig {
    /// A loopback account without TLS (what the tests and a local Dovecot use).
    pub fn loopback(port: u16, user: &str, password_file: PathBuf) -> Self {
        ImapConfig {
            host: "127.0.0.1".into(),
            port: Some(port),
            tls: TlsMode::None,
            user: user.into(),
            auth: AuthMethod::Password,
            oauth_provider: None,
            password_file: Some(password_file),
            password_command: None,
            ca_file: None,
            attachments: true,
            idle: true,
            idle_check_secs: default_idle_check(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 993,
            TlsMode::Starttls | TlsMode::None => 143,
        })
    }

    fn is_loopback(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Whatever carries the IMAP bytes: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug> Stream for T {}

pub type Session = async_imap::Session<Box<dyn Stream>>;

/// What a connection needs, checked once when the provider is made.
pub struct Connector {
    cfg: ImapConfig,
    tls: Option<tokio_rustls::TlsConnector>,
    /// With XOAUTH2: the login's access tokens.
    tokens: Option<Arc<dyn BearerTokens>>,
}

/// SASL XOAUTH2 (Google's and Microsoft's IMAP): the first answer is
/// `user=<user>^Aauth=Bearer <token>^A^A`; a failure comes as a challenge carrying a JSON
/// error, which is answered with an empty line so the server ends with NO.
struct Xoauth2 {
    initial: Option<String>,
}

impl async_imap::Authenticator for Xoauth2 {
    type Response = String;

    fn process(&mut self, _challenge: &[u8]) -> String {
        self.initial.take().unwrap_or_default()
    }
}

pub fn io_error(what: &str, e: impl fmt::Display) -> ProviderError {
    ProviderError::Transient(format!("IMAP {what}: {e}"))
}

impl Connector {
    pub fn new(cfg: ImapConfig, tokens: Option<Arc<dyn BearerTokens>>) -> ProviderResult<Self> {
        match cfg.auth {
            AuthMethod::Password
                if cfg.password_file.is_none() && cfg.password_command.is_none() =>
            {
                return Err(ProviderError::Auth(
                    "IMAP: set password_file or password_command (or auth = \"xoauth2\")".into(),
                ))
            }
            AuthMethod::Xoauth2 if tokens.is_none() => {
                return Err(ProviderError::Auth(
                    "IMAP with XOAUTH2 needs a login: run `cloudmount login imap --name …`".into(),
                ))
            }
            _ => {}
        }
        let tls = match cfg.tls {
            TlsMode::None if !cfg.is_loopback() => {
                return Err(ProviderError::Unsupported(format!(
                    "IMAP to {}: tls = \"none\" is only for a server on this machine (a \
                     password must not cross a network in clear); use \"implicit\" or \
                     \"starttls\"",
                    cfg.host
                )))
            }
            TlsMode::None => None,
            TlsMode::Implicit | TlsMode::Starttls => Some(tls_connector(&cfg)?),
        };
        Ok(Connector { cfg, tls, tokens })
    }

    pub fn config(&self) -> &ImapConfig {
        &self.cfg
    }

    /// Read each time a connection is made: a password manager's command may hand out a
    /// changed password, and the secret is not kept in memory longer than needed. On a
    /// blocking thread: the command may wait (a pinentry prompt).
    async fn password(&self) -> ProviderResult<Secret> {
        let (file, cmd) = (
            self.cfg.password_file.clone(),
            self.cfg.password_command.clone(),
        );
        let read = tokio::task::spawn_blocking(move || match (file, cmd) {
            (Some(file), _) => crate::secrets::read_secret_file(&file),
            (None, Some(cmd)) => crate::secrets::run_secret_command(&cmd),
            (None, None) => unreachable!("checked in Connector::new"),
        })
        .await
        .map_err(|e| ProviderError::Auth(format!("IMAP password: {e}")))?;
        read.map_err(|e| ProviderError::Auth(format!("IMAP password: {e}")))
    }

    async fn wrap_tls(&self, tcp: TcpStream) -> ProviderResult<Box<dyn Stream>> {
        let tls = self.tls.as_ref().expect("TLS configured");
        let host = self.cfg.host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| ProviderError::Unsupported(format!("IMAP host {host:?}: {e}")))?;
        let stream = tls.connect(name, tcp).await.map_err(|e| {
            // A certificate the system does not trust is not going to change by retrying.
            if e.to_string().contains("certificate") {
                ProviderError::Auth(format!("IMAP TLS with {host}: {e}"))
            } else {
                io_error("TLS handshake", e)
            }
        })?;
        Ok(Box::new(stream))
    }

    /// A logged-in session.
    pub async fn connect(&self) -> ProviderResult<Session> {
        let port = self.cfg.port();
        let tcp = TcpStream::connect((self.cfg.host.as_str(), port))
            .await
            .map_err(|e| io_error(&format!("connect to {}:{port}", self.cfg.host), e))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match self.cfg.tls {
            TlsMode::Implicit => self.wrap_tls(tcp).await?,
            TlsMode::None => Box::new(tcp),
            TlsMode::Starttls => {
                let mut plain = async_imap::Client::new(tcp);
                plain
                    .read_response()
                    .await
                    .map_err(|e| io_error("greeting", e))?;
                plain
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .map_err(|e| {
                        ProviderError::Unsupported(format!(
                            "IMAP {}: STARTTLS refused ({e}); the password is not sent in clear",
                            self.cfg.host
                        ))
                    })?;
                self.wrap_tls(plain.into_inner()).await?
            }
        };
        let mut client = async_imap::Client::new(stream);
        if self.cfg.tls != TlsMode::Starttls {
            // After STARTTLS there is no second greeting (RFC 3501 §6.2.1).
            client
                .read_response()
                .await
                .map_err(|e| io_error("greeting", e))?;
        }
        match self.cfg.auth {
            AuthMethod::Password => {
                let password = self.password().await?;
                client
                    .login(&self.cfg.user, password.expose())
                    .await
                    .map_err(|(e, _)| self.login_error(e))
            }
            AuthMethod::Xoauth2 => self.xoauth2(client).await,
        }
    }

    fn login_error(&self, e: async_imap::error::Error) -> ProviderError {
        match e {
            async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_) => {
                ProviderError::Auth(format!("IMAP login as {}: {e}", self.cfg.user))
            }
            e => io_error("login", e),
        }
    }

    /// AUTHENTICATE XOAUTH2 with the current access token; refused, once more with a
    /// fresh one (the token may have expired early or been revoked).
    async fn xoauth2(
        &self,
        client: async_imap::Client<Box<dyn Stream>>,
    ) -> ProviderResult<Session> {
        let tokens = self.tokens.as_ref().expect("checked in Connector::new");
        let auth_error = |e: crate::accounts::AccountError| ProviderError::from(e);
        let token = tokens.access_token().await.map_err(auth_error)?;
        let answer = |token: &Secret| Xoauth2 {
            initial: Some(format!(
                "user={}\x01auth=Bearer {}\x01\x01",
                self.cfg.user,
                token.expose()
            )),
        };
        let client = match client.authenticate("XOAUTH2", answer(&token)).await {
            Ok(session) => return Ok(session),
            Err((async_imap::error::Error::No(_), client)) => client,
            Err((e, _)) => return Err(self.login_error(e)),
        };
        let fresh = tokens.token_rejected(&token).await.map_err(auth_error)?;
        client
            .authenticate("XOAUTH2", answer(&fresh))
            .await
            .map_err(|(e, _)| self.login_error(e))
    }
}

fn tls_connector(cfg: &ImapConfig) -> ProviderResult<tokio_rustls::TlsConnector> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = &cfg.ca_file {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(file)
            .map_err(|e| ProviderError::Unsupported(format!("IMAP ca_file {file:?}: {e}")))?;
        for cert in certs {
            let cert = cert
                .map_err(|e| ProviderError::Unsupported(format!("IMAP ca_file {file:?}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ProviderError::Unsupported(format!("IMAP ca_file {file:?}: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(ProviderError::Unsupported(
            "IMAP: no trusted certificates (install ca-certificates, or set ca_file)".into(),
        ));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProviderError::Unsupported(format!("IMAP TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
