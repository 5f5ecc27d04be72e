//! `bench fanout --agents N --objects M`: how fast one hub gets a new revision to N agents.
//!
//! The hub runs in a child process (`bench fanout-hub`, this same binary) so that its CPU time
//! and resident memory are its own; N simulated agents run in this process, each with its own
//! mTLS connection on loopback, its own key and certificate, verifying every bundle with the
//! real agent code. A revision is published to every cluster (each bundle encoded, digested and
//! signed for its cluster) and the clock runs until every agent has verified and acknowledged
//! it.
//!
//! The reference, in the same run and on the same machine: the same N agents fetching the same
//! signed bundles by HTTPS polling (HTTP/1.1 keep-alive, mTLS with the same certificates,
//! `If-None-Match` on the sequence), the pull model of a GitOps agent polling an endpoint.
//! Its latency is bounded below by the polling interval; its CPU cost is paid on every poll
//! whether or not anything changed.

// The comparison table and the RESULT line are this command's output.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use flotilla_agent::connect::{self, Agent, HubEndpoint, Registration};
use flotilla_agent::verify::Verifier;
use flotilla_bundle::{SigningKey, TrustedKeys};
use flotilla_hub::delivery::{Config, Hub, HubCa};
use flotilla_hub::fleet::MemoryRegistry;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::sim::{AckingSink, RunningHub, objects};

const DELIVERY: &str = "apps";

/// Arguments of `bench fanout`.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Simulated agents, each its own cluster and mTLS connection.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Objects per bundle (ConfigMaps of about 300 bytes).
    #[arg(long, default_value_t = 50)]
    pub objects: usize,
    /// Polling interval of the HTTPS reference, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// Skip the HTTPS polling reference.
    #[arg(long)]
    pub no_reference: bool,
}

/// Arguments of the hidden `bench fanout-hub` child.
#[derive(Debug, clap::Args)]
pub struct FanoutHubArgs {
    /// Clusters to register.
    #[arg(long)]
    pub agents: usize,
    /// Objects per bundle.
    #[arg(long)]
    pub objects: usize,
    /// Directory to write the CA and bootstrap tokens to.
    #[arg(long)]
    pub dir: PathBuf,
}

fn cluster_name(i: usize) -> String {
    format!("c{i:05}")
}

/// CPU time (user + system) and resident memory of this process, from /proc.
fn self_usage() -> (Duration, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on every Linux this runs on.
    let cpu = Duration::from_millis(ticks * 10);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (cpu, rss_kib)
}

fn raise_nofile() -> anyhow::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")
}

// ---------------------------------------------------------------------------------------------
// The hub child.

