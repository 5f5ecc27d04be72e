//! Notifications to a real HTTP receiver on 127.0.0.1: deduplication, recovery, retries,
//! dropping without blocking, and webhook URLs kept out of logs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use flotilla_hub::notify::{Notifier, NotifyConfig, Observation};
use serde_json::Value;

/// Captured log output of the test's thread (the runtime is current-thread, so the notifier's
/// tasks log here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

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

/// What the receiver got: path, headers, JSON body.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// Requests answered, successful or not.
    requests: Arc<AtomicUsize>,
    /// Answer this many requests with `fail_status` before answering 200.
    failures_left: Arc<AtomicUsize>,
    fail_status: Arc<AtomicU16>,
}

impl Receiver {
    async fn serve_on(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }

    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver::default();
        receiver.serve_on(listener).await;
        (receiver, addr)
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "waited for {n} notifications, got {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    receiver.requests.fetch_add(1, Ordering::SeqCst);
    let failing = receiver
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return StatusCode::from_u16(receiver.fail_status.load(Ordering::SeqCst)).unwrap();
    }
    receiver.got.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers,
        body: serde_json::from_slice(&body).expect("the notifier sends JSON"),
    });
    StatusCode::OK
}

/// Loads a config file written to `dir`, so `urlFile` paths resolve as they would for the hub.
fn load(dir: &Path, yaml: &str) -> NotifyConfig {
    let path = dir.join("notifications.yaml");
    std::fs::write(&path, yaml).unwrap();
    NotifyConfig::load(&path).unwrap()
}

const FAST_RETRY: &str =
    "retry: { attempts: 30, initialBackoff: 50ms, maxBackoff: 200ms }\ntimeout: 1s\n";

fn failing(cluster: &str, delivery: &str, revision: &str, reason: &str) -> Observation {
    Observation {
        cluster: cluster.into(),
        delivery: delivery.into(),
        revision: revision.into(),
        ready: false,
        reason: reason.into(),
        message: format!("{reason} in apps/kustomization.yaml line 7"),
    }
}

fn ready(cluster: &str, delivery: &str, revision: &str) -> Observation {
    Observation {
        cluster: cluster.into(),
        delivery: delivery.into(),
        revision: revision.into(),
        ready: true,
        reason: "ReconciliationSucceeded".into(),
        message: "applied".into(),
    }
}

