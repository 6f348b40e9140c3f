//! `[cluster]`: how a gateway (`ccx serve --nats`) or a worker (`ccx worker`) reaches NATS —
//! its address, credentials and TLS. Whoever can publish on ccx's subjects can run commands
//! on the workers, so these guard the cluster as the server token guards one server.
//!
//! ```toml
//! [cluster]
//! nats = "tls://nats.internal:4222"
//! creds_file = "/etc/ccx/ccx.creds"     # or user + password, token, nkey_file
//! tls_ca_file = "/etc/ccx/nats-ca.pem"
//! ```
//!
//! Read once at start: a reload does not reconnect.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Environment variable that supplies `[cluster] password` (it overrides the file's).
pub const NATS_PASSWORD_ENV: &str = "CCX_NATS_PASSWORD";
/// Environment variable that supplies `[cluster] token` (it overrides the file's).
pub const NATS_TOKEN_ENV: &str = "CCX_NATS_TOKEN";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    nats: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    creds_file: Option<PathBuf>,
    nkey_file: Option<PathBuf>,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    #[serde(default)]
    tls_required: bool,
}

/// How NATS authenticates this process: at most one way.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum NatsAuth {
    /// No credentials (a NATS that lets anyone in: loopback tests only).
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// A `.creds` file (a user JWT and its nkey seed: NATS decentralized auth).
    CredsFile(PathBuf),
    /// An nkey seed (`SU…`), read from `nkey_file`.
    Nkey(String),
}

impl std::fmt::Debug for NatsAuth {
    /// Names the kind, never a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => write!(f, "none"),
            NatsAuth::UserPassword { user, .. } => write!(f, "user {user} with a password"),
            NatsAuth::Token(_) => write!(f, "token"),
            NatsAuth::CredsFile(p) => write!(f, "creds file {}", p.display()),
            NatsAuth::Nkey(_) => write!(f, "nkey"),
        }
    }
}

/// `[cluster]`, validated: files are checked to be readable at load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterConfig {
    /// NATS address(es); `--nats` / `CCX_NATS` override it.
    pub nats: Option<String>,
    pub auth: NatsAuth,
    /// PEM root certificate(s) the NATS server's certificate must chain to.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key, for a NATS that verifies clients (mutual TLS).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Refuse a connection without TLS.
    pub tls_required: bool,
}

impl RawCluster {
    pub(super) fn validate(self, base: &Path) -> Result<ClusterConfig> {
        let file = |key: &str, p: Option<PathBuf>| -> Result<Option<PathBuf>> {
            let Some(p) = p else { return Ok(None) };
            let p = base.join(p);
            std::fs::File::open(&p)
                .with_context(|| format!("cluster.{key}: cannot read {}", p.display()))?;
            Ok(Some(p))
        };
        let creds = file("creds_file", self.creds_file)?;
        let nkey = match file("nkey_file", self.nkey_file)? {
            Some(p) => {
                let seed = std::fs::read_to_string(&p)
                    .with_context(|| format!("cluster.nkey_file: cannot read {}", p.display()))?;
                let seed = seed.trim().to_string();
                if !seed.starts_with('S') {
                    bail!(
                        "cluster.nkey_file: {} does not hold an nkey seed (`S…`)",
                        p.display()
                    );
                }
                Some(seed)
            }
            None => None,
        };
        let password = env_or(NATS_PASSWORD_ENV, self.password);
        let token = env_or(NATS_TOKEN_ENV, self.token);
        let mut ways = Vec::new();
        let auth = {
            if self.user.is_some() || password.is_some() {
                ways.push("user and password");
            }
            if token.is_some() {
                ways.push("token");
            }
            if creds.is_some() {
                ways.push("creds_file");
            }
            if nkey.is_some() {
                ways.push("nkey_file");
            }
            if ways.len() > 1 {
                bail!(
                    "cluster: {} are all set; NATS takes one way to authenticate",
                    ways.join(", ")
                );
            }
            match (self.user, password, token, creds, nkey) {
                (Some(user), Some(password), ..) => NatsAuth::UserPassword { user, password },
                (Some(_), None, ..) => bail!(
                    "cluster.user is set without a password (`password`, or {NATS_PASSWORD_ENV})"
                ),
                (None, Some(_), ..) => bail!("cluster.password is set without `user`"),
                (_, _, Some(t), ..) if t.is_empty() => bail!("cluster.token is empty"),
                (_, _, Some(t), ..) => NatsAuth::Token(t),
                (_, _, _, Some(p), _) => NatsAuth::CredsFile(p),
                (_, _, _, _, Some(seed)) => NatsAuth::Nkey(seed),
                _ => NatsAuth::None,
            }
        };
        let tls_client = match (
            file("tls_cert_file", self.tls_cert_file)?,
            file("tls_key_file", self.tls_key_file)?,
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("cluster.tls_cert_file and cluster.tls_key_file go together"),
        };
        Ok(ClusterConfig {
            nats: self.nats,
            auth,
            tls_ca: file("tls_ca_file", self.tls_ca_file)?,
            tls_client,
            tls_required: self.tls_required,
        })
    }
}

/// The variable's value when it is set and not empty, else `value`.
fn env_or(var: &str, value: Option<String>) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .or(value)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, NatsAuth};

    #[test]
    fn one_way_to_authenticate_and_readable_files() {
        let cfg = Config::parse(
            "[cluster]\nnats = \"nats://h:4222\"\nuser = \"ccx\"\npassword = \"pw\"\n",
            None,
        )
        .unwrap();
        assert_eq!(cfg.cluster.nats.as_deref(), Some("nats://h:4222"));
        assert!(matches!(cfg.cluster.auth, NatsAuth::UserPassword { .. }));
        assert!(!format!("{:?}", cfg.cluster).contains("pw"));
        let err = |text: &str| format!("{:#}", Config::parse(text, None).unwrap_err());
        assert!(
            err("[cluster]\nuser = \"a\"\npassword = \"b\"\ntoken = \"t\"\n").contains("one way")
        );
        assert!(err("[cluster]\nuser = \"a\"\n").contains("without a password"));
        assert!(err("[cluster]\ncreds_file = \"/nonexistent/x.creds\"\n").contains("cannot read"));
        assert!(err("[cluster]\ntls_cert_file = \"Cargo.toml\"\n").contains("go together"));
        assert!(err("[cluster]\nnkey_file = \"Cargo.toml\"\n").contains("nkey seed"));
        assert!(err("[cluster]\nport = 1\n").contains("port"));
    }
}