/// Runs the hub side: registers clusters, serves the hub and the polling reference, and obeys
/// line commands on stdin (`PUBLISH rev`, `STATS seq`, `QUIT`).
pub async fn run_hub(args: FanoutHubArgs) -> anyhow::Result<()> {
    raise_nofile()?;
    let ca = Arc::new(HubCa::generate("flotilla bench hub")?);
    let registry = Arc::new(MemoryRegistry::default());
    let hub = Hub::new(
        registry.clone(),
        ca.clone(),
        SigningKey::generate()?,
        Config::default(),
    )?;
    let running = RunningHub::start(hub.clone()).await?;
    let mut tokens = String::new();
    for i in 0..args.agents {
        let c = cluster_name(i);
        let t = running.accepted_cluster(&c).await?;
        tokens.push_str(&format!("{c} {}\n", t.expose()));
    }
    std::fs::write(args.dir.join("tokens"), tokens)?;
    std::fs::write(args.dir.join("ca.pem"), hub.ca_pem())?;
    let reference = reference_server(hub.clone(), &ca).await?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "READY {} {} {}",
        running.addrs.0, running.addrs.1, reference
    )?;
    out.flush()?;
    drop(out);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut published = vec![0u64; args.agents];
    // The rendered objects of the next revision, per cluster: rendering is `bench render`'s
    // business, so it happens before the clock starts.
    let mut prepared: Option<(String, Vec<Vec<serde_json::Value>>)> = None;
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let reply = match (words.next(), words.next()) {
            (Some("PREPARE"), Some(rev)) => {
                let t0 = Instant::now();
                let rendered = (0..args.agents)
                    .map(|i| objects(&cluster_name(i), rev, args.objects))
                    .collect();
                prepared = Some((rev.to_owned(), rendered));
                format!("PREPARED {}", t0.elapsed().as_millis())
            }
            (Some("PUBLISH"), Some(rev)) => {
                let t0 = Instant::now();
                let rendered = match prepared.take() {
                    Some((r, rendered)) if r == rev => rendered,
                    _ => (0..args.agents)
                        .map(|i| objects(&cluster_name(i), rev, args.objects))
                        .collect(),
                };
                let mut seq = 0;
                for ((i, p), objects) in published.iter_mut().enumerate().zip(rendered) {
                    // Encoded, digested and signed for its cluster, inside the timed window.
                    seq = hub.publish(&cluster_name(i), DELIVERY, rev, &objects)?;
                    *p = seq;
                }
                format!("PUBLISHED {seq} {}", t0.elapsed().as_millis())
            }
            (Some("STATS"), _) => {
                // Acks of the latest publication, per cluster.
                let acked = published
                    .iter()
                    .enumerate()
                    .filter(|(i, seq)| {
                        **seq > 0
                            && hub
                                .acked_sequence(&cluster_name(*i), DELIVERY)
                                .is_some_and(|a| a >= **seq)
                    })
                    .count();
                let (cpu, rss) = self_usage();
                format!(
                    "STATS {} {} {} {}",
                    cpu.as_millis(),
                    rss,
                    hub.connected_count(),
                    acked
                )
            }
            (Some("QUIT"), _) | (None, _) => break,
            _ => format!("ERROR unknown command {line:?}"),
        };
        stdout.write_all(format!("{reply}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    running.stop().await
}

fn server_config(hub: &Hub, ca: &HubCa) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let id = ca.issue_server(
        &["localhost".into(), "127.0.0.1".into()],
        Duration::from_secs(86400),
    )?;
    let certs =
        CertificateDer::pem_slice_iter(id.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())?;
    let _ = hub;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// The polling reference: `GET /bundles/apps` over mTLS returns the caller's latest signed
/// bundle (cluster from the client certificate), or 304 when `If-None-Match` names its sequence.
async fn reference_server(hub: Hub, ca: &HubCa) -> anyhow::Result<std::net::SocketAddr> {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&hub, ca)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, hub) = (acceptor.clone(), hub.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cluster = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| flotilla_hub::delivery::ca::cluster_from_cert(c).ok());
                let Some(cluster) = cluster else { return };
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let bundle = hub.latest(&cluster, DELIVERY);
                    async move {
                        let etag = req
                            .headers()
                            .get(hyper::header::IF_NONE_MATCH)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        match bundle {
                            Some(b)
                                if etag.as_deref() == Some(&b.header.meta.sequence.to_string()) =>
                            {
                                hyper::Response::builder()
                                    .status(304)
                                    .body(Full::new(Bytes::new()))
                            }
                            Some(b) => hyper::Response::builder()
                                .header(hyper::header::ETAG, b.header.meta.sequence.to_string())
                                .body(Full::new(Bytes::from(
                                    flotilla_proto::convert::bundle_to_bytes(&b),
                                ))),
                            None => hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new())),
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// The agents' side.

