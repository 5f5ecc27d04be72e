//! Real Git repositories and a real Git smart-HTTP server (`git http-backend` behind a small
//! axum server on loopback) for the source tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use tokio::io::AsyncWriteExt as _;

/// Runs `git` in `dir` with a clean, deterministic environment; panics with its output on
/// failure and returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    git_env(dir, args, &[])
}

/// Like [`git`] with extra environment variables.
pub fn git_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Author")
        .env("GIT_COMMITTER_EMAIL", "author@example.com")
        .envs(env.iter().copied())
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An upstream repository (non-bare, so tests can commit to it) under a project root that the
/// HTTP server serves.
pub struct Upstream {
    pub root: tempfile::TempDir,
    pub name: String,
}

impl Upstream {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let name = "upstream".to_string();
        let dir = root.path().join(&name);
        std::fs::create_dir(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        Self { root, name }
    }

    pub fn dir(&self) -> PathBuf {
        self.root.path().join(&self.name)
    }

    /// The repository as a local path URL.
    pub fn path_url(&self) -> String {
        self.dir().to_string_lossy().into_owned()
    }

    pub fn write(&self, path: &str, content: &str) {
        let full = self.dir().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }

    pub fn symlink(&self, target: &str, link: &str) {
        let full = self.dir().join(link);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, full).unwrap();
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.commit_with(message, &[], &[])
    }

    /// Commits with extra `git commit` arguments and environment (for signing).
    pub fn commit_with(&self, message: &str, args: &[&str], env: &[(&str, &str)]) -> String {
        git(&self.dir(), &["add", "-A"]);
        let mut full = vec!["commit", "-q", "--allow-empty", "-m", message];
        full.extend_from_slice(args);
        git_env(&self.dir(), &full, env);
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.dir(), &["rev-parse", "HEAD"]).trim().to_string()
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(&self.dir(), args)
    }
}

/// The accepted credentials of a [`GitHttpServer`]; changeable while it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerAuth {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

#[derive(Clone)]
struct ServerState {
    project_root: PathBuf,
    auth: Arc<Mutex<ServerAuth>>,
}

/// `git http-backend` as CGI behind axum on 127.0.0.1.
pub struct GitHttpServer {
    pub addr: SocketAddr,
    auth: Arc<Mutex<ServerAuth>>,
    project_root: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl GitHttpServer {
    pub async fn start(project_root: &Path, auth: ServerAuth) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), project_root, auth).await
    }

    pub async fn start_on(addr: SocketAddr, project_root: &Path, auth: ServerAuth) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let auth = Arc::new(Mutex::new(auth));
        let state = ServerState {
            project_root: project_root.to_path_buf(),
            auth: auth.clone(),
        };
        let app = axum::Router::new().fallback(cgi).with_state(state);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            auth,
            project_root: project_root.to_path_buf(),
            task,
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("http://{}/{repo}", self.addr)
    }

    pub fn set_auth(&self, auth: ServerAuth) {
        *self.auth.lock().unwrap() = auth;
    }

    /// Stops accepting connections (the port is closed: clients get "connection refused").
    pub async fn stop(self) -> (SocketAddr, PathBuf, ServerAuth) {
        self.task.abort();
        let _ = self.task.await;
        let auth = self.auth.lock().unwrap().clone();
        (self.addr, self.project_root, auth)
    }
}

async fn cgi(State(state): State<ServerState>, req: Request) -> Response {
    let expected = state.auth.lock().unwrap().clone();
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let authorised = match &expected {
        ServerAuth::Anonymous => true,
        ServerAuth::Basic(user, pass) => {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            );
            given.as_deref() == Some(want.as_str())
        }
        ServerAuth::Bearer(token) => given.as_deref() == Some(format!("Bearer {token}").as_str()),
    };
    if !authorised {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", "Basic realm=\"git\"")
            .body(Body::from("unauthorized"))
            .unwrap();
    }

    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 256 << 20).await.unwrap();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &state.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REMOTE_USER", "tester")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap();
    let _ = writer.await;

    // CGI output: headers, a blank line, the body.
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let Some((end, sep)) = split else {
        return Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from(out.stderr))
            .unwrap();
    };
    let mut response = Response::builder();
    let mut status = StatusCode::OK;
    for line in String::from_utf8_lossy(&raw[..end]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value.split_whitespace().next().unwrap().parse().unwrap();
            status = StatusCode::from_u16(code).unwrap();
        } else {
            response = response.header(name, HeaderValue::from_str(value).unwrap());
        }
    }
    response
        .status(status)
        .body(Body::from(raw[end + sep..].to_vec()))
        .unwrap()
}
