//! Chart repositories: reading an HTTP repository's `index.yaml`, resolving a version range,
//! downloading and verifying a chart archive, and pulling from OCI registries with `helm pull`.
//! Archives are cached by their sha256 digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// Largest `index.yaml` read.
const MAX_INDEX: usize = 64 << 20;
/// Largest chart archive downloaded.
const MAX_CHART: usize = 64 << 20;
/// How long one request or `helm pull` may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An error reading a repository or getting a chart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL does not parse or has an unsupported scheme.
    #[error("{url}: not an http://, https:// or oci:// URL")]
    Url {
        /// The URL.
        url: String,
    },
    /// The request failed (connection, TLS, timeout).
    #[error("GET {url}: {message}")]
    Request {
        /// The URL.
        url: String,
        /// What went wrong (with its causes).
        message: String,
    },
    /// The server answered with an error status.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The body is larger than the limit.
    #[error("GET {url}: larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// `index.yaml` does not parse.
    #[error("{url}: invalid index")]
    Index {
        /// The index URL.
        url: String,
        /// The cause.
        #[source]
        source: serde_yaml::Error,
    },
    /// The chart is not in the index.
    #[error("chart {chart} is not in the repository index ({url})")]
    NoChart {
        /// The chart.
        chart: String,
        /// The repository.
        url: String,
    },
    /// `spec.chart.version` is not a semantic version range.
    #[error("spec.chart.version: {range:?} is not a semantic version range: {message}")]
    Range {
        /// The range.
        range: String,
        /// Why.
        message: String,
    },
    /// No version of the chart is in the range.
    #[error("chart {chart}: no version matches {range:?} (versions: {available})")]
    NoVersion {
        /// The chart.
        chart: String,
        /// The range.
        range: String,
        /// The versions the index has (highest first, at most 10).
        available: String,
    },
    /// The downloaded archive's digest is not the one the index lists.
    #[error(
        "chart {chart}: downloaded archive has digest sha256:{actual}, the index says sha256:{expected}"
    )]
    Digest {
        /// `<name>@<version>`.
        chart: String,
        /// The index's digest.
        expected: String,
        /// What was downloaded.
        actual: String,
    },
    /// A cache file could not be written or read.
    #[error("chart cache {}", path.display())]
    Cache {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `helm pull` (OCI) failed.
    #[error("helm pull {reference}: {message}")]
    Pull {
        /// `oci://...` reference.
        reference: String,
        /// helm's message.
        message: String,
    },
}

/// Credentials and trust for a repository (from its Secrets). `Debug` prints no secrets.
#[derive(Clone, Default)]
pub struct Access {
    /// `username` + `password` for basic auth.
    pub basic: Option<(String, String)>,
    /// A bearer token.
    pub bearer: Option<String>,
    /// Extra CA certificates (PEM).
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("basic", &self.basic.as_ref().map(|(u, _)| (u, "***")))
            .field("bearer", &self.bearer.as_ref().map(|_| "***"))
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

impl Access {
    fn authorization(&self) -> Option<String> {
        if let Some((u, p)) = &self.basic {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            return Some(format!("Basic {b}"));
        }
        self.bearer.as_ref().map(|t| format!("Bearer {t}"))
    }
}

/// One chart version of an index.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ChartVersion {
    /// Chart name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Where the archive is (absolute, or relative to the repository URL).
    #[serde(default)]
    pub urls: Vec<String>,
    /// sha256 of the archive (hex), when the index lists it.
    #[serde(default)]
    pub digest: Option<String>,
}

/// A parsed `index.yaml`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Index {
    /// Chart versions by chart name.
    #[serde(default)]
    pub entries: BTreeMap<String, Vec<ChartVersion>>,
}

impl Index {
    /// Parses an index read from `url`.
    pub fn parse(url: &str, bytes: &[u8]) -> Result<Self, Error> {
        serde_yaml::from_slice(bytes).map_err(|source| Error::Index {
            url: url.to_owned(),
            source,
        })
    }

