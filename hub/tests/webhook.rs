//! The webhook receiver over real HTTP on 127.0.0.1, with GitHub- and GitLab-shaped payloads.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flotilla_hub::source::Secret;
use flotilla_hub::webhook::{self, Provider, PushEvent, WebhookConfig};
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use sha2::Sha256;

const GITHUB_SECRET: &str = "gh-webhook-secret-4f1d";
const GITLAB_TOKEN: &str = "gl-webhook-token-9a2c";

/// Captured log output of the test's thread (the runtime is current-thread, so the server's
/// tasks log here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Receiver {
    addr: SocketAddr,
    pushes: Arc<Mutex<Vec<PushEvent>>>,
    logs: Logs,
    _log_guard: tracing::subscriber::DefaultGuard,
}

async fn start(config: WebhookConfig) -> Receiver {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);

    let pushes = Arc::new(Mutex::new(Vec::new()));
    let sink = pushes.clone();
    let app = webhook::router(
        config,
        Arc::new(move |push: PushEvent| sink.lock().unwrap().push(push)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Receiver {
        addr,
        pushes,
        logs,
        _log_guard: guard,
    }
}

fn both_enabled() -> WebhookConfig {
    WebhookConfig {
        github_secrets: vec![Secret::new(GITHUB_SECRET)],
        gitlab_tokens: vec![Secret::new(GITLAB_TOKEN)],
        ..WebhookConfig::default()
    }
}

impl Receiver {
    async fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut request = http::Request::post(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = client
            .request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn pushes(&self) -> Vec<PushEvent> {
        self.pushes.lock().unwrap().clone()
    }
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A push payload in GitHub's shape (trimmed to the fields a receiver reads, plus a few it
/// does not).
fn github_push(reference: &str, after: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": reference,
        "before": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        "after": after,
        "created": false,
        "deleted": false,
        "forced": false,
        "repository": {
            "id": 4242,
            "name": "fleet",
            "full_name": "acme/fleet",
            "private": true,
            "html_url": "https://github.com/acme/fleet",
            "git_url": "git://github.com/acme/fleet.git",
            "ssh_url": "git@github.com:acme/fleet.git",
            "clone_url": "https://github.com/acme/fleet.git",
            "default_branch": "main"
        },
        "pusher": { "name": "octo", "email": "octo@example.com" },
        "commits": [{ "id": after, "message": "scale web to 3" }],
        "head_commit": { "id": after, "message": "scale web to 3" }
    }))
    .unwrap()
}

/// A push payload in GitLab's shape.
fn gitlab_push(kind: &str, reference: &str, after: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object_kind": kind,
        "event_name": kind,
        "before": "0000000000000000000000000000000000000000",
        "after": after,
        "ref": reference,
        "checkout_sha": after,
        "user_username": "ops",
        "project_id": 77,
        "project": {
            "id": 77,
            "name": "Fleet",
            "web_url": "https://gitlab.example.com/platform/fleet",
            "git_ssh_url": "git@gitlab.example.com:platform/fleet.git",
            "git_http_url": "https://gitlab.example.com/platform/fleet.git",
            "path_with_namespace": "platform/fleet",
            "default_branch": "main"
        },
        "repository": {
            "name": "Fleet",
            "url": "git@gitlab.example.com:platform/fleet.git",
            "homepage": "https://gitlab.example.com/platform/fleet",
            "git_http_url": "https://gitlab.example.com/platform/fleet.git",
            "git_ssh_url": "git@gitlab.example.com:platform/fleet.git"
        },
        "commits": [],
        "total_commits_count": 1
    }))
    .unwrap()
}

const AFTER: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

