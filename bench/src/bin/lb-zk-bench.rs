//! The control plane's benchmark (`cargo xtask bench` runs it after the XDP benchmark): a lab with
//! ZooKeeper in the router namespace and `lb run --zk` on the load balancer, measuring
//!
//! 1. ZooKeeper write → map applied: a backend node's weight is rewritten (one `set_data`, after
//!    a `get_data` for its version), then the pinned `LB_BACKENDS` entry is polled until it shows
//!    the new weight; timed from the write and from the start of the read-modify-write;
//! 2. cold start: a daemon started against a populated ZooKeeper (1,000 services × 100 backends by
//!    default), until every service is in `LB_SERVICES` and `lb status` shows them all.
//!
//! Prints a markdown table. Uses the lab and the test ZooKeeper server of `lb-tests`. Needs root,
//! bpffs and Debian's `zookeeper`; `LB_BIN` names the `lb` binary the daemon runs as.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use lb_common::BACKEND_F_VALID;
use lb_tests::eventually::Eventually;
use lb_tests::lab::NsProcess;
use lb_tests::lab::topology::ROUTER_LBS_V4;
use lb_tests::lab::{lb_bin, run_in_netns};
use lb_tests::zk_server::{ZkServer, ZkServerOptions};
use lb_tests::{Lab, LabOptions};
use lb_userspace::admin;
use lb_userspace::dataplane::MapsView;
use lb_userspace::zk::acl::node_acls;
use lb_userspace::zk::client::ZkTarget;
use zookeeper_client::{Client, CreateMode};

#[derive(Parser, Debug)]
#[command(about = "Benchmark the ZooKeeper control plane of lb in a namespace lab")]
struct Args {
    /// Weight changes timed (write → LB_BACKENDS shows it).
    #[arg(long, default_value_t = 500)]
    changes: usize,
    /// Services of the cold start.
    #[arg(long, default_value_t = 1000)]
    services: u32,
    /// Backends per service of the cold start.
    #[arg(long, default_value_t = 100)]
    backends: u32,
    /// Map sizes of the cold-start daemon (the default 65,536 backends do not hold 1,000 × 100).
    #[arg(long, default_value_t = lb_common::limits::DEFAULT_MAX_SERVICES)]
    max_services: u32,
    #[arg(long, default_value_t = 131_072)]
    max_backends: u32,
    #[arg(long, default_value_t = lb_common::limits::DEFAULT_TABLE_SIZE)]
    table_size: u32,
    /// Scheduler of the cold-start services (maglev builds the largest tables).
    #[arg(long, default_value = "maglev")]
    scheduler: String,
    /// Skip the cold start (it needs a few hundred MB for the tables).
    #[arg(long)]
    skip_cold_start: bool,
    /// Distinct backend IP addresses across the cold start's services (each a next hop the
    /// daemon resolves).
    #[arg(long, default_value_t = 10_000)]
    distinct_ips: u32,
    /// Weight changes timed on the cold-started daemon (its full state loaded).
    #[arg(long, default_value_t = 20)]
    fleet_changes: usize,
    /// Copy the cold-start daemon's log here (its phase timings), before the lab is removed.
    #[arg(long)]
    daemon_log: Option<std::path::PathBuf>,
    /// Keep the cold-started daemon and its lab this many seconds after the measurements (to
    /// profile `lb status` or a scrape by hand); prints its pin directory and namespace.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

/// Where the cold-start daemon serves /metrics (in its namespace).
const COLD_METRICS: &str = "127.0.0.1:9913";

/// Bounds of every wait.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
const COLD_START_TIMEOUT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_micros(200);
/// Interval of the waits for the daemon (not timed to the microsecond).
const WAIT_POLL: Duration = Duration::from_millis(5);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lb_bin = lb_bin()?;
    let mut lab = Lab::start(LabOptions {
        lb_bin: Some(lb_bin.clone()),
        ..LabOptions::default()
    })
    .context("starting the lab")?;
    let zk = ZkServer::start_with(ZkServerOptions {
        netns: Some(lab.router_netns()),
        bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ..ZkServerOptions::default()
    })
    .context("starting ZooKeeper in the router namespace")?;
    let local_zk = zk.connect_string();
    let lb_zk = format!("{ROUTER_LBS_V4}:{}", zk.port());