/// Lets the notifier's tasks run long enough that a notification that should not be sent
/// would have arrived.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn failure_once_repeats_suppressed_recovery_once() {
    let (receiver, addr) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = load(
        dir.path(),
        &format!(
            "providers:\n- name: alerts\n  type: generic\n  url: http://{addr}/alerts\n  headers:\n    Authorization: Bearer t0k3n\n{FAST_RETRY}"
        ),
    );
    let notifier = Notifier::new(config);

    for _ in 0..3 {
        notifier.observe(failing("prod-eu", "apps", "main@sha1:aaa", "BuildFailed"));
    }
    let got = receiver.wait_for(1).await;
    settle().await;
    assert_eq!(receiver.got().len(), 1, "repeats were notified: {got:#?}");
    let first = &got[0];
    assert_eq!(first.path, "/alerts");
    assert_eq!(first.headers["authorization"], "Bearer t0k3n");
    assert_eq!(first.headers["content-type"], "application/json");
    let b = &first.body;
    assert_eq!(b["event"], "failure");
    assert_eq!(b["severity"], "error");
    assert_eq!(b["cluster"], "prod-eu");
    assert_eq!(b["delivery"], "apps");
    assert_eq!(b["revision"], "main@sha1:aaa");
    assert_eq!(b["reason"], "BuildFailed");
    assert_eq!(
        b["message"],
        "BuildFailed in apps/kustomization.yaml line 7"
    );
    let time = b["time"].as_str().unwrap();
    assert!(time.len() >= 20 && time.ends_with('Z'), "{time}");

    // Another cluster failing is its own failure; a new reason and a new revision are news.
    notifier.observe(failing("prod-us", "apps", "main@sha1:aaa", "BuildFailed"));
    notifier.observe(failing("prod-eu", "apps", "main@sha1:aaa", "ApplyFailed"));
    notifier.observe(failing("prod-eu", "apps", "main@sha1:aaa", "ApplyFailed"));
    notifier.observe(failing("prod-eu", "apps", "main@sha1:bbb", "ApplyFailed"));
    let got = receiver.wait_for(4).await;
    settle().await;
    assert_eq!(receiver.got().len(), 4, "{got:#?}");
    assert_eq!(got[1].body["cluster"], "prod-us");
    assert_eq!(got[2].body["reason"], "ApplyFailed");
    assert_eq!(got[3].body["revision"], "main@sha1:bbb");

    // Recovery once; ready again is nothing; ready without a failure before is nothing.
    let clone = notifier.clone();
    clone.observe(ready("prod-eu", "apps", "main@sha1:ccc"));
    clone.observe(ready("prod-eu", "apps", "main@sha1:ccc"));
    clone.observe(ready("staging", "apps", "main@sha1:ccc"));
    let got = receiver.wait_for(5).await;
    settle().await;
    assert_eq!(receiver.got().len(), 5, "{got:#?}");
    assert_eq!(got[4].body["event"], "recovery");
    assert_eq!(got[4].body["severity"], "info");
    assert_eq!(got[4].body["cluster"], "prod-eu");
    assert_eq!(got[4].body["revision"], "main@sha1:ccc");

    // Failing again after the recovery, even for the same reason and revision, is news.
    notifier.observe(failing("prod-eu", "apps", "main@sha1:bbb", "ApplyFailed"));
    receiver.wait_for(6).await;
}

#[tokio::test]
async fn slack_bodies_and_event_filters() {
    let (receiver, addr) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = load(
        dir.path(),
        &format!(
            "providers:\n\
             - name: chat\n  type: slack\n  url: http://{addr}/services/T1/B1/x\n\
             - name: recoveries\n  type: generic\n  url: http://{addr}/recoveries\n  events: [recovery]\n\
             {FAST_RETRY}"
        ),
    );
    let notifier = Notifier::new(config);
    notifier.observe(failing(
        "edge-1",
        "infrastructure",
        "v1.4.0@sha1:0123456789abcdef0123",
        "HealthCheckFailed",
    ));
    let got = receiver.wait_for(1).await;
    settle().await;
    assert_eq!(
        receiver.got().len(),
        1,
        "the recovery-only provider got a failure"
    );
    assert_eq!(got[0].path, "/services/T1/B1/x");
    let text = got[0].body["text"].as_str().unwrap();
    assert!(
        text.contains("infrastructure") && text.contains("edge-1"),
        "{text}"
    );
    assert!(text.contains("HealthCheckFailed"), "{text}");
    let attachment = &got[0].body["attachments"][0];
    assert_eq!(attachment["color"], "danger");
    let fields: Vec<(String, String)> = attachment["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["title"].as_str().unwrap().to_string(),
                f["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (title, value) in [
        ("Cluster", "edge-1"),
        ("Delivery", "infrastructure"),
        ("Revision", "v1.4.0@sha1:0123456789abcdef0123"),
        ("Reason", "HealthCheckFailed"),
        ("Severity", "error"),
    ] {
        assert!(
            fields.contains(&(title.to_string(), value.to_string())),
            "{title}={value} missing from {fields:?}"
        );
    }

    notifier.observe(ready("edge-1", "infrastructure", "v1.4.1@sha1:1"));
    let got = receiver.wait_for(3).await;
    let mut paths: Vec<&str> = got[1..].iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/recoveries", "/services/T1/B1/x"]);
    let slack = got
        .iter()
        .skip(1)
        .find(|r| r.path.starts_with("/services"))
        .unwrap();
    assert_eq!(slack.body["attachments"][0]["color"], "good");
}

#[tokio::test]
async fn receiver_down_then_up_is_retried_and_the_url_stays_secret() {
    let (logs, _guard) = Logs::capture();
    // A port with nothing listening on it, for now.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let dir = tempfile::tempdir().unwrap();
    let secret_path = "services/T0SECRET/B0SECRET/XyZsEcReTtOkEn";
    std::fs::write(
        dir.path().join("slack-url"),
        format!("http://{addr}/{secret_path}\n"),
    )
    .unwrap();
    let config = load(
        dir.path(),
        &format!(
            "providers:\n- name: ops-slack\n  type: slack\n  urlFile: slack-url\n{FAST_RETRY}"
        ),
    );
    assert!(!format!("{config:?}").contains("SECRET"));
    let notifier = Notifier::new(config);

    let started = Instant::now();
    notifier.observe(failing("prod-eu", "apps", "main@sha1:aaa", "ApplyFailed"));
    // Waiting for the network would take the whole retry budget (30 attempts, seconds); the
    // bound leaves room for a busy machine.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "observe waited for the network"
    );
    // Let attempts fail until the sender says it retries (within its retry budget).
    for _ in 0..100 {
        if logs.text().contains("retrying") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logs.text().contains("retrying"), "{}", logs.text());

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let receiver = Receiver::default();
    receiver.serve_on(listener).await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].path, format!("/{secret_path}"));
    assert_eq!(got[0].body["attachments"][0]["color"], "danger");
    settle().await;
    assert_eq!(receiver.got().len(), 1);

    // The sender logs success after the receiver's response; on a busy machine that can trail
    // the receiver seeing the request.
    for _ in 0..100 {
        if logs.text().contains("notification sent") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = logs.text();
    assert!(logs.contains("ops-slack"), "{logs}");
    assert!(logs.contains("notification sent"), "{logs}");
    assert!(
        !logs.contains("SECRET"),
        "the URL leaked into the logs: {logs}"
    );
    assert!(!logs.contains("XyZsEcReTtOkEn"), "{logs}");
}

