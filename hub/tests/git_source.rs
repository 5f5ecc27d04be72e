//! Git sources against real repositories: local paths and a real smart-HTTP server on loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use flotilla_hub::source::{
    Auth, Error, FailureReason, GitCache, GitRef, GitSource, Limits, PollOptions, Secret, Snapshot,
    SourcePoller, SourceStatus,
};
use flotilla_render::{EntryKind, RelPath, Tree, TreeError};
use support::{GitHttpServer, ServerAuth, Upstream};

fn p(path: &str) -> RelPath {
    RelPath::new(path).unwrap()
}

fn read(snapshot: &Snapshot, path: &str) -> String {
    String::from_utf8(snapshot.read(&p(path)).unwrap()).unwrap()
}

fn cache() -> (tempfile::TempDir, Arc<GitCache>) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(GitCache::new(dir.path().join("cache")).unwrap());
    (dir, cache)
}

async fn fetch(cache: &Arc<GitCache>, source: &GitSource) -> Result<Snapshot, Error> {
    let cache = cache.clone();
    let source = source.clone();
    tokio::task::spawn_blocking(move || cache.fetch(&source))
        .await
        .unwrap()
}

/// Waits until the poller's status satisfies `pred` (bounded: 20 s).
async fn wait_status(
    poller: &SourcePoller,
    what: &str,
    pred: impl Fn(&SourceStatus) -> bool,
) -> SourceStatus {
    let mut rx = poller.status();
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            {
                let s = rx.borrow_and_update();
                if pred(&s) {
                    return s.clone();
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    match result {
        Ok(s) => s,
        Err(_) => panic!("timed out waiting for {what}; status: {:?}", rx.borrow()),
    }
}

#[test]
fn branch_update_is_picked_up_and_old_snapshots_stay_readable() {
    let up = Upstream::new();
    up.write("clusters/prod/app.yaml", "replicas: 1\n");
    let first = up.commit("first");
    let (_d, cache) = cache();
    let source = GitSource::new("fleet", up.path_url(), GitRef::Branch("main".into()));

    let s1 = cache.fetch(&source).unwrap();
    assert_eq!(s1.commit(), first);
    assert_eq!(s1.revision(), format!("main@sha1:{first}"));
    assert_eq!(read(&s1, "clusters/prod/app.yaml"), "replicas: 1\n");

    up.write("clusters/prod/app.yaml", "replicas: 3\n");
    up.write("clusters/dev/app.yaml", "replicas: 0\n");
    let second = up.commit("second");
    let s2 = cache.fetch(&source).unwrap();
    assert_eq!(s2.commit(), second);
    assert_eq!(read(&s2, "clusters/prod/app.yaml"), "replicas: 3\n");
    let names: Vec<String> = s2
        .list(&p("clusters"))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["dev", "prod"]);

    // The first snapshot is immutable: it still shows the first revision.
    assert_eq!(read(&s1, "clusters/prod/app.yaml"), "replicas: 1\n");
    assert_eq!(s1.kind(&p("clusters/dev")).unwrap(), None);

    // A force-push (history rewritten) is followed too.
    up.git(&["reset", "-q", "--hard", &first]);
    let s3 = cache.fetch(&source).unwrap();
    assert_eq!(s3.commit(), first);

    let missing = GitSource::new("fleet", up.path_url(), GitRef::Branch("nope".into()));
    let err = cache.fetch(&missing).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("branch nope not found in {}", up.path_url())
    );
}