    /// The highest version of `chart` in `range` (`None`: any stable version).
    pub fn resolve(
        &self,
        url: &str,
        chart: &str,
        range: Option<&str>,
    ) -> Result<ChartVersion, Error> {
        let versions = self.entries.get(chart).ok_or_else(|| Error::NoChart {
            chart: chart.to_owned(),
            url: url.to_owned(),
        })?;
        let reqs = parse_range(range.unwrap_or("*"))?;
        let mut parsed: Vec<(semver::Version, &ChartVersion)> = versions
            .iter()
            .filter_map(|v| {
                semver::Version::parse(v.version.trim_start_matches('v'))
                    .ok()
                    .map(|s| (s, v))
            })
            .collect();
        parsed.sort_by(|a, b| b.0.cmp(&a.0));
        parsed
            .iter()
            .find(|(v, _)| reqs.iter().any(|r| r.matches(v)))
            .map(|(_, c)| (*c).clone())
            .ok_or_else(|| Error::NoVersion {
                chart: chart.to_owned(),
                range: range.unwrap_or("*").to_owned(),
                available: parsed
                    .iter()
                    .take(10)
                    .map(|(v, _)| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// Parses a Helm (Masterminds) version constraint: `||` between alternatives, comparators
/// separated by spaces or commas, `^`, `~`, `x` wildcards, and a bare version meaning exactly
/// that version.
pub fn parse_range(range: &str) -> Result<Vec<semver::VersionReq>, Error> {
    let bad = |message: String| Error::Range {
        range: range.to_owned(),
        message,
    };
    let mut out = Vec::new();
    for alt in range.split("||") {
        let mut comparators: Vec<String> = Vec::new();
        let mut pending_op: Option<String> = None;
        for token in alt.split([' ', ',']).filter(|t| !t.is_empty()) {
            if token.chars().all(|c| "<>=!~^".contains(c)) {
                pending_op = Some(token.to_owned());
                continue;
            }
            let token = match pending_op.take() {
                Some(op) => format!("{op}{token}"),
                None => token.to_owned(),
            };
            let starts_with_op = token.starts_with(['<', '>', '=', '~', '^', '*']);
            let token = token.replace(['v', 'V'], "");
            // A bare full version is an exact match in Helm (the semver crate reads it as `^`).
            let token = if !starts_with_op
                && token
                    .split(['-', '+'])
                    .next()
                    .unwrap_or_default()
                    .split('.')
                    .count()
                    == 3
                && !token.contains(['x', 'X', '*'])
            {
                format!("={token}")
            } else {
                token
            };
            comparators.push(token);
        }
        if let Some(op) = pending_op {
            return Err(bad(format!("{op} is not followed by a version")));
        }
        if comparators.is_empty() {
            comparators.push("*".into());
        }
        let req =
            semver::VersionReq::parse(&comparators.join(", ")).map_err(|e| bad(e.to_string()))?;
        out.push(req);
    }
    Ok(out)
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

fn client(access: &Access) -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(native) = load_native_roots() {
        for cert in native {
            let _ = roots.add(cert);
        }
    }
    if let Some(pem) = &access.ca_pem {
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("ca.crt: {e}"))?;
        for c in certs {
            roots.add(c).map_err(|e| format!("ca.crt: {e}"))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

fn load_native_roots() -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ()> {
    // The system bundle, where Debian and most images keep it.
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(certs) = rustls_pki_types::CertificateDer::pem_file_iter(path) {
            return Ok(certs.filter_map(Result::ok).collect());
        }
    }
    Err(())
}

use rustls_pki_types::pem::PemObject as _;

/// GETs `url` (following up to 5 redirects), at most `limit` bytes. Credentials are sent only
/// to the repository's own host and port (`auth_origin`).
async fn get(url: &str, access: &Access, auth_origin: &str, limit: usize) -> Result<Bytes, Error> {
    let client = client(access).map_err(|message| Error::Request {
        url: url.to_owned(),
        message,
    })?;
    let mut url = url.to_owned();
    for _ in 0..5 {
        let uri: http::Uri = url.parse().map_err(|_| Error::Url { url: url.clone() })?;
        let mut req = http::Request::get(uri.clone()).header("user-agent", "flotilla-hub");
        if origin(&url).as_deref() == Some(auth_origin)
            && let Some(a) = access.authorization()
        {
            req = req.header("authorization", a);
        }
        let req = req.body(Empty::new()).map_err(|e| Error::Request {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
            .await
            .map_err(|_| Error::Request {
                url: url.clone(),
                message: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            })?
            .map_err(|e| Error::Request {
                url: url.clone(),
                message: crate::controller::util::error_chain(&e),
            })?;
        let status = resp.status();
        if status.is_redirection()
            && let Some(loc) = resp.headers().get("location").and_then(|l| l.to_str().ok())
        {
            url = join(&url, loc);
            continue;
        }
        if !status.is_success() {
            return Err(Error::Status {
                url,
                status: status.as_u16(),
            });
        }
        let body = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Limited::new(resp.into_body(), limit).collect(),
        )
        .await
        .map_err(|_| Error::Request {
            url: url.clone(),
            message: format!("body not read within {}s", REQUEST_TIMEOUT.as_secs()),
        })?
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Error::TooLarge {
                    url: url.clone(),
                    limit,
                }
            } else {
                Error::Request {
                    url: url.clone(),
                    message: e.to_string(),
                }
            }
        })?;
        return Ok(body.to_bytes());
    }
    Err(Error::Request {
        url,
        message: "too many redirects".into(),
    })
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Some(format!("{scheme}://{}:{port}", uri.host()?))
}

/// Resolves `reference` (absolute or relative) against `base`.
fn join(base: &str, reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_owned();
    }
    if let Some(rest) = reference.strip_prefix('/') {
        return match origin(base) {
            Some(o) => format!("{o}/{rest}"),
            None => reference.to_owned(),
        };
    }
    let dir = match base.rfind('/') {
        Some(i) if base[..i].contains("://") && i > base.find("://").unwrap_or(0) + 2 => &base[..i],
        _ => base,
    };
    format!("{dir}/{reference}")
}

/// The repository URL with one trailing slash.
fn base_url(url: &str) -> String {
    format!("{}/", url.trim_end_matches('/'))
}

/// Reads and parses `<url>/index.yaml`; returns the index and the sha256 of its bytes.
pub async fn fetch_index(url: &str, access: &Access) -> Result<(Index, String), Error> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::Url {
            url: url.to_owned(),
        });
    }
    let index_url = format!("{}index.yaml", base_url(url));
    let auth = origin(url).unwrap_or_default();
    let bytes = get(&index_url, access, &auth, MAX_INDEX).await?;
    let digest = hex::encode(Sha256::digest(&bytes));
    Ok((Index::parse(&index_url, &bytes)?, digest))
}