#[tokio::test]
async fn github_push_with_a_good_signature_reaches_the_controller() {
    let rx = start(both_enabled()).await;
    let body = github_push("refs/heads/main", AFTER);
    let signature = sign(GITHUB_SECRET, &body);
    let (status, text) = rx
        .post(
            "/hooks/github",
            &[
                ("content-type", "application/json"),
                ("x-github-event", "push"),
                ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
                ("x-hub-signature-256", &signature),
            ],
            body,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let pushes = rx.pushes();
    assert_eq!(pushes.len(), 1);
    let push = &pushes[0];
    assert_eq!(push.provider, Provider::GitHub);
    assert_eq!(push.reference, "refs/heads/main");
    assert_eq!(push.after, AFTER);
    for url in [
        "https://github.com/acme/fleet.git",
        "git@github.com:acme/fleet.git",
        "https://github.com/acme/fleet",
        "git://github.com/acme/fleet.git",
    ] {
        assert!(
            push.repository_urls.iter().any(|u| u == url),
            "{url} missing"
        );
    }
    assert!(push.is_for("ssh://git@GitHub.com/acme/fleet"));
    assert!(!push.is_for("https://github.com/acme/fleet-infra"));
}

#[tokio::test]
async fn github_bad_signature_is_refused_and_logged_without_secrets() {
    let rx = start(both_enabled()).await;
    let body = github_push("refs/heads/main", AFTER);
    let forged = sign("not-the-secret", &body);
    let (status, text) = rx
        .post(
            "/hooks/github",
            &[("x-github-event", "push"), ("x-hub-signature-256", &forged)],
            body.clone(),
        )
        .await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("signature does not match"), "{text}");
    assert!(rx.pushes().is_empty());

    // Signed with the right secret, but the body was changed on the way.
    let good = sign(GITHUB_SECRET, &body);
    let tampered = github_push("refs/heads/evil", AFTER);
    let (status, _) = rx
        .post(
            "/hooks/github",
            &[("x-github-event", "push"), ("x-hub-signature-256", &good)],
            tampered,
        )
        .await;
    assert_eq!(status, 401);

    let (status, text) = rx
        .post("/hooks/github", &[("x-github-event", "push")], body)
        .await;
    assert_eq!(status, 401);
    assert!(text.contains("X-Hub-Signature-256"), "{text}");
    assert!(rx.pushes().is_empty());

    let logs = rx.logs.text();
    assert!(logs.contains("webhook refused"), "{logs}");
    assert!(logs.contains("provider=github"), "{logs}");
    assert!(logs.contains("remote=127.0.0.1:"), "{logs}");
    for secret in [GITHUB_SECRET, &forged[7..], &good[7..]] {
        assert!(!logs.contains(secret), "log shows {secret}: {logs}");
        assert!(!text.contains(secret));
    }
}

#[tokio::test]
async fn github_ping_and_other_events() {
    let rx = start(both_enabled()).await;
    let ping =
        serde_json::to_vec(&json!({"zen": "Keep it logically awesome.", "hook_id": 1})).unwrap();
    let (status, _) = rx
        .post(
            "/hooks/github",
            &[
                ("x-github-event", "ping"),
                ("x-hub-signature-256", &sign(GITHUB_SECRET, &ping)),
            ],
            ping,
        )
        .await;
    assert_eq!(status, 200);

    let issue = serde_json::to_vec(&json!({"action": "opened", "issue": {"number": 1}})).unwrap();
    let (status, text) = rx
        .post(
            "/hooks/github",
            &[
                ("x-github-event", "issues"),
                ("x-hub-signature-256", &sign(GITHUB_SECRET, &issue)),
            ],
            issue,
        )
        .await;
    assert_eq!(status, 202, "{text}");
    assert!(text.contains("ignored"), "{text}");
    assert!(rx.pushes().is_empty());
}

#[tokio::test]
async fn malformed_payloads_are_400_naming_the_problem() {
    let rx = start(both_enabled()).await;
    let not_json = b"{\"ref\": \"refs/heads/main\", ".to_vec();
    let (status, text) = rx
        .post(
            "/hooks/github",
            &[
                ("x-github-event", "push"),
                ("x-hub-signature-256", &sign(GITHUB_SECRET, &not_json)),
            ],
            not_json,
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("malformed github push payload"), "{text}");
    assert!(text.contains("line 1"), "{text}");

    let no_ref = serde_json::to_vec(&json!({"after": AFTER, "repository": {}})).unwrap();
    let (status, text) = rx
        .post(
            "/hooks/github",
            &[
                ("x-github-event", "push"),
                ("x-hub-signature-256", &sign(GITHUB_SECRET, &no_ref)),
            ],
            no_ref,
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("missing field `ref`"), "{text}");

    let no_urls =
        serde_json::to_vec(&json!({"ref": "refs/heads/main", "after": AFTER, "repository": {}}))
            .unwrap();
    let (status, text) = rx
        .post(
            "/hooks/github",
            &[
                ("x-github-event", "push"),
                ("x-hub-signature-256", &sign(GITHUB_SECRET, &no_urls)),
            ],
            no_urls,
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("names no repository URL"), "{text}");

    let form = b"payload=%7B%7D".to_vec();
    let (status, text) = rx
        .post(
            "/hooks/github",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-github-event", "push"),
                ("x-hub-signature-256", &sign(GITHUB_SECRET, &form)),
            ],
            form,
        )
        .await;
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("application/json"), "{text}");
    assert!(rx.pushes().is_empty());
}