#[tokio::test]
async fn server_errors_are_retried_client_errors_are_not() {
    let (logs, _guard) = Logs::capture();
    let (receiver, addr) = Receiver::start().await;
    receiver.fail_status.store(503, Ordering::SeqCst);
    receiver.failures_left.store(2, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let config = load(
        dir.path(),
        &format!(
            "providers:\n- name: alerts\n  type: generic\n  url: http://{addr}/a\n{FAST_RETRY}"
        ),
    );
    let notifier = Notifier::new(config);
    notifier.observe(failing("c1", "apps", "r1", "BuildFailed"));
    receiver.wait_for(1).await;
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 3);
    assert!(
        logs.text().contains("receiver answered 503"),
        "{}",
        logs.text()
    );

    // 404 means the URL is wrong: retrying will not help.
    receiver.fail_status.store(404, Ordering::SeqCst);
    receiver.failures_left.store(100, Ordering::SeqCst);
    notifier.observe(failing("c2", "apps", "r1", "BuildFailed"));
    settle().await;
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 4);
    let logs = logs.text();
    assert!(logs.contains("notification dropped"), "{logs}");
    assert!(logs.contains("receiver answered 404"), "{logs}");
}

#[tokio::test]
async fn a_full_queue_drops_and_logs_without_blocking() {
    let (logs, _guard) = Logs::capture();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let config = load(
        dir.path(),
        &format!(
            "providers:\n- name: alerts\n  type: generic\n  url: http://{addr}/a\nqueueCapacity: 2\n{FAST_RETRY}"
        ),
    );
    let notifier = Notifier::new(config);
    let started = Instant::now();
    for i in 0..200 {
        notifier.observe(failing(&format!("c{i}"), "apps", "r1", "BuildFailed"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "observe blocked: {:?}",
        started.elapsed()
    );
    let logs = logs.text();
    assert!(logs.contains("notification dropped"), "{logs}");
    assert!(logs.contains("queue full"), "{logs}");
    assert!(logs.contains("cluster=c199"), "{logs}");
}