struct Child {
    proc: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    async fn ask(&mut self, command: &str) -> anyhow::Result<Vec<String>> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        let line = self.lines.next_line().await?.context("hub child exited")?;
        if line.starts_with("ERROR") {
            bail!("hub child: {line}");
        }
        Ok(line.split_whitespace().skip(1).map(str::to_owned).collect())
    }

    /// (cpu, rss KiB, connected, acked at or past `seq`)
    async fn stats(&mut self, seq: u64) -> anyhow::Result<(Duration, u64, usize, usize)> {
        let v = self.ask(&format!("STATS {seq}")).await?;
        let n = |i: usize| v.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        Ok((
            Duration::from_millis(n(0)),
            n(1),
            n(2) as usize,
            n(3) as usize,
        ))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

struct Round {
    latencies: Vec<Duration>,
    cpu: Duration,
    hub_confirmed: Duration,
}

/// Runs the benchmark and prints the comparison and the RESULT line.
pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let limit = raise_nofile()?;
    anyhow::ensure!(
        limit as usize > args.agents + 100,
        "open-file limit {limit} is too low for {} agents",
        args.agents
    );
    let dir = tempfile_dir()?;
    let mut proc = tokio::process::Command::new(std::env::current_exe()?)
        .args(["fanout-hub", "--agents", &args.agents.to_string()])
        .args(["--objects", &args.objects.to_string()])
        .arg("--dir")
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the hub child")?;
    let stdin = proc.stdin.take().context("child stdin")?;
    let mut lines = tokio::io::BufReader::new(proc.stdout.take().context("child stdout")?).lines();
    let ready = lines
        .next_line()
        .await?
        .context("hub child exited before READY")?;
    let addrs: Vec<std::net::SocketAddr> = ready
        .split_whitespace()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad READY line {ready:?}"))?;
    anyhow::ensure!(addrs.len() == 3, "bad READY line {ready:?}");
    let mut child = Child { proc, stdin, lines };
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem"))?;
    let tokens = std::fs::read_to_string(dir.join("tokens"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let endpoint = |a: std::net::SocketAddr| HubEndpoint {
        url: format!("https://{a}"),
        server_name: "localhost".into(),
        ca_pem: ca_pem.clone(),
    };
    let (reg, del) = (endpoint(addrs[0]), endpoint(addrs[1]));

    println!(
        "fanout: {} agents, {} objects per bundle, {} cores",
        args.agents,
        args.objects,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let t = Instant::now();
    let mut registrations = Vec::with_capacity(args.agents);
    let pairs: Vec<(String, String)> = tokens
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    for batch in pairs.chunks(64) {
        let joined = futures::future::join_all(
            batch
                .iter()
                .map(|(_, token)| connect::register(&reg, token, "bench")),
        )
        .await;
        for r in joined {
            registrations.push(r?);
        }
    }
    println!(
        "registered {} agents in {:.1} s",
        registrations.len(),
        t.elapsed().as_secs_f64()
    );

    let (_, rss_idle, _, _) = child.stats(u64::MAX).await?;
    let stop = CancellationToken::new();
    let mut sinks = Vec::with_capacity(args.agents);
    let mut config = connect::Config::new(del.clone());
    config.heartbeat_interval = Duration::from_secs(15);
    let t = Instant::now();
    for r in &registrations {
        let sink = Arc::new(AckingSink::counting());
        let agent = Agent::new(config.clone(), r.clone(), sink.clone());
        let stop = stop.clone();
        tokio::spawn(async move { agent.run(stop).await });
        sinks.push(sink);
    }
    loop {
        let (_, _, connected, _) = child.stats(u64::MAX).await?;
        if connected == args.agents {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "only {connected} agents connected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_connected, _, _) = child.stats(u64::MAX).await?;
    println!(
        "connected {} agents in {:.1} s",
        args.agents,
        t.elapsed().as_secs_f64()
    );

    let warm = publish_round(&mut child, &sinks, "rev1").await?;
    println!(
        "warm-up revision: max {} ms",
        ms(*warm.latencies.last().unwrap_or(&Duration::ZERO))
    );
    let r = publish_round(&mut child, &sinks, "rev2").await?;
    let (_, rss_after, _, _) = child.stats(u64::MAX).await?;
    stop.cancel();
    drop(sinks);

    let kib_per_agent = rss_connected.saturating_sub(rss_idle) as f64 / args.agents as f64;
    let (p50, p99, max) = (
        percentile(&r.latencies, 0.50),
        percentile(&r.latencies, 0.99),
        percentile(&r.latencies, 1.0),
    );

    let reference = if args.no_reference {
        None
    } else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some(reference_round(&mut child, &registrations, addrs[2], &ca_pem, &args).await?)
    };
    let _ = child.ask("QUIT").await;
    let _ = child.proc.wait().await;

    println!();
    println!("{:<34} {:>14} {:>14}", "", "flotilla", "https-polling");
    let refs = |f: &dyn Fn(&RefResult) -> String| reference.as_ref().map_or("-".to_owned(), f);
    println!(
        "{:<34} {:>14} {:>14}",
        "p50 publish→verified+acked (ms)",
        ms(p50),
        refs(&|x| ms(x.p50))
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "p99 (ms)",
        ms(p99),
        refs(&|x| ms(x.p99))
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "max (ms)",
        ms(max),
        refs(&|x| ms(x.max))
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "hub confirmed all acks (ms)",
        ms(r.hub_confirmed),
        "-"
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "hub CPU for the revision (ms)",
        r.cpu.as_millis(),
        refs(&|x| x.cpu.as_millis().to_string())
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "hub RSS connected (MiB)",
        format!("{:.1}", rss_connected as f64 / 1024.0),
        refs(&|x| format!("{:.1}", x.rss_kib as f64 / 1024.0))
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "hub RSS after publish (MiB)",
        format!("{:.1}", rss_after as f64 / 1024.0),
        "-"
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "KiB per connected agent",
        format!("{kib_per_agent:.1}"),
        refs(&|x| format!("{:.1}", x.kib_per_agent))
    );
    let ratio = reference.as_ref().map_or("-".to_owned(), |x| {
        format!("{:.1}", x.p50.as_secs_f64() / p50.as_secs_f64().max(1e-6))
    });
    println!(
        "RESULT fanout agents={} objects={} p50_ms={} p99_ms={} max_ms={} hub_rss_mib={:.1} kib_per_agent={:.1} hub_cpu_ms={} ref_p50_ms={} ref_max_ms={} ref_cpu_ms={} p50_speedup_vs_polling={}",
        args.agents,
        args.objects,
        ms(p50),
        ms(p99),
        ms(max),
        rss_after as f64 / 1024.0,
        kib_per_agent,
        r.cpu.as_millis(),
        refs(&|x| ms(x.p50)),
        refs(&|x| ms(x.max)),
        refs(&|x| x.cpu.as_millis().to_string()),
        ratio,
    );
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("flotilla-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn publish_round(
    child: &mut Child,
    sinks: &[Arc<AckingSink>],
    rev: &str,
) -> anyhow::Result<Round> {
    let before: Vec<u64> = sinks.iter().map(|s| *s.latest().borrow()).collect();
    child.ask(&format!("PREPARE {rev}")).await?;
    let (cpu0, _, _, _) = child.stats(u64::MAX).await?;
    let t0 = Instant::now();
    let receivers: Vec<_> = sinks.iter().map(|s| s.latest()).collect();
    // Each agent's latency is read from the moment its sink was handed the verified bundle, not
    // from when this waiting task got to run (it competes for the same cores).
    let waits = receivers.into_iter().zip(before).zip(sinks.to_vec()).map(
        move |((mut rx, b), sink)| async move {
            rx.wait_for(|v| *v > b).await.ok();
            sink.applied_at()
                .map_or_else(|| t0.elapsed(), |at| at.saturating_duration_since(t0))
        },
    );
    let waiting = tokio::spawn(async move {
        let all = futures::future::join_all(waits);
        tokio::time::timeout(Duration::from_secs(120), all).await
    });
    let published = child.ask(&format!("PUBLISH {rev}")).await?;
    let seq: u64 = published.first().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut latencies = waiting
        .await?
        .context("not every agent verified the revision within 120 s")?;
    latencies.sort();
    // Acks travel back after verification; the hub confirms them all.
    let hub_confirmed = loop {
        let (_, _, _, acked) = child.stats(seq).await?;
        if acked == sinks.len() {
            break t0.elapsed();
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "hub has only {acked} acks"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (cpu1, _, _, _) = child.stats(u64::MAX).await?;
    Ok(Round {
        latencies,
        cpu: cpu1.saturating_sub(cpu0),
        hub_confirmed,
    })
}

struct RefResult {
    p50: Duration,
    p99: Duration,
    max: Duration,
    cpu: Duration,
    rss_kib: u64,
    kib_per_agent: f64,
}

fn client_config(r: &Registration, ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let key = PrivateKeyDer::from_pem_slice(r.identity.key_pem.as_bytes())?;
    let cert = CertificateDer::from(r.identity.cert_der.to_vec());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)?,
    ))
}

/// One polling agent: fetches until stopped, verifying each new bundle, and reports the time
/// (since `t0`) at which it first held a sequence above `after`.
async fn poller(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    mut verifier: Verifier,
    interval: Duration,
    progress: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    // Pollers start at a random point of the interval, as independent agents would.
    tokio::time::sleep(interval.mul_f64(fastrand_f64())).await;
    let mut tick = tokio::time::interval(interval);
    let mut etag = String::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let req = hyper::Request::get("/bundles/apps")
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::IF_NONE_MATCH, etag.as_str())
            .body(Full::new(Bytes::new()))?;
        let resp = sender.send_request(req).await?;
        if resp.status() != 200 {
            let _ = resp.into_body().collect().await;
            continue;
        }
        let body = resp.into_body().collect().await?.to_bytes();
        let bundle = flotilla_proto::convert::bundle_from_bytes(&body)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        etag = bundle.header.meta.sequence.to_string();
        if let flotilla_agent::verify::Verdict::New(b) = verifier.verify(bundle, now)? {
            // The same per-object work as the streaming agent's sink.
            let n = b.objects()?.len();
            std::hint::black_box(n);
            progress.send_replace(b.meta.sequence);
        }
    }
}

fn fastrand_f64() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom_fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn getrandom_fill(b: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(b)
}

async fn reference_round(
    child: &mut Child,
    registrations: &[Registration],
    addr: std::net::SocketAddr,
    ca_pem: &str,
    args: &FanoutArgs,
) -> anyhow::Result<RefResult> {
    let (_, rss_idle, _, _) = child.stats(u64::MAX).await?;
    let stop = CancellationToken::new();
    let interval = Duration::from_millis(args.poll_ms);
    let mut progress = Vec::new();
    let mut failures: HashMap<String, usize> = HashMap::new();
    for r in registrations {
        let key_set = &r.key_set.key_set;
        let verifier = Verifier::new(
            r.cluster.clone(),
            TrustedKeys::new(key_set.keys.clone()),
            key_set.sequence,
        );
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        progress.push(rx);
        let config = client_config(r, ca_pem)?;
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = poller(config, addr, verifier, interval, tx, stop).await {
                tracing::warn!(error = %e, "poller failed");
            }
        });
    }
    // Every poller first fetches the current revision.
    let t = Instant::now();
    for rx in &mut progress {
        let remaining = Duration::from_secs(300).saturating_sub(t.elapsed());
        if tokio::time::timeout(remaining, rx.wait_for(|s| *s > 0))
            .await
            .is_err()
        {
            *failures.entry("initial fetch".into()).or_default() += 1;
        }
    }
    anyhow::ensure!(failures.is_empty(), "pollers failed: {failures:?}");
    tokio::time::sleep(interval).await;
    let (cpu0, rss_kib, _, _) = child.stats(u64::MAX).await?;
    let t0 = Instant::now();
    let before: Vec<u64> = progress.iter().map(|r| *r.borrow()).collect();
    let waits = progress
        .into_iter()
        .zip(before)
        .map(|(mut rx, b)| async move {
            rx.wait_for(|v| *v > b).await.ok();
            t0.elapsed()
        });
    let waiting = tokio::spawn(tokio::time::timeout(
        Duration::from_secs(120),
        futures::future::join_all(waits),
    ));
    child.ask("PUBLISH rev3").await?;
    let mut latencies = waiting
        .await?
        .context("not every poller fetched rev3 within 120 s")?;
    latencies.sort();
    let (cpu1, _, _, _) = child.stats(u64::MAX).await?;
    stop.cancel();
    Ok(RefResult {
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        max: percentile(&latencies, 1.0),
        cpu: cpu1.saturating_sub(cpu0),
        rss_kib,
        kib_per_agent: rss_kib.saturating_sub(rss_idle) as f64 / registrations.len() as f64,
    })
}
