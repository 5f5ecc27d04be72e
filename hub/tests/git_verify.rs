//! Commit and tag signature verification against repositories signed by the real `git`, with
//! SSH keys (`ssh-keygen`) and OpenPGP keys (`gpg`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use flotilla_hub::source::{
    Error, FailureReason, GitCache, GitRef, GitSource, PollOptions, SourcePoller, SourceStatus,
    Verification, VerifyMode,
};
use flotilla_render::{RelPath, Tree};
use support::Upstream;
use tokio::sync::watch;

struct SshKey {
    private: PathBuf,
    public: String,
    fingerprint: String,
}

fn ssh_key(dir: &Path, name: &str) -> SshKey {
    let private = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&private)
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(private.with_extension("pub"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    SshKey {
        private,
        public,
        fingerprint,
    }
}

fn ssh_sign_args(key: &SshKey) -> Vec<String> {
    vec![
        "-c".into(),
        "gpg.format=ssh".into(),
        "-c".into(),
        format!("user.signingkey={}", key.private.display()),
    ]
}

/// Commits signed with an SSH key.
fn ssh_commit(up: &Upstream, key: &SshKey, message: &str) -> String {
    up.git(&["add", "-A"]);
    let mut args: Vec<String> = ssh_sign_args(key);
    args.extend(["commit", "-q", "--allow-empty", "-S", "-m", message].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    up.git(&args);
    up.head()
}

/// The next status the poller publishes (bounded: 20 s).
async fn next(status: &mut watch::Receiver<SourceStatus>) -> SourceStatus {
    tokio::time::timeout(Duration::from_secs(20), status.changed())
        .await
        .expect("no status update")
        .unwrap();
    status.borrow_and_update().clone()
}

fn cache() -> (tempfile::TempDir, Arc<GitCache>) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(GitCache::new(dir.path().join("cache")).unwrap());
    (dir, cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_signed_commits_are_verified_and_unverified_ones_refused() {
    let keys = tempfile::tempdir().unwrap();
    let trusted = ssh_key(keys.path(), "trusted");
    let stranger = ssh_key(keys.path(), "stranger");
    let up = Upstream::new();
    up.write("a.yaml", "v: 1\n");
    let good = ssh_commit(&up, &trusted, "signed");
    let (_d, cache) = cache();
    let mut source = GitSource::new("fleet", up.path_url(), GitRef::Branch("main".into()));
    source.verify = Some(Verification::parse(VerifyMode::Commit, &trusted.public).unwrap());

    let s = {
        let (cache, source) = (cache.clone(), source.clone());
        tokio::task::spawn_blocking(move || cache.fetch(&source))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(s.commit(), good);
    assert_eq!(
        s.verified_by(),
        Some(format!("ssh-ed25519 {}", trusted.fingerprint).as_str())
    );

    let poller = SourcePoller::spawn(
        cache.clone(),
        source.clone(),
        PollOptions {
            interval: Duration::from_secs(3600),
            retry_interval: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(3600),
            jitter: 0.0,
        },
    );
    let mut status = poller.status();
    let first = next(&mut status).await;
    assert_eq!(first.revision, Some(format!("main@sha1:{good}")));

    // An unsigned commit: refused, the verified snapshot stays.
    up.write("a.yaml", "v: 2\n");
    let unsigned = up.commit("unsigned");
    poller.fetch_now();
    let st = next(&mut status).await;
    assert_eq!(st.reason, Some(FailureReason::SourceVerificationFailed));
    assert_eq!(
        st.last_error.as_deref(),
        Some(
            format!(
                "{} at main@sha1:{unsigned} failed verification: commit {unsigned} is not signed",
                up.path_url()
            )
            .as_str()
        )
    );
    assert_eq!(st.revision, Some(format!("main@sha1:{good}")));
    let kept = poller.snapshot().borrow().clone().unwrap();
    assert_eq!(kept.commit(), good);
    assert_eq!(
        kept.read(&RelPath::new("a.yaml").unwrap()).unwrap(),
        b"v: 1\n"
    );

    // Signed by a key that is not trusted.
    let foreign = ssh_commit(&up, &stranger, "stranger");
    poller.fetch_now();
    let st = next(&mut status).await;
    assert_eq!(
        st.last_error.as_deref(),
        Some(
            format!(
                "{} at main@sha1:{foreign} failed verification: commit {foreign}: signed by SSH key {}, which is not a trusted key",
                up.path_url(),
                stranger.fingerprint
            )
            .as_str()
        )
    );
    assert_eq!(poller.snapshot().borrow().as_ref().unwrap().commit(), good);

    // A forged commit: the trusted key's signature over different content.
    let raw = up.git(&["cat-file", "commit", &good]);
    let forged_raw = raw.replace("\nsigned\n", "\nsigned, then altered\n");
    assert_ne!(raw, forged_raw);
    let forged_file = keys.path().join("forged");
    std::fs::write(&forged_file, forged_raw).unwrap();
    let forged = up
        .git(&[
            "hash-object",
            "-t",
            "commit",
            "-w",
            forged_file.to_str().unwrap(),
        ])
        .trim()
        .to_string();
    up.git(&["update-ref", "refs/heads/main", &forged]);
    poller.fetch_now();
    let st = next(&mut status).await;
    let error = st.last_error.unwrap();
    assert!(
        error.contains(&format!(
            "commit {forged}: the SSH signature by {} does not verify",
            trusted.fingerprint
        )),
        "{error}"
    );
    assert_eq!(poller.snapshot().borrow().as_ref().unwrap().commit(), good);

    // A new commit signed by the trusted key is accepted again.
    up.git(&["reset", "-q", "--hard", &unsigned]);
    up.write("a.yaml", "v: 3\n");
    let fixed = ssh_commit(&up, &trusted, "signed again");
    poller.fetch_now();
    let st = next(&mut status).await;
    assert_eq!((st.last_error, st.reason), (None, None));
    assert_eq!(st.revision, Some(format!("main@sha1:{fixed}")));
    poller.shutdown().await;
}

#[test]
fn ssh_signed_tags_are_verified_with_semver_refs() {
    let keys = tempfile::tempdir().unwrap();
    let trusted = ssh_key(keys.path(), "trusted");
    let up = Upstream::new();
    up.write("a.yaml", "v: 1\n");
    let one = up.commit("one");
    let mut args = ssh_sign_args(&trusted);
    args.extend(["tag", "-s", "-m", "release 1.0.0", "v1.0.0"].map(String::from));
    up.git(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (_d, cache) = cache();
    let mut source = GitSource::new("rel", up.path_url(), GitRef::Semver("^1".into()));
    source.verify = Some(Verification::parse(VerifyMode::Tag, &trusted.public).unwrap());
    let s = cache.fetch(&source).unwrap();
    assert_eq!((s.resolved_ref(), s.commit()), (Some("v1.0.0"), one));
    assert!(s.verified_by().unwrap().ends_with(&trusted.fingerprint));

    // A higher, unsigned annotated tag is refused rather than silently skipped.
    up.write("a.yaml", "v: 2\n");
    up.commit("two");
    up.git(&["tag", "-a", "-m", "release 1.1.0", "v1.1.0"]);
    let err = cache.fetch(&source).unwrap_err();
    assert!(matches!(err, Error::Verification { .. }), "{err}");
    assert!(
        err.to_string().ends_with("tag v1.1.0 is not signed"),
        "{err}"
    );

    up.git(&["tag", "v1.2.0"]);
    let err = cache.fetch(&source).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("tag v1.2.0 is a lightweight tag, which carries no signature"),
        "{err}"
    );

    let mut branch = GitSource::new("b", up.path_url(), GitRef::Branch("main".into()));
    branch.verify = source.verify.clone();
    let err = cache.fetch(&branch).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("tag verification needs a tag or semver reference, not a branch"),
        "{err}"
    );
}

/// A throwaway GnuPG home with one or more keys; stops its agent when dropped.
struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    fn new() -> Self {
        // Short path: gpg-agent's socket path must fit in a sockaddr.
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .unwrap();
        Self { home }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Creates a signing key for `email`; returns its armored public key and fingerprint.
    fn key(&self, email: &str) -> (String, String) {
        self.run(&[
            "--quick-gen-key",
            &format!("Test <{email}>"),
            "ed25519",
            "sign",
            "never",
        ]);
        let armored = self.run(&["--armor", "--export", email]);
        let listing = self.run(&["--with-colons", "--fingerprint", email]);
        let fpr = listing
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .unwrap()
            .split(':')
            .nth(9)
            .unwrap()
            .to_string();
        (armored, fpr)
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("GNUPGHOME", self.home.path().to_str().unwrap())]
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

#[test]
fn openpgp_signed_commits_and_tags_are_verified() {
    let gpg = Gpg::new();
    let (trusted_key, trusted_fpr) = gpg.key("trusted@example.com");
    let (_, stranger_fpr) = gpg.key("stranger@example.com");
    let up = Upstream::new();
    up.write("a.yaml", "v: 1\n");
    let good = up.commit_with(
        "signed",
        &["-S", "--gpg-sign=trusted@example.com"],
        &gpg.env(),
    );
    let (_d, cache) = cache();
    let mut source = GitSource::new("fleet", up.path_url(), GitRef::Branch("main".into()));
    let keys = format!("# release keys\n{trusted_key}");
    source.verify = Some(Verification::parse(VerifyMode::Commit, &keys).unwrap());
    let s = cache.fetch(&source).unwrap();
    assert_eq!(s.commit(), good);
    assert_eq!(
        s.verified_by(),
        Some(format!("openpgp {trusted_fpr}").as_str())
    );

    let foreign = up.commit_with("stranger", &["--gpg-sign=stranger@example.com"], &gpg.env());
    let err = cache.fetch(&source).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("commit {foreign}: signed by OpenPGP key "))
            && msg.ends_with(", which is not a trusted key"),
        "{msg}"
    );
    // The issuer named is the stranger's key (its fingerprint or key id).
    assert!(
        msg.contains(&stranger_fpr) || msg.contains(&stranger_fpr[24..]),
        "{msg}"
    );

    // The trusted key's signature over altered content does not verify.
    let raw = up.git(&["cat-file", "commit", &good]);
    let altered = raw.replace("\nsigned\n", "\nsigned, then altered\n");
    assert_ne!(raw, altered);
    let file = up.root.path().join("altered-commit");
    std::fs::write(&file, altered).unwrap();
    let forged = up
        .git(&["hash-object", "-t", "commit", "-w", file.to_str().unwrap()])
        .trim()
        .to_string();
    up.git(&["update-ref", "refs/heads/forged", &forged]);
    let mut forged_source = source.clone();
    forged_source.reference = GitRef::Branch("forged".into());
    let msg = cache.fetch(&forged_source).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("commit {forged}: the OpenPGP signature by "))
            && msg.contains("does not verify"),
        "{msg}"
    );

    // An annotated tag signed with the trusted key, verified in tag mode.
    crate::support::git_env(
        &up.dir(),
        &[
            "tag",
            "-u",
            "trusted@example.com",
            "-m",
            "release",
            "v0.1.0",
        ],
        &gpg.env(),
    );
    let mut tagged = GitSource::new("rel", up.path_url(), GitRef::Tag("v0.1.0".into()));
    tagged.verify = Some(Verification::parse(VerifyMode::Tag, &trusted_key).unwrap());
    let s = cache.fetch(&tagged).unwrap();
    assert_eq!(s.commit(), foreign);
    assert_eq!(
        s.verified_by(),
        Some(format!("openpgp {trusted_fpr}").as_str())
    );
}

#[test]
fn bad_trusted_keys_are_named() {
    let err =
        Verification::parse(VerifyMode::Commit, "# keys\n\nssh-ed25519 garbage\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid trusted key (line 3): "),
        "{err}"
    );
    let err = Verification::parse(VerifyMode::Commit, "# nothing\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid trusted key (key list): no trusted keys given"
    );
    let err = Verification::parse(
        VerifyMode::Commit,
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQ==\n",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid trusted key (OpenPGP key block starting on line 1)"),
        "{err}"
    );
}