#[tokio::test]
async fn oversized_body_is_413() {
    let rx = start(WebhookConfig {
        body_limit: 64 * 1024,
        ..both_enabled()
    })
    .await;
    let mut big = Vec::new();
    write!(big, "{{\"ref\":\"refs/heads/main\",\"pad\":\"").unwrap();
    big.resize(big.len() + 100 * 1024, b'x');
    big.extend_from_slice(b"\"}");
    let (status, _) = rx
        .post(
            "/hooks/github",
            &[
                ("x-github-event", "push"),
                ("x-hub-signature-256", &sign(GITHUB_SECRET, &big)),
            ],
            big,
        )
        .await;
    assert_eq!(status, 413);

    // Just under the limit passes the size check (and then fails on content).
    let small = vec![b' '; 60 * 1024];
    let (status, _) = rx
        .post(
            "/hooks/github",
            &[
                ("x-github-event", "push"),
                ("x-hub-signature-256", &sign(GITHUB_SECRET, &small)),
            ],
            small,
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn gitlab_push_and_tag_push() {
    let rx = start(both_enabled()).await;
    let (status, text) = rx
        .post(
            "/hooks/gitlab",
            &[
                ("content-type", "application/json"),
                ("x-gitlab-event", "Push Hook"),
                ("x-gitlab-token", GITLAB_TOKEN),
            ],
            gitlab_push("push", "refs/heads/main", AFTER),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = rx
        .post(
            "/hooks/gitlab",
            &[
                ("x-gitlab-event", "Tag Push Hook"),
                ("x-gitlab-token", GITLAB_TOKEN),
            ],
            gitlab_push("tag_push", "refs/tags/v1.4.0", AFTER),
        )
        .await;
    assert_eq!(status, 200, "{text}");

    let pushes = rx.pushes();
    assert_eq!(pushes.len(), 2);
    assert_eq!(pushes[0].provider, Provider::GitLab);
    assert_eq!(pushes[0].reference, "refs/heads/main");
    assert_eq!(pushes[1].reference, "refs/tags/v1.4.0");
    assert_eq!(pushes[1].after, AFTER);
    assert_eq!(
        pushes[0].repository_urls,
        [
            "https://gitlab.example.com/platform/fleet.git",
            "git@gitlab.example.com:platform/fleet.git",
            "https://gitlab.example.com/platform/fleet",
        ]
    );
    assert!(pushes[0].is_for("ssh://git@gitlab.example.com/platform/fleet"));

    let (status, _) = rx
        .post(
            "/hooks/gitlab",
            &[
                ("x-gitlab-event", "Merge Request Hook"),
                ("x-gitlab-token", GITLAB_TOKEN),
            ],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(rx.pushes().len(), 2);
}

#[tokio::test]
async fn gitlab_wrong_token_is_refused() {
    let rx = start(both_enabled()).await;
    for token in ["gl-webhook-token-9a2", "gl-webhook-token-9a2cX", ""] {
        let (status, text) = rx
            .post(
                "/hooks/gitlab",
                &[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", token)],
                gitlab_push("push", "refs/heads/main", AFTER),
            )
            .await;
        assert_eq!(status, 401, "{token}: {text}");
        assert!(text.contains("token does not match"), "{text}");
    }
    let (status, _) = rx
        .post(
            "/hooks/gitlab",
            &[("x-gitlab-event", "Push Hook")],
            gitlab_push("push", "refs/heads/main", AFTER),
        )
        .await;
    assert_eq!(status, 401);
    assert!(rx.pushes().is_empty());
    let logs = rx.logs.text();
    assert!(logs.contains("provider=gitlab"), "{logs}");
    assert!(!logs.contains("gl-webhook-token"), "{logs}");
}

#[tokio::test]
async fn a_provider_without_a_secret_refuses_everything() {
    let rx = start(WebhookConfig {
        github_secrets: vec![Secret::new(GITHUB_SECRET)],
        ..WebhookConfig::default()
    })
    .await;
    let (status, text) = rx
        .post(
            "/hooks/gitlab",
            &[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", "")],
            gitlab_push("push", "refs/heads/main", AFTER),
        )
        .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("gitlab webhooks are not enabled"), "{text}");
    assert!(rx.pushes().is_empty());
}
