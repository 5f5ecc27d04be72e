//! Strict SSH host key checking against OpenSSH `known_hosts` data.
//!
//! A host is accepted only when a non-revoked entry whose host pattern matches it carries exactly
//! the key the server presented. Hashed host names (`|1|salt|hash`, as `ssh-keyscan -H` writes),
//! `[host]:port` entries, `*`/`?` wildcards and `!` negations are understood. `@cert-authority`
//! entries are not (host certificates are refused as unknown keys).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Digest as _;
use ssh_key::known_hosts::{Entry, HostPatterns, Marker};

use super::Error;

/// Parsed `known_hosts` data.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

/// Why a host key was refused. `Display` names the host, the key type and its SHA-256
/// fingerprint, as `ssh` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// No entry matches the host at all.
    Unknown {
        /// The host, as `host` or `[host]:port`.
        host: String,
        /// The presented key's type, e.g. `ssh-ed25519`.
        key_type: String,
        /// The presented key's fingerprint, `SHA256:…`.
        fingerprint: String,
    },
    /// Entries match the host, but none with the presented key.
    Mismatch {
        /// The host.
        host: String,
        /// The presented key's type.
        key_type: String,
        /// The presented key's fingerprint.
        fingerprint: String,
    },
    /// The presented key is marked `@revoked`.
    Revoked {
        /// The host.
        host: String,
        /// The presented key's type.
        key_type: String,
        /// The presented key's fingerprint.
        fingerprint: String,
    },
    /// The server did not present a raw host key libgit2 could hand over.
    Missing {
        /// The host.
        host: String,
    },
}

impl fmt::Display for HostKeyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKeyCheck::Unknown {
                host,
                key_type,
                fingerprint,
            } => write!(
                f,
                "host {host} is not in known_hosts (it presented {key_type} key {fingerprint})"
            ),
            HostKeyCheck::Mismatch {
                host,
                key_type,
                fingerprint,
            } => write!(
                f,
                "host {host} presented {key_type} key {fingerprint}, which does not match its known_hosts entries"
            ),
            HostKeyCheck::Revoked {
                host,
                key_type,
                fingerprint,
            } => write!(
                f,
                "host {host} presented {key_type} key {fingerprint}, which known_hosts marks as revoked"
            ),
            HostKeyCheck::Missing { host } => {
                write!(f, "host {host} presented no usable host key")
            }
        }
    }
}

impl KnownHosts {
    /// Parses `known_hosts` text. Blank lines and `#` comments are skipped; any other line that
    /// does not parse is an error naming its line number.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = Entry::from_str(line).map_err(|e| Error::KnownHosts {
                line: i + 1,
                reason: e.to_string(),
            })?;
            entries.push(entry);
        }
        Ok(Self { entries })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks the key `host:port` presented, given in SSH wire encoding (what libgit2 hands over
    /// and what the base64 field of a `known_hosts` line decodes to).
    pub fn check(&self, host: &str, port: u16, key: &[u8]) -> Result<(), HostKeyCheck> {
        let name = if port == 22 {
            host.to_string()
        } else {
            format!("[{host}]:{port}")
        };
        let key_type = wire_key_type(key).unwrap_or_else(|| "unknown".into());
        let fingerprint = fingerprint(key);
        let mut host_known = false;
        let mut accepted = false;
        for entry in &self.entries {
            if !host_matches(entry.host_patterns(), &name) {
                continue;
            }
            let same_key = entry
                .public_key()
                .to_bytes()
                .is_ok_and(|bytes| bytes == key);
            match entry.marker() {
                Some(Marker::Revoked) if same_key => {
                    return Err(HostKeyCheck::Revoked {
                        host: name,
                        key_type,
                        fingerprint,
                    });
                }
                Some(_) => {}
                None => {
                    host_known = true;
                    accepted |= same_key;
                }
            }
        }
        if accepted {
            Ok(())
        } else if host_known {
            Err(HostKeyCheck::Mismatch {
                host: name,
                key_type,
                fingerprint,
            })
        } else {
            Err(HostKeyCheck::Unknown {
                host: name,
                key_type,
                fingerprint,
            })
        }
    }
}

/// `SHA256:<base64 without padding>` of a wire-encoded key, as `ssh-keygen -l` prints it.
pub(crate) fn fingerprint(key: &[u8]) -> String {
    let digest = sha2::Sha256::digest(key);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// The algorithm name at the start of a wire-encoded key (a length-prefixed string).
fn wire_key_type(key: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let name = key.get(4..4 + len)?;
    String::from_utf8(name.to_vec()).ok()
}

fn host_matches(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let mut matched = false;
            for pattern in list {
                if let Some(negated) = pattern.strip_prefix('!') {
                    if glob(negated, name) {
                        return false;
                    }
                } else if glob(pattern, name) {
                    matched = true;
                }
            }
            matched
        }
    }
}