/// A chart archive on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// Chart name.
    pub name: String,
    /// Chart version.
    pub version: String,
    /// sha256 of the archive (hex).
    pub digest: String,
    /// The cached file.
    pub path: PathBuf,
}

fn cache_path(cache: &Path, digest: &str) -> PathBuf {
    cache.join(format!("{digest}.tgz"))
}

fn store(cache: &Path, bytes: &[u8]) -> Result<(String, PathBuf), Error> {
    let digest = hex::encode(Sha256::digest(bytes));
    let path = cache_path(cache, &digest);
    let io = |source| Error::Cache {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(cache).map_err(io)?;
    let tmp = cache.join(format!(".{digest}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok((digest, path))
}

/// The archive of `version` from HTTP repository `url`: from the cache when the index's digest
/// is there already, else downloaded, checked against the index's digest and cached.
pub async fn download(
    url: &str,
    version: &ChartVersion,
    access: &Access,
    cache: &Path,
) -> Result<Archive, Error> {
    let chart = format!("{}@{}", version.name, version.version);
    if let Some(d) = &version.digest {
        let path = cache_path(cache, d);
        if path.is_file() {
            return Ok(Archive {
                name: version.name.clone(),
                version: version.version.clone(),
                digest: d.clone(),
                path,
            });
        }
    }
    let Some(first) = version.urls.first() else {
        return Err(Error::Request {
            url: url.to_owned(),
            message: format!("the index lists no URL for {chart}"),
        });
    };
    let chart_url = join(&base_url(url), first);
    let auth = origin(url).unwrap_or_default();
    let bytes = get(&chart_url, access, &auth, MAX_CHART).await?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if let Some(expected) = &version.digest
        && !expected.eq_ignore_ascii_case(&actual)
    {
        return Err(Error::Digest {
            chart,
            expected: expected.clone(),
            actual,
        });
    }
    let (digest, path) = store(cache, &bytes)?;
    Ok(Archive {
        name: version.name.clone(),
        version: version.version.clone(),
        digest,
        path,
    })
}

/// Pulls `<url>/<chart>` in `range` from an OCI registry with `helm pull` (which resolves the
/// range against the registry's tags), and caches the archive by digest.
pub async fn pull_oci(
    helm: &Path,
    url: &str,
    chart: &str,
    range: Option<&str>,
    access: &Access,
    cache: &Path,
) -> Result<Archive, Error> {
    let reference = format!("{}/{chart}", url.trim_end_matches('/'));
    let fail = |message: String| Error::Pull {
        reference: reference.clone(),
        message,
    };
    let dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    let dest = dir.path().join("out");
    let registry_config = dir.path().join("registry.json");
    let homes = super::template::helm_homes(dir.path());
    let home = dir.path().to_owned();
    let run = |args: Vec<std::ffi::OsString>, stdin: Option<String>| {
        let homes = homes.clone();
        let helm = helm.to_owned();
        let home = home.clone();
        async move {
            let mut cmd = tokio::process::Command::new(&helm);
            cmd.args(&args)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", &home)
                .envs(homes)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("running {}: {e}", helm.display()))?;
            if let Some(input) = stdin
                && let Some(mut w) = child.stdin.take()
            {
                use tokio::io::AsyncWriteExt as _;
                let _ = w.write_all(input.as_bytes()).await;
            }
            let out = tokio::time::timeout(REQUEST_TIMEOUT, child.wait_with_output())
                .await
                .map_err(|_| format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))?
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                Err(err
                    .lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("failed")
                    .trim_start_matches("Error: ")
                    .to_owned())
            }
        }
    };
    let registry_flag = |v: &mut Vec<std::ffi::OsString>| {
        v.push("--registry-config".into());
        v.push(registry_config.clone().into());
    };
    if let Some((user, password)) = &access.basic {
        let host = url
            .trim_start_matches("oci://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut args: Vec<std::ffi::OsString> = vec![
            "registry".into(),
            "login".into(),
            host.into(),
            "--username".into(),
            user.into(),
            "--password-stdin".into(),
        ];
        registry_flag(&mut args);
        run(args, Some(password.clone())).await.map_err(fail)?;
    }
    let mut args: Vec<std::ffi::OsString> = vec!["pull".into(), reference.clone().into()];
    if let Some(r) = range {
        args.push("--version".into());
        args.push(r.into());
    }
    args.push("--destination".into());
    args.push(dest.clone().into());
    registry_flag(&mut args);
    if access.ca_pem.is_some() {
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, access.ca_pem.as_deref().unwrap_or_default())
            .map_err(|e| fail(e.to_string()))?;
        args.push("--ca-file".into());
        args.push(ca.into());
    }
    run(args, None).await.map_err(fail)?;
    let file = std::fs::read_dir(&dest)
        .map_err(|e| fail(e.to_string()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .ok_or_else(|| fail("helm pull wrote no .tgz".into()))?;
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let version = stem
        .strip_prefix(&format!("{chart}-"))
        .unwrap_or(&stem)
        .to_owned();
    let bytes = std::fs::read(&file).map_err(|e| fail(e.to_string()))?;
    let (digest, path) = store(cache, &bytes)?;
    Ok(Archive {
        name: chart.to_owned(),
        version,
        digest,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"apiVersion: v1
entries:
  demo:
  - name: demo
    version: 0.1.0
    urls: [demo-0.1.0.tgz]
    digest: aaaa
  - name: demo
    version: 0.2.0
    urls: [https://charts.example/demo-0.2.0.tgz]
    digest: bbbb
  - name: demo
    version: 1.0.0-rc.1
    urls: [demo-1.0.0-rc.1.tgz]
  - name: demo
    version: 1.0.0
    urls: [demo-1.0.0.tgz]
generated: "2026-11-22T00:00:00Z"
"#;

    fn resolve(range: Option<&str>) -> Result<String, Error> {
        Index::parse("x", INDEX.as_bytes())
            .unwrap()
            .resolve("http://repo", "demo", range)
            .map(|c| c.version)
    }

    #[test]
    fn ranges_resolve_like_helm() {
        assert_eq!(resolve(None).unwrap(), "1.0.0");
        assert_eq!(resolve(Some("*")).unwrap(), "1.0.0");
        assert_eq!(resolve(Some(">=0.1.0 <1.0.0")).unwrap(), "0.2.0");
        assert_eq!(resolve(Some(">= 0.1.0, < 1.0.0")).unwrap(), "0.2.0");
        assert_eq!(
            resolve(Some("0.1.0")).unwrap(),
            "0.1.0",
            "a bare version is exact"
        );
        assert_eq!(resolve(Some("^0.1")).unwrap(), "0.1.0");
        assert_eq!(resolve(Some("0.1.x")).unwrap(), "0.1.0");
        assert_eq!(resolve(Some("~0.2 || >=5")).unwrap(), "0.2.0");
        assert_eq!(resolve(Some("1.0.0-rc.1")).unwrap(), "1.0.0-rc.1");
    }

    #[test]
    fn unresolvable_ranges_say_why() {
        assert_eq!(
            resolve(Some(">=2.0.0")).unwrap_err().to_string(),
            "chart demo: no version matches \">=2.0.0\" (versions: 1.0.0, 1.0.0-rc.1, 0.2.0, 0.1.0)"
        );
        assert!(
            resolve(Some(">= "))
                .unwrap_err()
                .to_string()
                .starts_with("spec.chart.version: \">= \" is not a semantic version range")
        );
        let e = Index::parse("x", INDEX.as_bytes())
            .unwrap()
            .resolve("http://repo", "nope", None)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "chart nope is not in the repository index (http://repo)"
        );
    }

    #[test]
    fn chart_urls_resolve_against_the_repository() {
        assert_eq!(
            join("http://h:1/charts/", "demo-0.1.0.tgz"),
            "http://h:1/charts/demo-0.1.0.tgz"
        );
        assert_eq!(
            join("http://h:1/charts/", "/x/demo.tgz"),
            "http://h:1/x/demo.tgz"
        );
        assert_eq!(
            join("http://h:1/charts/", "https://cdn/demo.tgz"),
            "https://cdn/demo.tgz"
        );
        assert_eq!(origin("https://h/charts").as_deref(), Some("https://h:443"));
        assert_eq!(origin("http://h:8080/x").as_deref(), Some("http://h:8080"));
    }

    #[test]
    fn access_debug_hides_secrets() {
        let a = Access {
            basic: Some(("user".into(), "hunter2".into())),
            bearer: Some("tok3n".into()),
            ca_pem: None,
        };
        let s = format!("{a:?}");
        assert!(!s.contains("hunter2") && !s.contains("tok3n"), "{s}");
        assert_eq!(a.authorization().unwrap(), "Basic dXNlcjpodW50ZXIy");
    }
}