    eprintln!("lb-zk-bench: {} weight changes", args.changes);
    // The daemon's default debounce (a full read once writes pause for 100 ms), then none: what
    // the read-build-apply path itself costs.
    let mut latencies = Vec::new();
    for debounce_ms in [100, 0] {
        let measured =
            write_to_map_latency(&mut lab, &local_zk, &lb_zk, args.changes, debounce_ms)?;
        lab.stop_lb(0)?;
        latencies.push((debounce_ms, measured));
    }
    let cold = if args.skip_cold_start {
        None
    } else {
        eprintln!(
            "lb-zk-bench: cold start, {} services x {} backends",
            args.services, args.backends
        );
        Some(cold_start(&lab, &lb_bin, &local_zk, &lb_zk, &args))
    };
    // The latency figures are printed even when the cold start failed.
    let cold = cold.transpose();
    print_table(
        &args,
        &latencies,
        cold.as_ref().ok().and_then(Option::as_ref),
    );
    cold.map(drop)
}

// ---- write → map latency ---------------------------------------------------------------------------

/// Times `changes` weight changes of one backend from the admin client's write to the map entry.
fn write_to_map_latency(
    lab: &mut Lab,
    local_zk: &str,
    lb_zk: &str,
    changes: usize,
    debounce_ms: u64,
) -> anyhow::Result<Vec<ChangeLatency>> {
    let vip: SocketAddr = SocketAddr::new(IpAddr::V4(Lab::vip_v4(1)), 80);
    let backends: Vec<SocketAddr> = (0..3).map(|i| Lab::backend_addr(i, false)).collect();
    let target = ZkTarget::new(local_zk, "/lb", None)?;
    in_router(lab, local_zk, {
        let target = target.clone();
        let backends = backends.clone();
        move |client| async move {
            let edit = admin::ServiceEdit {
                vip: Some(vip),
                scheduler: Some("maglev".into()),
                ..Default::default()
            };
            admin::put_service(&client, &target, "web", &edit).await?;
            for b in &backends {
                admin::put_backend(&client, &target, "web", *b, &admin::BackendEdit::default())
                    .await?;
            }
            Ok(())
        }
    })?;
    let debounce = debounce_ms.to_string();
    lab.start_lb_zk(
        0,
        lb_zk,
        &[
            "--zk-debounce-ms",
            &debounce,
            "--zk-debounce-max-ms",
            &debounce,
        ],
    )?;
    let pin_dir = lab.lb_pin_dir(0);
    let measured = backends[2];
    let id = Eventually::new("the daemon to apply the service", APPLY_TIMEOUT)
        .every(WAIT_POLL)
        .poll(|| {
            let maps = MapsView::open_pinned(&pin_dir).ok();
            maps.and_then(|maps| backend_id(&maps, measured))
                .ok_or("not applied")
        })?;
    let maps = MapsView::open_pinned(&pin_dir)?;

    // Single changes, as an operator makes them: each after a quiet period (a burst is
    // coalesced by the debounce instead, which is not what this measures).
    let quiet = Duration::from_millis(debounce_ms + 20);
    in_router(lab, local_zk, move |client| async move {
        time_weight_changes(&client, &target, "web", measured, id, &maps, changes, quiet).await
    })
}

/// The id of the valid `LB_BACKENDS` entry for `addr`.
fn backend_id(maps: &MapsView, addr: SocketAddr) -> Option<u32> {
    maps.backend_slots().ok()?.into_iter().find_map(|slot| {
        let b = slot.entry;
        (b.flags & BACKEND_F_VALID != 0
            && lb_common::addr::from_words(b.addr, b.family) == Some(addr.ip())
            && u16::from_be(b.port_be) == addr.port())
        .then_some(slot.id)
    })
}

