//! Hub leader election on a real control plane: exactly one of two replicas leads, a clean
//! shutdown hands over at once, a crashed leader is replaced after the lease duration, a leader
//! cut off from the API server stops leading before anyone else starts — and at no sampled
//! instant do two replicas lead. Runs with FLOTILLA_E2E=1.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use flotilla_e2e::{TestCluster, eventually, skip_unless_e2e};
use flotilla_hub::leader::{LeaderElector, Leadership, LeaseConfig};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "default";
const LEASE: &str = "flotilla-hub";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PERIOD: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(30);

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY_PERIOD,
        ..LeaseConfig::new(NAMESPACE, LEASE, identity)
    }
}

struct Replica {
    identity: &'static str,
    shutdown: CancellationToken,
    leadership: Leadership,
}

fn start(client: Client, identity: &'static str) -> Result<Replica> {
    let shutdown = CancellationToken::new();
    let leadership = LeaderElector::new(client, config(identity))?.run(shutdown.clone());
    Ok(Replica {
        identity,
        shutdown,
        leadership,
    })
}

/// Whether a replica leads: its flag is up and its task still runs (an aborted task leads no
/// more, as a crashed process would not).
fn leads(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() && rx.has_changed().is_ok()
}

/// Samples every replica's flag every 2 ms in the background; counts samples and any instant
/// at which two lead.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicU64>,
    overlaps: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(flags: Vec<watch::Receiver<bool>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicU64::new(0));
        let overlaps = Arc::new(AtomicU64::new(0));
        let (s, n, o) = (stop.clone(), samples.clone(), overlaps.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let leaders = flags.iter().filter(|rx| leads(rx)).count();
                n.fetch_add(1, Ordering::Relaxed);
                if leaders > 1 {
                    o.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Self {
            stop,
            samples,
            overlaps,
            task,
        }
    }

    async fn finish(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?;
        let samples = self.samples.load(Ordering::Relaxed);
        let overlaps = self.overlaps.load(Ordering::Relaxed);
        ensure!(samples > 100, "only {samples} samples taken");
        ensure!(
            overlaps == 0,
            "two replicas led at once in {overlaps} of {samples} samples"
        );
        Ok(())
    }
}

async fn holder(client: &Client) -> Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let lease = leases.get(LEASE).await.context("reading the lease")?;
    Ok(lease.spec.and_then(|s| s.holder_identity))
}

async fn wait_leading(replica: &Replica) -> Result<Duration> {
    let start = Instant::now();
    eventually(&format!("{} to lead", replica.identity), WAIT, || async {
        leads(&replica.leadership.is_leader).then_some(())
    })
    .await?;
    Ok(start.elapsed())
}

