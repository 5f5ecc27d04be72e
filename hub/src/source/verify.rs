//! Signature verification of commits and tags, with SSH (SSHSIG, as `git` writes with
//! `gpg.format=ssh`) and OpenPGP keys, in pure Rust.
//!
//! A revision is accepted only if its signature verifies against one of the trusted keys. Trust
//! comes from the configured key list alone: no keyring, no web of trust, no `allowed_signers`
//! principals.

use std::fmt;
use std::io::Cursor;

use git2::{ObjectType, Oid, Repository};
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

use super::Error;

/// The SSHSIG namespace `git` signs commits and tags in.
const GIT_NAMESPACE: &str = "git";
const SSH_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const PGP_BEGIN: &str = "-----BEGIN PGP SIGNATURE-----";
const PGP_KEY_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const PGP_KEY_END: &str = "-----END PGP PUBLIC KEY BLOCK-----";

/// What must carry a valid signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    /// The commit the reference resolves to.
    Commit,
    /// The annotated tag the reference names (for `Tag` and `Semver` references only).
    Tag,
}

/// A key whose signatures are trusted.
#[derive(Clone)]
pub enum TrustedKey {
    /// An SSH public key (as in `authorized_keys` / `*.pub`).
    Ssh(ssh_key::PublicKey),
    /// An OpenPGP public key (its primary key and subkeys).
    OpenPgp(Box<SignedPublicKey>),
}

impl TrustedKey {
    /// A short, stable name: the SSH `SHA256:` fingerprint, or the OpenPGP fingerprint in hex.
    pub fn id(&self) -> String {
        match self {
            TrustedKey::Ssh(k) => format!(
                "{} {}",
                k.algorithm().as_str(),
                k.fingerprint(ssh_key::HashAlg::Sha256)
            ),
            TrustedKey::OpenPgp(k) => format!("openpgp {:X}", k.fingerprint()),
        }
    }
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrustedKey").field(&self.id()).finish()
    }
}

/// Signature verification settings of a source.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Commit or tag signatures.
    pub mode: VerifyMode,
    /// The trusted keys; a signature by any of them is accepted.
    pub keys: Vec<TrustedKey>,
}

impl Verification {
    /// Parses trusted keys from text holding any mix of SSH public key lines (`ssh-ed25519 AAAA…
    /// comment`; blank lines and `#` comments skipped) and ASCII-armored OpenPGP public key
    /// blocks. Errors name the offending line or block.
    pub fn parse(mode: VerifyMode, text: &str) -> Result<Self, Error> {
        let mut keys = Vec::new();
        let mut lines = text.lines().enumerate();
        while let Some((i, line)) = lines.next() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line == PGP_KEY_BEGIN {
                let mut block = String::from(line);
                block.push('\n');
                let mut closed = false;
                for (_, l) in lines.by_ref() {
                    block.push_str(l.trim_end());
                    block.push('\n');
                    if l.trim() == PGP_KEY_END {
                        closed = true;
                        break;
                    }
                }
                let what = format!("OpenPGP key block starting on line {}", i + 1);
                if !closed {
                    return Err(Error::InvalidKey {
                        what,
                        reason: format!("missing {PGP_KEY_END}"),
                    });
                }
                let (parsed, _) = SignedPublicKey::from_armor_many(Cursor::new(block.into_bytes()))
                    .map_err(|e| Error::InvalidKey {
                        what: what.clone(),
                        reason: e.to_string(),
                    })?;
                for key in parsed {
                    let key = key.map_err(|e| Error::InvalidKey {
                        what: what.clone(),
                        reason: e.to_string(),
                    })?;
                    keys.push(TrustedKey::OpenPgp(Box::new(key)));
                }
                continue;
            }
            let key = ssh_key::PublicKey::from_openssh(line).map_err(|e| Error::InvalidKey {
                what: format!("line {}", i + 1),
                reason: e.to_string(),
            })?;
            keys.push(TrustedKey::Ssh(key));
        }
        if keys.is_empty() {
            return Err(Error::InvalidKey {
                what: "key list".into(),
                reason: "no trusted keys given".into(),
            });
        }
        Ok(Self { mode, keys })
    }
}

/// Verifies the signature of `commit`; returns the id of the key that made it, or why not.
pub(crate) fn verify_commit(
    repo: &Repository,
    commit: Oid,
    keys: &[TrustedKey],
) -> Result<String, String> {
    let (signature, payload) = match repo.extract_signature(&commit, None) {
        Ok(pair) => pair,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err(format!("commit {commit} is not signed"));
        }
        Err(e) => return Err(format!("reading the signature of commit {commit}: {e}")),
    };
    let signature = String::from_utf8_lossy(&signature).into_owned();
    verify_payload(&signature, &payload, keys).map_err(|r| format!("commit {commit}: {r}"))
}