#[test]
fn tags_and_semver_ranges_pick_the_right_commit() {
    let up = Upstream::new();
    let mut ids = std::collections::HashMap::new();
    for (tag, annotated) in [
        ("v1.0.0", false),
        ("v1.2.0", true),
        ("1.5.3", true),
        ("v1.6.0-rc.1", false),
        ("v2.0.0", false),
        ("not-a-version", false),
    ] {
        up.write("version.txt", tag);
        let id = up.commit(tag);
        if annotated {
            up.git(&["tag", "-a", "-m", tag, tag]);
        } else {
            up.git(&["tag", tag]);
        }
        ids.insert(tag, id);
    }
    let (_d, cache) = cache();

    let tag = GitSource::new("t", up.path_url(), GitRef::Tag("v1.2.0".into()));
    let s = cache.fetch(&tag).unwrap();
    assert_eq!(s.commit(), ids["v1.2.0"]);
    assert_eq!(s.revision(), format!("v1.2.0@sha1:{}", ids["v1.2.0"]));
    assert_eq!(read(&s, "version.txt"), "v1.2.0");

    let range = GitSource::new("s", up.path_url(), GitRef::Semver(">=1.2.0 <2.0.0".into()));
    let s = cache.fetch(&range).unwrap();
    assert_eq!(
        s.resolved_ref(),
        Some("1.5.3"),
        "highest match, pre-release excluded"
    );
    assert_eq!(s.commit(), ids["1.5.3"]);
    assert_eq!(read(&s, "version.txt"), "1.5.3");

    // A new matching tag is picked up on the next fetch; a deleted one disappears.
    up.write("version.txt", "v1.9.0");
    let newer = up.commit("v1.9.0");
    up.git(&["tag", "v1.9.0"]);
    let s = cache.fetch(&range).unwrap();
    assert_eq!(
        (s.resolved_ref(), s.commit()),
        (Some("v1.9.0"), newer.clone())
    );
    up.git(&["tag", "-d", "v1.9.0"]);
    let s = cache.fetch(&range).unwrap();
    assert_eq!(s.resolved_ref(), Some("1.5.3"));

    let none = GitSource::new("s", up.path_url(), GitRef::Semver(">=3.0.0".into()));
    assert_eq!(
        cache.fetch(&none).unwrap_err().to_string(),
        format!("semver range >=3.0.0 not found in {}", up.path_url())
    );
    let bad = GitSource::new("s", up.path_url(), GitRef::Semver("latest".into()));
    assert!(matches!(
        cache.fetch(&bad).unwrap_err(),
        Error::InvalidRange { .. }
    ));
}

#[test]
fn exact_commit_is_fetched_and_unknown_commits_are_named() {
    let up = Upstream::new();
    up.write("a.yaml", "old\n");
    let old = up.commit("old");
    up.write("a.yaml", "new\n");
    up.commit("new");
    let (_d, cache) = cache();

    let source = GitSource::new("c", up.path_url(), GitRef::Commit(old.clone()));
    let s = cache.fetch(&source).unwrap();
    assert_eq!(s.commit(), old);
    assert_eq!(s.revision(), format!("sha1:{old}"));
    assert_eq!(read(&s, "a.yaml"), "old\n");
    let unknown = GitSource::new("c", up.path_url(), GitRef::Commit("0".repeat(40)));
    assert_eq!(
        cache.fetch(&unknown).unwrap_err().to_string(),
        format!("commit {} not found in {}", "0".repeat(40), up.path_url())
    );

    // Cached now: fetching again needs no remote at all.
    std::fs::remove_dir_all(up.dir()).unwrap();
    assert_eq!(cache.fetch(&source).unwrap().commit(), old);
    let err = cache.fetch(&unknown).unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("fetching {}: ", up.path_url())),
        "{err}"
    );
    let short = GitSource::new("c", up.path_url(), GitRef::Commit("abc123".into()));
    assert_eq!(
        cache.fetch(&short).unwrap_err().to_string(),
        "invalid commit id \"abc123\": expected 40 hexadecimal digits"
    );
}

#[test]
fn snapshot_tree_follows_inner_symlinks_and_refuses_escapes() {
    let up = Upstream::new();
    up.write("apps/base/deploy.yaml", "kind: Deployment\n");
    up.write("apps/base/kustomization.yaml", "resources: [deploy.yaml]\n");
    up.write("big.bin", &"x".repeat(4096));
    up.symlink("base", "apps/current");
    up.symlink("../apps/base/deploy.yaml", "links/deploy.yaml");
    up.symlink("../../../etc/passwd", "apps/escape");
    up.symlink("/etc/passwd", "absolute");
    up.symlink("missing.yaml", "dangling");
    up.symlink("loop-b", "loop-a");
    up.symlink("loop-a", "loop-b");
    up.commit("tree");
    let (_d, cache) = cache();
    let mut source = GitSource::new("t", up.path_url(), GitRef::Branch("main".into()));
    source.limits = Limits {
        max_file_bytes: 1024,
        ..Limits::default()
    };
    let s = cache.fetch(&source).unwrap();

    assert_eq!(read(&s, "apps/current/deploy.yaml"), "kind: Deployment\n");
    assert_eq!(read(&s, "links/deploy.yaml"), "kind: Deployment\n");
    assert_eq!(s.kind(&p("apps/current")).unwrap(), Some(EntryKind::Dir));
    assert_eq!(s.kind(&p("")).unwrap(), Some(EntryKind::Dir));
    assert_eq!(s.kind(&p("dangling")).unwrap(), None);
    assert_eq!(s.kind(&p("apps/base/deploy.yaml/x")).unwrap(), None);

    let err = s.read(&p("apps/escape")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "apps/escape is a symlink that leaves the source root"
    );
    let err = s.read(&p("absolute")).unwrap_err();
    assert!(matches!(err, TreeError::SymlinkEscape { .. }), "{err}");
    // Listing a directory holding an escaping symlink fails, as the on-disk tree does.
    assert!(matches!(
        s.list(&p("apps")),
        Err(TreeError::SymlinkEscape { .. })
    ));
    let listing: Vec<(String, EntryKind)> = s
        .list(&p("apps/current"))
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    assert_eq!(
        listing,
        [
            ("deploy.yaml".to_string(), EntryKind::File),
            ("kustomization.yaml".to_string(), EntryKind::File)
        ]
    );

    assert_eq!(
        s.read(&p("big.bin")).unwrap_err().to_string(),
        "big.bin is 4096 bytes, over the limit of 1024 bytes"
    );
    assert!(matches!(
        s.read(&p("nope.yaml")),
        Err(TreeError::NotFound { .. })
    ));
    let err = s.read(&p("loop-a")).unwrap_err();
    assert!(
        err.to_string()
            .contains("too many levels of symbolic links"),
        "{err}"
    );
}

