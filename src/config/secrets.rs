//! Credentials in the config: `[[server.tokens]]` (several clients, each with its own token
//! and a label that goes into job records), and `[execution] secret_env` (variable names whose
//! values are masked wherever ccx stores or logs a request).

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The label of the single `server.token` (and of `CCX_TOKEN`).
pub const DEFAULT_TOKEN_LABEL: &str = "default";

/// What a masked value is replaced with.
pub const MASK: &str = "***";

/// Variable names masked when `[execution] secret_env` is not set (globs, any case).
pub const DEFAULT_SECRET_ENV: &[&str] = &[
    "*TOKEN*",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*CREDENTIAL*",
    "*_KEY",
    "*API_KEY*",
    "*PRIVATE_KEY*",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    label: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

/// One client's token and the label its jobs are recorded under.
#[derive(Clone, PartialEq, Eq)]
pub struct NamedToken {
    pub label: String,
    pub token: String,
}

impl std::fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NamedToken({}, ***)", self.label)
    }
}

/// Validates `[[server.tokens]]`; `token_file` paths are relative to `base`.
pub(super) fn tokens(raw: Vec<RawToken>, base: &Path) -> Result<Vec<NamedToken>> {
    let mut out: Vec<NamedToken> = Vec::new();
    for (i, t) in raw.into_iter().enumerate() {
        let at = format!("server.tokens[{i}]");
        if t.label.trim().is_empty() {
            bail!("{at}.label is empty");
        }
        let token = match (t.token, t.token_file) {
            (Some(_), Some(_)) => bail!("{at}: token and token_file are both set; use one"),
            (Some(t), None) => t,
            (None, Some(file)) => {
                let file = base.join(file);
                std::fs::read_to_string(&file)
                    .with_context(|| format!("{at}.token_file: cannot read {}", file.display()))?
                    .trim()
                    .to_string()
            }
            (None, None) => bail!("{at} (`{}`) has neither token nor token_file", t.label),
        };
        if token.is_empty() {
            bail!("{at} (`{}`): the token is empty", t.label);
        }
        if out.iter().any(|o| o.label == t.label) {
            bail!("{at}: label `{}` is used twice", t.label);
        }
        if out.iter().any(|o| o.token == token) {
            bail!("{at} (`{}`): the same token is given twice", t.label);
        }
        out.push(NamedToken {
            label: t.label,
            token,
        });
    }
    Ok(out)
}

/// Compiles `secret_env` globs (`*`, `?`, `[…]`; matched without regard to case), once, when
/// the config is read.
pub(super) fn secret_env(patterns: Vec<String>) -> Result<Vec<glob::Pattern>> {
    patterns
        .iter()
        .map(|p| {
            glob::Pattern::new(p)
                .with_context(|| format!("execution.secret_env: `{p}` is not a valid glob"))
        })
        .collect()
}

/// Whether `name` matches one of the `secret_env` globs.
pub fn is_secret(patterns: &[glob::Pattern], name: &str) -> bool {
    let opts = glob::MatchOptions {
        case_sensitive: false,
        ..Default::default()
    };
    patterns.iter().any(|p| p.matches_with(name, opts))
}

/// `env` with the values of secret names replaced by [`MASK`].
pub fn mask_env(
    patterns: &[glob::Pattern],
    env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let v = if is_secret(patterns, k) {
                MASK.to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_masked_by_glob_in_any_case() {
        let pats =
            super::secret_env(DEFAULT_SECRET_ENV.iter().map(|s| s.to_string()).collect()).unwrap();
        let env: BTreeMap<String, String> = [
            ("GITHUB_TOKEN", "ghp_x"),
            ("aws_secret_access_key", "y"),
            ("OPENAI_API_KEY", "z"),
            ("PATH", "/bin"),
            ("KEYBOARD", "us"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let masked = mask_env(&pats, &env);
        assert_eq!(masked["GITHUB_TOKEN"], MASK);
        assert_eq!(masked["aws_secret_access_key"], MASK);
        assert_eq!(masked["OPENAI_API_KEY"], MASK);
        assert_eq!(masked["PATH"], "/bin");
        assert_eq!(masked["KEYBOARD"], "us");
    }
}