/// Verifies the annotated tag object `tag` (named `name`); returns the signing key's id or why
/// not. A lightweight tag (pointing straight at a commit) has no signature and is refused.
pub(crate) fn verify_tag(
    repo: &Repository,
    tag: Oid,
    name: &str,
    keys: &[TrustedKey],
) -> Result<String, String> {
    let odb = repo.odb().map_err(|e| format!("reading tag {name}: {e}"))?;
    let object = odb
        .read(tag)
        .map_err(|e| format!("reading tag {name}: {e}"))?;
    if object.kind() != ObjectType::Tag {
        return Err(format!(
            "tag {name} is a lightweight tag, which carries no signature"
        ));
    }
    let data = object.data();
    let text = String::from_utf8_lossy(data);
    // The signature is appended to the tag message; the payload is everything before it.
    let start = [SSH_BEGIN, PGP_BEGIN]
        .iter()
        .filter_map(|marker| text.rfind(&format!("\n{marker}")).map(|p| p + 1))
        .max()
        .or_else(|| {
            [SSH_BEGIN, PGP_BEGIN]
                .iter()
                .find(|m| text.starts_with(**m))
                .map(|_| 0)
        });
    let Some(start) = start else {
        return Err(format!("tag {name} is not signed"));
    };
    verify_payload(&text[start..], &data[..start], keys).map_err(|r| format!("tag {name}: {r}"))
}

fn verify_payload(signature: &str, payload: &[u8], keys: &[TrustedKey]) -> Result<String, String> {
    if signature.trim_start().starts_with(SSH_BEGIN) {
        verify_ssh(signature, payload, keys)
    } else if signature.trim_start().starts_with(PGP_BEGIN) {
        verify_pgp(signature, payload, keys)
    } else {
        Err("the signature is neither an SSH nor an OpenPGP signature".into())
    }
}

fn verify_ssh(signature: &str, payload: &[u8], keys: &[TrustedKey]) -> Result<String, String> {
    let sig = ssh_key::SshSig::from_pem(signature.trim())
        .map_err(|e| format!("unreadable SSH signature: {e}"))?;
    let signer = sig.public_key().fingerprint(ssh_key::HashAlg::Sha256);
    let key = keys
        .iter()
        .find_map(|k| match k {
            TrustedKey::Ssh(pk) if pk.key_data() == sig.public_key() => Some(pk),
            _ => None,
        })
        .ok_or_else(|| format!("signed by SSH key {signer}, which is not a trusted key"))?;
    key.verify(GIT_NAMESPACE, payload, &sig).map_err(|e| {
        format!("the SSH signature by {signer} does not verify ({e}); the content was altered or the signature forged")
    })?;
    Ok(TrustedKey::Ssh(key.clone()).id())
}

fn verify_pgp(signature: &str, payload: &[u8], keys: &[TrustedKey]) -> Result<String, String> {
    let (sig, _) = DetachedSignature::from_string(signature)
        .map_err(|e| format!("unreadable OpenPGP signature: {e}"))?;
    let issuers: Vec<String> = sig
        .signature
        .issuer_fingerprint()
        .iter()
        .map(|f| format!("{f:X}"))
        .chain(
            sig.signature
                .issuer_key_id()
                .iter()
                .map(|k| hex(k.as_ref())),
        )
        .collect();
    let is_issuer = |d: &dyn KeyDetails| {
        issuers.iter().any(|i| {
            i.eq_ignore_ascii_case(&format!("{:X}", d.fingerprint()))
                || i.eq_ignore_ascii_case(&hex(d.legacy_key_id().as_ref()))
        })
    };
    // Without issuer information every key is tried.
    let candidate = |d: &dyn KeyDetails| issuers.is_empty() || is_issuer(d);
    let mut matched_issuer = false;
    for key in keys {
        let TrustedKey::OpenPgp(primary) = key else {
            continue;
        };
        if candidate(&**primary) {
            matched_issuer |= is_issuer(&**primary);
            if sig.verify(&**primary, payload).is_ok() {
                return Ok(key.id());
            }
        }
        for sub in &primary.public_subkeys {
            if candidate(sub) {
                matched_issuer |= is_issuer(sub);
                if sig.verify(sub, payload).is_ok() {
                    return Ok(key.id());
                }
            }
        }
    }
    let who = issuers
        .first()
        .cloned()
        .unwrap_or_else(|| "an unnamed key".into());
    if matched_issuer {
        Err(format!(
            "the OpenPGP signature by {who} does not verify; the content was altered or the signature forged"
        ))
    } else {
        Err(format!(
            "signed by OpenPGP key {who}, which is not a trusted key"
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
