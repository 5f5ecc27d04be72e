//! Credentials for Git remotes, kept out of logs.

use std::fmt;

/// A secret string (password, token, private key). `Debug` and `Display` print `***`; read it
/// with [`Secret::expose`] only where it is handed to libgit2.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

/// How to authenticate to a remote.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// Anonymous access (public repositories, local paths).
    #[default]
    None,
    /// HTTP(S) basic authentication. Tokens of GitHub, GitLab, Gitea and others go in `password`
    /// (with any non-empty username, e.g. `git` or `x-access-token`).
    Basic {
        /// The user name.
        username: String,
        /// The password or access token.
        password: Secret,
    },
    /// HTTP(S) bearer token, sent as `Authorization: Bearer <token>` on every request.
    Bearer {
        /// The token.
        token: Secret,
    },
    /// SSH public-key authentication with strict host key checking.
    SshKey {
        /// The SSH user; when empty, the user in the URL, else `git`.
        username: String,
        /// The private key, in OpenSSH or PEM format.
        private_key: Secret,
        /// The key's passphrase, if it is encrypted.
        passphrase: Option<Secret>,
        /// The accepted host keys, in OpenSSH `known_hosts` format. A host not listed is refused.
        known_hosts: String,
    },
}

impl Auth {
    /// The secret strings this auth carries, so they can be scrubbed from remote messages.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        match self {
            Auth::None => vec![],
            Auth::Basic { password, .. } => vec![password.expose()],
            Auth::Bearer { token } => vec![token.expose()],
            Auth::SshKey {
                private_key,
                passphrase,
                ..
            } => {
                let mut v = vec![private_key.expose()];
                if let Some(p) = passphrase {
                    v.push(p.expose());
                }
                v
            }
        }
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect()
    }
}

/// Removes the password from a URL's user-info (`https://user:pw@host/x` becomes
/// `https://user:***@host/x`), so the URL can appear in logs, errors and status.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_string(),
    }
}

/// The password embedded in a URL's user-info, if any (to scrub it from messages).
pub(crate) fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// Where an SSH remote lives: user, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

/// Parses `ssh://[user@]host[:port]/path` and scp-like `[user@]host:path`. `None` for other URLs.
pub(crate) fn ssh_target(url: &str) -> Option<SshTarget> {
    if let Some(rest) = url
        .strip_prefix("ssh://")
        .or_else(|| url.strip_prefix("git+ssh://"))
        .or_else(|| url.strip_prefix("ssh+git://"))
    {
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
            // [v6addr]:port or [v6addr]
            let (h, after) = stripped.split_once(']')?;
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            (h.to_string(), port.unwrap_or(22))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (hostport.to_string(), 22),
            }
        };
        return Some(SshTarget { user, host, port });
    }
    if url.contains("://") || url.starts_with('/') || url.starts_with('.') {
        return None;
    }
    // scp-like syntax: a colon before any slash.
    let colon = url.find(':')?;
    if url[..colon].contains('/') {
        return None;
    }
    let authority = &url[..colon];
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h.to_string()),
        None => (None, authority.to_string()),
    };
    Some(SshTarget {
        user,
        host,
        port: 22,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let auth = Auth::Basic {
            username: "bot".into(),
            password: Secret::new("hunter2"),
        };
        let shown = format!("{auth:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        let ssh = Auth::SshKey {
            username: String::new(),
            private_key: Secret::new("-----BEGIN OPENSSH PRIVATE KEY-----xyz"),
            passphrase: Some(Secret::new("pp")),
            known_hosts: String::new(),
        };
        let shown = format!("{ssh:?}");
        assert!(
            !shown.contains("BEGIN") && !shown.contains("\"pp\""),
            "{shown}"
        );
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("https://bot:tok3n@git.example.com/org/repo.git"),
            "https://bot:***@git.example.com/org/repo.git"
        );
        assert_eq!(
            redact_url("https://git.example.com/a@b"),
            "https://git.example.com/a@b"
        );
        assert_eq!(
            redact_url("git@github.com:org/repo"),
            "git@github.com:org/repo"
        );
        assert_eq!(
            url_password("https://bot:tok3n@git.example.com/x"),
            Some("tok3n")
        );
        assert_eq!(url_password("https://bot@git.example.com/x"), None);
    }

    #[test]
    fn ssh_targets_parse() {
        assert_eq!(
            ssh_target("ssh://git@example.com:2222/org/repo.git"),
            Some(SshTarget {
                user: Some("git".into()),
                host: "example.com".into(),
                port: 2222
            })
        );
        assert_eq!(
            ssh_target("git@example.com:org/repo.git"),
            Some(SshTarget {
                user: Some("git".into()),
                host: "example.com".into(),
                port: 22
            })
        );
        assert_eq!(ssh_target("https://example.com/x"), None);
        assert_eq!(ssh_target("/srv/git/repo"), None);
        assert_eq!(ssh_target("./a:b"), None);
    }
}