/// Polls a replica's flag every 5 ms until it leads; returns how long that took.
async fn time_until_leading(replica: &Replica, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    while !leads(&replica.leadership.is_leader) {
        ensure!(
            start.elapsed() < limit,
            "{} did not lead within {limit:?}",
            replica.identity
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(start.elapsed())
}

#[tokio::test]
async fn one_leads_and_a_clean_shutdown_hands_over_at_once() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let cluster = TestCluster::start("leader-handover").await?;
    let client = cluster.client().await?;
    let a = start(client.clone(), "hub-a")?;
    let b = start(client.clone(), "hub-b")?;
    let sampler = Sampler::start(vec![
        a.leadership.is_leader.clone(),
        b.leadership.is_leader.clone(),
    ]);

    eventually("one replica to lead", WAIT, || async {
        (leads(&a.leadership.is_leader) || leads(&b.leadership.is_leader)).then_some(())
    })
    .await?;
    let (leader, follower) = if leads(&a.leadership.is_leader) {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(holder(&client).await?.as_deref(), Some(leader.identity));

    // Longer than the lease duration: the leader renews, the follower never takes over.
    let steady = Instant::now();
    while steady.elapsed() < LEASE_DURATION * 2 {
        assert!(
            leads(&leader.leadership.is_leader),
            "the leader stopped leading"
        );
        assert!(!leads(&follower.leadership.is_leader), "the follower led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(holder(&client).await?.as_deref(), Some(leader.identity));

    let stopping = Instant::now();
    leader.shutdown.cancel();
    let handover = time_until_leading(&follower, Duration::from_secs(2)).await?;
    tokio::time::timeout(Duration::from_secs(5), leader.leadership.task)
        .await
        .context("the old leader's task did not end")??;
    assert!(
        handover < Duration::from_millis(1500),
        "handover took {handover:?}"
    );
    assert_eq!(holder(&client).await?.as_deref(), Some(follower.identity));
    sampler.finish().await?;
    tracing::info!(?handover, since_cancel = ?stopping.elapsed(), "handover");

    // The new leader releases too: the lease ends with no holder.
    follower.shutdown.cancel();
    follower.leadership.task.await?;
    assert_eq!(holder(&client).await?, None);
    Ok(())
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_after_the_lease_duration() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let cluster = TestCluster::start("leader-crash").await?;
    let client = cluster.client().await?;
    let a = start(client.clone(), "hub-a")?;
    wait_leading(&a).await?;
    let b = start(client.clone(), "hub-b")?;
    let sampler = Sampler::start(vec![
        a.leadership.is_leader.clone(),
        b.leadership.is_leader.clone(),
    ]);
    // b has seen a renew for a while.
    tokio::time::sleep(LEASE_DURATION).await;
    assert!(!leads(&b.leadership.is_leader), "b took a live lease");

    // Crash: the task is dropped, nothing is released.
    a.leadership.task.abort();
    let _ = a.leadership.task.await;
    let takeover = time_until_leading(&b, LEASE_DURATION * 3).await?;
    assert!(
        takeover >= LEASE_DURATION - RETRY_PERIOD * 2,
        "b took over after {takeover:?}, before the lease could expire"
    );
    assert!(
        takeover <= LEASE_DURATION + Duration::from_millis(1500),
        "b took over only after {takeover:?}"
    );
    assert_eq!(holder(&client).await?.as_deref(), Some("hub-b"));
    sampler.finish().await?;
    drop(a.shutdown);
    b.shutdown.cancel();
    b.leadership.task.await?;
    Ok(())
}

/// A TCP proxy to the API server that can be made a black hole: open connections are cut and
/// new ones accepted but never answered, as when a network partition strands a replica.
struct Proxy {
    port: u16,
    blocked: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (blocked, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() {
                    held.push(inbound); // never answered
                    continue;
                }
                let mut blocked = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = blocked.wait_for(|b| *b) => {}
                    }
                });
            }
        });
        Ok(Self {
            port,
            blocked,
            task,
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_steps_down_before_takeover() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let cluster = TestCluster::start("leader-partition").await?;
    let client = cluster.client().await?;
    let proxy = Proxy::start(cluster.state().api_port).await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(cluster.kubeconfig())?;
    let mut via_proxy =
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    via_proxy.cluster_url = format!("https://127.0.0.1:{}", proxy.port).parse()?;
    let a = start(Client::try_from(via_proxy)?, "hub-a")?;
    wait_leading(&a).await?;
    let b = start(client.clone(), "hub-b")?;
    let sampler = Sampler::start(vec![
        a.leadership.is_leader.clone(),
        b.leadership.is_leader.clone(),
    ]);
    tokio::time::sleep(LEASE_DURATION).await;
    assert!(leads(&a.leadership.is_leader));
    assert!(!leads(&b.leadership.is_leader));

    let cut = Instant::now();
    proxy.blocked.send_replace(true);
    let mut a_flag = a.leadership.is_leader.clone();
    tokio::time::timeout(RENEW_DEADLINE * 2, a_flag.wait_for(|leading| !leading))
        .await
        .context("the cut-off leader kept leading")??;
    let stepped_down = cut.elapsed();
    assert!(
        stepped_down <= RENEW_DEADLINE + Duration::from_millis(500),
        "stepped down only after {stepped_down:?}"
    );
    time_until_leading(&b, LEASE_DURATION * 3).await?;
    let takeover = cut.elapsed();
    assert!(
        takeover >= LEASE_DURATION - RETRY_PERIOD * 2,
        "b took over {takeover:?} after the cut, before the lease could expire"
    );
    assert_eq!(holder(&client).await?.as_deref(), Some("hub-b"));
    assert!(a.leadership.task.is_finished() || !leads(&a.leadership.is_leader));
    sampler.finish().await?;

    a.shutdown.cancel();
    b.shutdown.cancel();
    b.leadership.task.await?;
    Ok(())
}