/// OpenSSH host pattern matching: `*` any run, `?` one character, case-insensitive.
fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let n: Vec<char> = name.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generates a host key with `ssh-keygen` and returns (public key line, wire bytes).
    fn keygen(dir: &std::path::Path, name: &str, kind: &str) -> (String, Vec<u8>) {
        let path = dir.join(name);
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-C", "", "-f"])
            .arg(&path)
            .status()
            .expect("running ssh-keygen");
        assert!(status.success());
        let line = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        let b64 = line.split_whitespace().nth(1).unwrap();
        let wire = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        (line.trim().to_string(), wire)
    }

    fn keygen_fingerprint(dir: &std::path::Path, name: &str) -> String {
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(dir.join(format!("{name}.pub")))
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }

    #[test]
    fn accepts_listed_key_refuses_unknown_and_mismatched() {
        let dir = tempfile::tempdir().unwrap();
        let (good_line, good) = keygen(dir.path(), "good", "ed25519");
        let (_, other) = keygen(dir.path(), "other", "ecdsa");
        let (rsa_line, rsa) = keygen(dir.path(), "rsa", "rsa");
        let known = KnownHosts::parse(&format!(
            "# comment\n\ngit.example.com,10.0.0.1 {good_line}\n[git.example.com]:2222 {rsa_line}\n"
        ))
        .unwrap();
        assert_eq!(known.len(), 2);

        assert_eq!(known.check("git.example.com", 22, &good), Ok(()));
        assert_eq!(known.check("GIT.example.com", 22, &good), Ok(()));
        assert_eq!(known.check("10.0.0.1", 22, &good), Ok(()));
        assert_eq!(known.check("git.example.com", 2222, &rsa), Ok(()));

        // The ed25519 entry is for port 22 only.
        let err = known.check("git.example.com", 2222, &good).unwrap_err();
        assert!(matches!(err, HostKeyCheck::Mismatch { .. }), "{err}");

        let err = known.check("git.example.com", 22, &other).unwrap_err();
        let fp = keygen_fingerprint(dir.path(), "other");
        assert_eq!(
            err.to_string(),
            format!(
                "host git.example.com presented ecdsa-sha2-nistp256 key {fp}, which does not match its known_hosts entries"
            )
        );

        let err = known.check("evil.example.com", 22, &good).unwrap_err();
        let fp = keygen_fingerprint(dir.path(), "good");
        assert_eq!(
            err.to_string(),
            format!(
                "host evil.example.com is not in known_hosts (it presented ssh-ed25519 key {fp})"
            )
        );
    }

    #[test]
    fn hashed_wildcard_negated_and_revoked_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (line, key) = keygen(dir.path(), "k", "ed25519");
        let b64_and_type: Vec<&str> = line.split_whitespace().collect();
        let key_part = format!("{} {}", b64_and_type[0], b64_and_type[1]);

        // A hashed entry as `ssh-keygen -H` writes it.
        let kh_path = dir.path().join("known_hosts");
        std::fs::write(&kh_path, format!("hashed.example.com {key_part}\n")).unwrap();
        let status = std::process::Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&kh_path)
            .output()
            .unwrap();
        assert!(status.status.success());
        let hashed = std::fs::read_to_string(&kh_path).unwrap();
        assert!(hashed.starts_with("|1|"), "{hashed}");
        let known = KnownHosts::parse(&hashed).unwrap();
        assert_eq!(known.check("hashed.example.com", 22, &key), Ok(()));
        assert!(known.check("other.example.com", 22, &key).is_err());

        let known = KnownHosts::parse(&format!(
            "*.example.com,!bad.example.com {key_part}\n@revoked revoked.example.com {key_part}\nrevoked.example.com {key_part}\n"
        ))
        .unwrap();
        assert_eq!(known.check("a.example.com", 22, &key), Ok(()));
        assert!(matches!(
            known.check("bad.example.com", 22, &key),
            Err(HostKeyCheck::Unknown { .. })
        ));
        assert!(matches!(
            known.check("revoked.example.com", 22, &key),
            Err(HostKeyCheck::Revoked { .. })
        ));
    }

    #[test]
    fn bad_line_is_named() {
        let err = KnownHosts::parse("# ok\nhost ssh-ed25519 not-base64!!\n").unwrap_err();
        assert!(err.to_string().starts_with("known_hosts line 2: "), "{err}");
    }

    #[test]
    fn glob_matches_like_openssh() {
        assert!(glob("*.example.com", "a.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("git?.example.com", "git1.example.com"));
        assert!(glob("*", "anything"));
        assert!(!glob("a*b", "acbd"));
    }
}