#[test]
fn repository_size_limit_refuses_the_fetch() {
    let up = Upstream::new();
    // Incompressible content so the pack is really large.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let noise: String = (0..200_000)
        .map(|_| {
            // xorshift64: incompressible enough that the pack stays large.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect();
    up.write("noise.txt", &noise);
    up.commit("big");
    let (_d, cache) = cache();
    let mut source = GitSource::new("big", up.path_url(), GitRef::Branch("main".into()));
    source.limits.max_repo_bytes = 50_000;
    let err = cache.fetch(&source).unwrap_err();
    assert!(
        matches!(err, Error::RepositoryTooLarge { limit: 50_000, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("over the limit of 50000 bytes"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_clone_with_basic_auth_and_bearer_token() {
    let up = Upstream::new();
    up.write("a.yaml", "a: 1\n");
    let head = up.commit("one");
    let server = GitHttpServer::start(
        up.root.path(),
        ServerAuth::Basic("bot".into(), "s3cret-pass".into()),
    )
    .await;
    let url = server.url(&up.name);
    let (_d, cache) = cache();

    let mut source = GitSource::new("http", url.clone(), GitRef::Branch("main".into()));
    let err = fetch(&cache, &source).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "authentication to {url} failed: the server requires credentials and none are configured"
        )
    );

    source.auth = Auth::Basic {
        username: "bot".into(),
        password: Secret::new("wrong-pass"),
    };
    let err = fetch(&cache, &source).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("authentication to {url} failed: the server rejected the credentials")
    );
    assert!(!format!("{err:?}").contains("wrong-pass"));

    source.auth = Auth::Basic {
        username: "bot".into(),
        password: Secret::new("s3cret-pass"),
    };
    let s = fetch(&cache, &source).await.unwrap();
    assert_eq!(s.commit(), head);
    assert_eq!(read(&s, "a.yaml"), "a: 1\n");

    server.set_auth(ServerAuth::Bearer("tok-123".into()));
    source.auth = Auth::Bearer {
        token: Secret::new("tok-123"),
    };
    up.write("a.yaml", "a: 2\n");
    let head = up.commit("two");
    let s = fetch(&cache, &source).await.unwrap();
    assert_eq!(s.commit(), head);
    source.auth = Auth::Bearer {
        token: Secret::new("tok-wrong"),
    };
    let err = fetch(&cache, &source).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("tok-wrong"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_keeps_last_snapshot_when_credentials_are_refused() {
    let up = Upstream::new();
    up.write("a.yaml", "v: 1\n");
    let first = up.commit("one");
    let server = GitHttpServer::start(
        up.root.path(),
        ServerAuth::Basic("bot".into(), "pw1".into()),
    )
    .await;
    let (_d, cache) = cache();
    let mut source = GitSource::new("fleet", server.url(&up.name), GitRef::Branch("main".into()));
    source.auth = Auth::Basic {
        username: "bot".into(),
        password: Secret::new("pw1"),
    };
    let options = PollOptions {
        interval: Duration::from_millis(200),
        retry_interval: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        jitter: 0.1,
    };
    let poller = SourcePoller::spawn(cache, source, options);
    let status = wait_status(&poller, "first success", |s| s.revision.is_some()).await;
    assert_eq!(status.revision, Some(format!("main@sha1:{first}")));

    // The password is rotated on the server but not in the source, and a new commit lands.
    server.set_auth(ServerAuth::Basic("bot".into(), "pw2".into()));
    up.write("a.yaml", "v: 2\n");
    up.commit("two");
    poller.fetch_now();
    let status = wait_status(&poller, "auth failure", |s| s.last_error.is_some()).await;
    assert_eq!(status.reason, Some(FailureReason::AuthenticationFailed));
    assert_eq!(
        status.last_error.as_deref(),
        Some(
            format!(
                "authentication to {} failed: the server rejected the credentials",
                server.url(&up.name)
            )
            .as_str()
        )
    );
    assert_eq!(status.revision, Some(format!("main@sha1:{first}")));
    let kept = poller.snapshot().borrow().clone().unwrap();
    assert_eq!(kept.commit(), first);
    assert_eq!(read(&kept, "a.yaml"), "v: 1\n");
    poller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_backs_off_while_the_server_is_down_and_recovers() {
    let up = Upstream::new();
    up.write("a.yaml", "v: 1\n");
    let first = up.commit("one");
    let server = GitHttpServer::start(up.root.path(), ServerAuth::Anonymous).await;
    let url = server.url(&up.name);
    let (_d, cache) = cache();
    let source = GitSource::new("fleet", url.clone(), GitRef::Branch("main".into()));
    let options = PollOptions {
        interval: Duration::from_secs(3600),
        retry_interval: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        jitter: 0.0,
    };
    let poller = SourcePoller::spawn(cache, source, options);
    let mut snapshots = poller.snapshot();
    wait_status(&poller, "first success", |s| s.revision.is_some()).await;
    assert_eq!(
        snapshots.borrow_and_update().as_ref().unwrap().commit(),
        first
    );

    let (addr, root, auth) = server.stop().await;
    poller.fetch_now();
    let mut delays = Vec::new();
    let mut rx = poller.status();
    while delays.len() < 4 {
        rx.changed().await.unwrap();
        let s = rx.borrow_and_update().clone();
        if s.consecutive_failures as usize > delays.len() {
            assert_eq!(s.reason, Some(FailureReason::FetchFailed));
            let error = s.last_error.clone().unwrap();
            assert!(error.starts_with(&format!("fetching {url}: ")), "{error}");
            assert_eq!(s.revision, Some(format!("main@sha1:{first}")));
            delays.push(s.next_attempt_in.unwrap().as_millis());
        }
    }
    assert_eq!(delays, [100, 200, 400, 400], "exponential backoff, capped");
    assert_eq!(
        snapshots.borrow().as_ref().unwrap().commit(),
        first,
        "last good kept"
    );
    assert!(
        !snapshots.has_changed().unwrap(),
        "no new snapshot published on failure"
    );

    // The server comes back with a new commit; the next retry picks it up.
    up.write("a.yaml", "v: 2\n");
    let second = up.commit("two");
    let _server = GitHttpServer::start_on(addr, &root, auth).await;
    let status = wait_status(&poller, "recovery", |s| s.consecutive_failures == 0).await;
    assert_eq!(status.revision, Some(format!("main@sha1:{second}")));
    assert_eq!(status.last_error, None);
    assert_eq!(status.next_attempt_in, Some(Duration::from_secs(3600)));
    snapshots.changed().await.unwrap();
    assert_eq!(
        read(snapshots.borrow().as_ref().unwrap(), "a.yaml"),
        "v: 2\n"
    );

    // With an hour until the next poll, `fetch_now` fetches immediately.
    up.write("a.yaml", "v: 3\n");
    let third = up.commit("three");
    poller.fetch_now();
    tokio::time::timeout(Duration::from_secs(20), snapshots.changed())
        .await
        .expect("fetch_now did not fetch")
        .unwrap();
    assert_eq!(snapshots.borrow().as_ref().unwrap().commit(), third);
    poller.shutdown().await;
}

#[test]
fn ssh_url_without_ssh_key_auth_is_a_config_error() {
    let (_d, cache) = cache();
    let source = GitSource::new(
        "ssh",
        "git@git.example.com:org/fleet.git",
        GitRef::Branch("main".into()),
    );
    assert_eq!(
        cache.fetch(&source).unwrap_err().to_string(),
        "source git@git.example.com:org/fleet.git: an SSH URL needs SSH key authentication with known_hosts"
    );
}