// ---- cold start ----------------------------------------------------------------------------------

struct ColdStart {
    services: u32,
    backends: u32,
    /// Writing the tree (multi-op transactions, pipelined).
    populate: Duration,
    /// Daemon spawned → its maps are pinned (first full read of ZooKeeper, maps created).
    to_pinned: Duration,
    /// Daemon spawned → every service in `LB_SERVICES`.
    to_all_services: Duration,
    /// `lb status --json` reading that state once.
    status_call: Duration,
    /// From the daemon's log: start → first state read from ZooKeeper, start → data plane loaded
    /// (the two run at once).
    first_state_read: Option<Duration>,
    dataplane_loaded: Option<Duration>,
    /// The same services' tables built in this process: one after another, and on every CPU.
    tables_sequential: Duration,
    tables_parallel: Duration,
    /// Daemon spawned → /metrics answers (start-up done, next hops resolved).
    to_serving: Duration,
    /// /metrics scrapes of that state.
    scrapes: Vec<Duration>,
    /// Weight changes applied on that state.
    changes: Vec<ChangeLatency>,
    /// ZooKeeper sessions the daemon opened, and log lines about an expiry.
    sessions: usize,
    expired: usize,
}

fn cold_start(
    lab: &Lab,
    lb_bin: &Path,
    local_zk: &str,
    lb_zk: &str,
    args: &Args,
) -> anyhow::Result<ColdStart> {
    ensure!(
        args.services <= 60_000 && args.backends <= 60_000,
        "--services and --backends are at most 60000 (ports and addresses of the generated tree)"
    );
    let target = ZkTarget::new(local_zk, "/lb", None)?;
    ensure!(
        (1..=60_000).contains(&args.distinct_ips),
        "--distinct-ips is 1 to 60000"
    );
    let (services, backends, scheduler) = (args.services, args.backends, args.scheduler.clone());
    let distinct_ips = args.distinct_ips;
    let started = Instant::now();
    in_router(lab, local_zk, move |client| async move {
        admin::remove_service(&client, &target, "web").await?;
        populate(
            &client,
            &target,
            services,
            backends,
            distinct_ips,
            &scheduler,
        )
        .await
    })?;
    let populate = started.elapsed();

    // The latency runs' daemon left its program attached to eth0 (as `lb run` does on exit).
    lab.lb_detach(0)
        .context("detaching the latency runs' balancer before the cold start")?;
    let pin_dir = lab.pin_root_path().join("cold");
    let log = lab.dir().join("cold-start.log");
    let run_args: Vec<String> = [
        "run",
        "--iface",
        "eth0",
        "--zk",
        lb_zk,
        "--pin-dir",
        path_str(&pin_dir)?,
        "--max-services",
        &args.max_services.to_string(),
        "--max-backends",
        &args.max_backends.to_string(),
        "--table-size",
        &args.table_size.to_string(),
        "--flow-table-size",
        "65536",
        "--persist-table-size",
        "4096",
        "--metrics",
        COLD_METRICS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let started = Instant::now();
    let mut daemon = NsProcess::spawn(
        "lb run (cold start)",
        &lab.lb_netns(0),
        lb_bin,
        &run_args,
        &log,
    )?;
    // A daemon that exits ends the waits at once (check_running fails with its log).
    let cold_wait = |what: &str| Eventually::new(what, COLD_START_TIMEOUT).every(WAIT_POLL);
    let maps =
        cold_wait("the daemon to pin its maps").poll(|| match daemon.check_running() {
            Err(e) => Ok(Err(e)),
            Ok(()) => MapsView::open_pinned(&pin_dir)
                .map(Ok)
                .map_err(|e| e.to_string()),
        })??;
    let to_pinned = started.elapsed();
    cold_wait("every service to be applied").poll(|| {
        if let Err(e) = daemon.check_running() {
            return Ok(Err(e));
        }
        match maps.services() {
            Err(e) => Ok(Err(anyhow::Error::from(e))),
            Ok(s) if s.len() >= services as usize => Ok(Ok(())),
            Ok(s) => Err(format!("{} services", s.len())),
        }
    })??;
    let to_all_services = started.elapsed();

    let status_started = Instant::now();
    let out = Command::new(lb_bin)
        .args(["status", "--json", "--pin-dir", path_str(&pin_dir)?])
        .output()
        .context("running lb status")?;
    let status_call = status_started.elapsed();
    ensure!(
        out.status.success(),
        "lb status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = lb_userspace::status::Status::from_json(&String::from_utf8_lossy(&out.stdout))
        .context("lb status --json")?;
    let shown = status.services.len();
    ensure!(
        shown == services as usize,
        "lb status shows {shown} services, not {services}"
    );
    let shown_backends: usize = status.services.iter().map(|s| s.backends.len()).sum();
    ensure!(
        shown_backends == (services * backends) as usize,
        "lb status shows {shown_backends} backends, not {}",
        services * backends
    );
    // The loop serves /metrics once start-up (next hops included) is done.
    cold_wait("the daemon to serve /metrics").poll(|| {
        if let Err(e) = daemon.check_running() {
            return Ok(Err(e));
        }
        match run_in_netns(&lab.lb_netns(0), || {
            std::net::TcpStream::connect(COLD_METRICS)
        }) {
            Ok(Ok(_)) => Ok(Ok(())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Ok(Err(e)),
        }
    })??;
    let to_serving = started.elapsed();
    let scrapes = time_scrapes(lab, 5)?;
    let changes = fleet_changes(lab, local_zk, &maps, args)?;
    daemon.check_running()?;
    if args.hold_secs > 0 {
        eprintln!(
            "lb-zk-bench: holding {} s: pin dir {}, namespace {}, metrics {COLD_METRICS}",
            args.hold_secs,
            pin_dir.display(),
            lab.lb_netns(0)
        );
        std::thread::sleep(Duration::from_secs(args.hold_secs));
    }
    drop(daemon);
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    if let Some(keep) = &args.daemon_log {
        std::fs::write(keep, &daemon_log)
            .with_context(|| format!("copying the daemon's log to {}", keep.display()))?;
    }
    let sessions = daemon_log.matches("ZooKeeper session open").count();
    let expired = daemon_log.matches("expired").count();
    let (tables_sequential, tables_parallel) = time_table_builds(args)?;
    Ok(ColdStart {
        services,
        backends,
        populate,
        to_pinned,
        to_all_services,
        status_call,
        first_state_read: logged_elapsed(&daemon_log, "first state read from the source"),
        dataplane_loaded: logged_elapsed(&daemon_log, "data plane loaded"),
        tables_sequential,
        tables_parallel,
        to_serving,
        scrapes,
        changes,
        sessions,
        expired,
    })
}

/// Times `n` scrapes of the cold-started daemon's /metrics (from its namespace), checking each is
/// a full answer.
fn time_scrapes(lab: &Lab, n: usize) -> anyhow::Result<Vec<Duration>> {
    use std::io::{Read as _, Write as _};
    run_in_netns(
        &lab.lb_netns(0),
        move || -> anyhow::Result<Vec<Duration>> {
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                let mut stream = std::net::TcpStream::connect(COLD_METRICS)
                    .with_context(|| format!("connecting to {COLD_METRICS}"))?;
                stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
                let mut body = Vec::new();
                stream.read_to_end(&mut body)?;
                times.push(started.elapsed());
                let text = String::from_utf8_lossy(&body);
                ensure!(
                    text.starts_with("HTTP/1.1 200") && text.contains("lb_backend_packets"),
                    "the scrape is not a full answer: {}",
                    text.chars().take(200).collect::<String>()
                );
            }
            Ok(times)
        },
    )?
}

/// Times weight changes of one backend of the middle service on the cold-started daemon (every
/// service and next hop loaded): ZooKeeper write → `LB_BACKENDS` shows it.
fn fleet_changes(
    lab: &Lab,
    local_zk: &str,
    maps: &MapsView,
    args: &Args,
) -> anyhow::Result<Vec<ChangeLatency>> {
    let service = format!("svc{:05}", args.services / 2);
    let addr = SocketAddr::new(
        IpAddr::V4(backend_ip(
            args.services / 2 * args.backends,
            args.distinct_ips,
        )),
        10_000 + (args.services / 2) as u16,
    );
    let id = backend_id(maps, addr)
        .with_context(|| format!("{addr} of {service} is not in LB_BACKENDS"))?;
    let target = ZkTarget::new(local_zk, "/lb", None)?;
    let changes = args.fleet_changes;
    // After the default debounce's quiet period.
    let quiet = Duration::from_millis(150);
    in_router(lab, local_zk, move |client| async move {
        time_weight_changes(&client, &target, &service, addr, id, maps, changes, quiet).await
    })
}

/// One weight change, until the map shows it: from the ZooKeeper write itself (one `set_data` of
/// the backend node: the "write → applied") and from the start of the read-modify-write
/// around it (`get_data` first, as a tool that keeps the node's other fields does).
#[derive(Clone, Copy, Debug)]
struct ChangeLatency {
    write: Duration,
    edit: Duration,
}

/// Times `changes` weight changes of backend `addr` (id `id`) of `service`, each after `quiet`,
/// until `maps` shows the new weight.
#[allow(clippy::too_many_arguments)]
async fn time_weight_changes(
    client: &Client,
    target: &ZkTarget,
    service: &str,
    addr: SocketAddr,
    id: u32,
    maps: &MapsView,
    changes: usize,
    quiet: Duration,
) -> anyhow::Result<Vec<ChangeLatency>> {
    let path = target.schema.backend_path(service, addr);
    let mut latencies = Vec::with_capacity(changes);
    for i in 0..changes {
        // Always different from the previous weight.
        let weight = 2 + (i % 50) as u32;
        tokio::time::sleep(quiet).await;
        let edit_start = Instant::now();
        let (_, stat) = client
            .get_data(&path)
            .await
            .with_context(|| format!("reading {path}"))?;
        let data = serde_json::to_vec(&serde_json::json!({ "weight": weight }))?;
        let write_start = Instant::now();
        client
            .set_data(&path, &data, Some(stat.version))
            .await
            .with_context(|| format!("writing {path}"))?;
        Eventually::new(format!("weight {weight} (change {i})"), APPLY_TIMEOUT)
            .every(POLL)
            .poll_async(|| async {
                match maps.backend(id) {
                    Ok(entry) if entry.weight == weight => Ok(Ok(())),
                    Ok(entry) => Err(format!("weight {}", entry.weight)),
                    // A map that cannot be read ends the wait.
                    Err(e) => Ok(Err(e)),
                }
            })
            .await??;
        let done = Instant::now();
        latencies.push(ChangeLatency {
            write: done - write_start,
            edit: done - edit_start,
        });
    }
    Ok(latencies)
}

/// The `elapsed_ms` of the daemon's log line with `message`.
fn logged_elapsed(log: &str, message: &str) -> Option<Duration> {
    let line = log.lines().find(|l| l.contains(message))?;
    let value = line.split("elapsed_ms=").nth(1)?;
    let ms: u64 = value.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// Builds the cold start's tables (same scheduler, sizes and backend addresses) in this process,
/// one after another and then with `tables::prebuild` on every CPU, and checks both agree.
fn time_table_builds(args: &Args) -> anyhow::Result<(Duration, Duration)> {
    use lb_userspace::tables::{TableBackend, TableJob, build_slot_tables, prebuild};
    let kind = lb_common::Scheduler::from_name(&args.scheduler)
        .with_context(|| format!("unknown scheduler {}", args.scheduler))?
        .table_kind();
    let jobs: Vec<Vec<TableBackend>> = (0..args.services)
        .map(|s| {
            (0..args.backends)
                .map(|b| TableBackend {
                    id: b,
                    addr: SocketAddr::new(
                        IpAddr::V4(backend_ip(s * args.backends + b, args.distinct_ips)),
                        10_000 + s as u16,
                    ),
                    weight: 1,
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let sequential: Vec<_> = jobs
        .iter()
        .map(|b| build_slot_tables(kind, b, args.table_size, 0))
        .collect();
    let tables_sequential = started.elapsed();
    let started = Instant::now();
    let parallel = prebuild(
        jobs.iter()
            .map(|b| TableJob {
                kind,
                backends: b.clone(),
            })
            .collect(),
        args.table_size,
        0,
    );
    let tables_parallel = started.elapsed();
    for ((built, backends), want) in parallel.iter().zip(&jobs).zip(&sequential) {
        ensure!(
            built
                .as_ref()
                .and_then(|b| b.with_ids(kind, backends, args.table_size))
                .as_ref()
                == Some(want),
            "a table built in parallel differs from the one built alone"
        );
    }
    Ok((tables_sequential, tables_parallel))
}

/// Writes `services` services (VIP `198.18.100.10:<10000+i>`) with `backends` backends each
/// (`198.19.x.y` on the VIP's port), one multi-op transaction per service, many in flight at once.
async fn populate(
    client: &Client,
    target: &ZkTarget,
    services: u32,
    backends: u32,
    distinct_ips: u32,
    scheduler: &str,
) -> anyhow::Result<()> {
    let schema = &target.schema;
    let options = CreateMode::Persistent.with_acls(node_acls(false));
    for dir in [schema.root().to_owned(), schema.services_dir()] {
        match client.create(&dir, &[], &options).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
            Err(e) => bail!("creating {dir}: {e}"),
        }
    }
    const IN_FLIGHT: usize = 32;
    let mut pending = Vec::new();
    for s in 0..services {
        let port = 10_000 + s;
        let name = format!("svc{s:05}");
        let data =
            serde_json::json!({"vip": format!("198.18.100.10:{port}"), "scheduler": scheduler});
        let mut multi = client.new_multi_writer();
        multi.add_create(
            &schema.service_path(&name),
            data.to_string().as_bytes(),
            &options,
        )?;
        multi.add_create(&schema.backends_dir(&name), &[], &options)?;
        for b in 0..backends {
            let addr = SocketAddr::new(
                IpAddr::V4(backend_ip(s * backends + b, distinct_ips)),
                port as u16,
            );
            multi.add_create(&schema.backend_path(&name, addr), &[], &options)?;
        }
        pending.push(multi.commit());
        if pending.len() >= IN_FLIGHT {
            for commit in pending.drain(..) {
                commit.await.context("writing the tree")?;
            }
        }
    }
    for commit in pending {
        commit.await.context("writing the tree")?;
    }
    Ok(())
}

// ---- helpers -------------------------------------------------------------------------------------

/// The address of the cold start's `n`th backend (counted over all services): one of
/// `distinct` addresses in 198.19.0.0/16, so a service's backends (consecutive `n`) differ.
fn backend_ip(n: u32, distinct: u32) -> Ipv4Addr {
    let i = n % distinct;
    Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Runs `f` with a ZooKeeper client on a thread in the router namespace (where ZooKeeper listens on
/// 127.0.0.1).
fn in_router<T, F, Fut>(lab: &Lab, connect: &str, f: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce(Client) -> Fut + Send,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let ns = lab.router_netns();
    run_in_netns(&ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let client = Client::connector()
                .with_session_timeout(Duration::from_secs(10))
                .connect(connect)
                .await
                .context("connecting to ZooKeeper")?;
            f(client).await
        })
    })?
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Two rows for `latencies`: from the write itself, and from the start of the read-modify-write.
fn print_latencies(applied: &str, latencies: &[ChangeLatency]) {
    let rows = [
        (
            "ZooKeeper write (one `set_data`)",
            latencies.iter().map(|l| l.write).collect::<Vec<_>>(),
        ),
        (
            "read-modify-write (`get_data` + `set_data`)",
            latencies.iter().map(|l| l.edit).collect(),
        ),
    ];
    for (from, mut sorted) in rows {
        sorted.sort();
        println!(
            "| {from} → {applied}: p50 / p99 / max of {} weight changes | {} / {} / {} |",
            sorted.len(),
            ms(percentile(&sorted, 50.0)),
            ms(percentile(&sorted, 99.0)),
            ms(sorted.last().copied().unwrap_or_default())
        );
    }
}

fn print_table(args: &Args, latencies: &[(u64, Vec<ChangeLatency>)], cold: Option<&ColdStart>) {
    println!("\n### Control plane (ZooKeeper)\n");
    println!("| measurement | value |");
    println!("|---|---|");
    for (debounce_ms, latencies) in latencies {
        print_latencies(
            &format!("`LB_BACKENDS` applied, `--zk-debounce-ms {debounce_ms}`"),
            latencies,
        );
    }
    if let Some(c) = cold {
        let what = format!(
            "{} services × {} backends ({}; --max-services {} --max-backends {} --table-size {})",
            c.services,
            c.backends,
            args.scheduler,
            args.max_services,
            args.max_backends,
            args.table_size
        );
        println!(
            "| cold start, {what}: daemon start → all services in `LB_SERVICES` | {:.2} s |",
            c.to_all_services.as_secs_f64()
        );
        let logged = |d: Option<Duration>| {
            d.map_or_else(
                || "not logged".to_owned(),
                |d| format!("{:.2} s", d.as_secs_f64()),
            )
        };
        println!(
            "| of which: start → first state read from ZooKeeper (daemon log) | {} |",
            logged(c.first_state_read)
        );
        println!(
            "| of which, at the same time: start → data plane loaded (program verified, maps created; daemon log) | {} |",
            logged(c.dataplane_loaded)
        );
        println!(
            "| start → maps pinned (seen from outside) | {:.2} s |",
            c.to_pinned.as_secs_f64()
        );
        println!(
            "| building those {} tables in one process: one after another / on every CPU ({} CPUs) | {:.2} s / {:.2} s |",
            c.services,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            c.tables_sequential.as_secs_f64(),
            c.tables_parallel.as_secs_f64()
        );
        println!(
            "| `lb status --json` of that state (one call) | {:.2} s |",
            c.status_call.as_secs_f64()
        );
        println!(
            "| daemon start → `/metrics` served (start-up done: {} next hops resolved) | {:.2} s |",
            args.distinct_ips,
            c.to_serving.as_secs_f64()
        );
        let mut scrapes = c.scrapes.clone();
        scrapes.sort();
        println!(
            "| `/metrics` scrape of that state ({} distinct backend IPs): p50 / max of {} | {} / {} |",
            args.distinct_ips,
            scrapes.len(),
            ms(percentile(&scrapes, 50.0)),
            ms(scrapes.last().copied().unwrap_or_default())
        );
        print_latencies(
            "`LB_BACKENDS` applied on that state (default debounce)",
            &c.changes,
        );
        println!(
            "| ZooKeeper sessions the cold-started daemon opened / log lines about an expiry | {} / {} |",
            c.sessions, c.expired
        );
        println!(
            "| writing the tree to ZooKeeper (one multi per service, 32 in flight) | {:.2} s |",
            c.populate.as_secs_f64()
        );
    }
}
