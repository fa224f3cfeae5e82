//! cpm-edge: command line, configuration, start-up report, signals.
//! Everything else lives in the library (see `src/lib.rs`).

use clap::Parser;
use cpm_edge::app::App;
use cpm_edge::config::{Config, ShardConf, Valid};
use cpm_edge::control::{ControlPlane, ReloadError};
use cpm_edge::io::IoChoice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPM-aware stateless SIP edge proxy for OMA CPM Conversation Server clusters.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (default: the embedded demo configuration).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// UDP address to listen on (overrides listen.addr).
    #[arg(long)]
    listen: Option<String>,
    /// Host the edge writes in Via/Route/Record-Route (overrides listen.advertise).
    #[arg(long)]
    advertise: Option<String>,
    /// A CS shard, `ADDR` or `NAME=ADDR`; repeatable; replaces the config's shards
    /// (unnamed shards are named cs1, cs2, ... in order).
    #[arg(long = "shard")]
    shards: Vec<String>,
    /// Number of io workers (0 = one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// CPUs to pin workers to, e.g. `0,1` or `2-5`.
    #[arg(long)]
    cpus: Option<String>,
    /// io backend.
    #[arg(long, value_enum)]
    io: Option<IoChoice>,
    /// Forward requests without the CPM indication here instead of answering 403.
    #[arg(long)]
    non_cpm_route: Option<String>,
    /// Admin HTTP API address (overrides admin.bind); `off` disables it.
    #[arg(long)]
    admin: Option<String>,
    /// Disable the SIP OPTIONS health checks of the shards (health.enabled = false).
    #[arg(long)]
    no_health: bool,
    /// Validate the configuration (with overrides), print the summary and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("--cpus: '{part}' is not a CPU number or range (e.g. 0,1 or 2-5)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (
                    a.parse::<usize>().map_err(|_| bad())?,
                    b.parse::<usize>().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

fn load(cli: &Cli) -> Result<Config, String> {
    let mut cfg = match &cli.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Config::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => Config::default_embedded(),
    };
    if let Some(l) = &cli.listen {
        cfg.listen.addr = l.clone();
    }
    if let Some(a) = &cli.advertise {
        cfg.listen.advertise = Some(a.clone());
    }
    if !cli.shards.is_empty() {
        cfg.shards = cli
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| match s.split_once('=') {
                Some((n, a)) => ShardConf {
                    name: n.into(),
                    addr: a.into(),
                    transport: "udp".into(),
                    backup: None,
                },
                None => ShardConf {
                    name: format!("cs{}", i + 1),
                    addr: s.clone(),
                    transport: "udp".into(),
                    backup: None,
                },
            })
            .collect();
        let before = cfg.groups.len();
        cfg.groups
            .retain(|g| cfg.shards.iter().any(|s| s.name == g.shard));
        if cfg.groups.len() != before {
            eprintln!(
                "cpm-edge: warning: --shard replaced the shard list; {} group(s) naming a shard no longer present were left out",
                before - cfg.groups.len()
            );
        }
    }
    if let Some(w) = cli.workers {
        cfg.workers.count = w;
    }
    if let Some(c) = &cli.cpus {
        cfg.workers.cpus = parse_cpus(c)?;
    }
    if let Some(io) = cli.io {
        cfg.workers.io = io;
    }
    if let Some(r) = &cli.non_cpm_route {
        cfg.routing.non_cpm_route = Some(r.clone());
    }
    if let Some(a) = &cli.admin {
        cfg.admin.bind = if a == "off" { String::new() } else { a.clone() };
    }
    if cli.no_health {
        cfg.health.enabled = false;
    }
    Ok(cfg)
}

fn main() {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", cpm_edge::config::DEFAULT_TOML);
        return;
    }
    let valid = match load_valid(&cli) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("cpm-edge: configuration error: {e}");
            std::process::exit(2);
        }
    };
    if cli.check_config {
        println!(
            "configuration OK: listen {} ({} workers), {} shards [{}], {} groups, {}",
            valid.server.listen,
            valid.server.workers.count,
            valid.shards.len(),
            shard_list(&valid),
            valid.groups.len(),
            routing_summary(&valid)
        );
        return;
    }
    cpm_edge::app::init_logging(&valid.log_level);
    // Before anything is reachable: a SIGHUP that arrives as soon as the
    // admin API answers must find its handler, not the default (exit).
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cpm-edge: {e}");
            std::process::exit(1);
        }
    };
    let app = match App::start(&valid) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cpm-edge: cannot start: {e}");
            std::process::exit(1);
        }
    };
    report_start(&valid, &app);
    println!("  ready (SIGHUP reloads the configuration, SIGINT/SIGTERM stop)");
    serve_until_stopped(&cli, &app, &signals);
    println!("cpm-edge: stopping");
    let stats = app.server.stats.clone();
    let result = app.stop();
    report_stop(&stats);
    if let Err(e) = result {
        eprintln!("cpm-edge: {e}");
        std::process::exit(1);
    }
}

/// The configuration file (or the embedded default) with the command-line
/// overrides, validated.
fn load_valid(cli: &Cli) -> Result<Valid, String> {
    load(cli)?.validate().map_err(|e| e.to_string())
}

fn shard_list(v: &Valid) -> String {
    let names: Vec<String> = v
        .shards
        .iter()
        .map(|s| format!("{}={}", s.name, s.addr))
        .collect();
    names.join(" ")
}

fn routing_summary(v: &Valid) -> String {
    format!(
        "originating_pf={} record_route={} non_cpm_route={}",
        v.originating_pf,
        v.record_route,
        v.non_cpm_route
            .map_or("none (403)".to_string(), |a| a.to_string())
    )
}

/// The start-up report: where the edge listens, how it runs, what it routes to.
fn report_start(valid: &Valid, app: &App) {
    let server = &app.server;
    let s = &valid.server.workers;
    let pin = if s.cpus.is_empty() {
        "not pinned".to_string()
    } else {
        format!("pinned to CPUs {:?}", s.cpus)
    };
    println!(
        "cpm-edge {} listening on udp {} as {}",
        env!("CARGO_PKG_VERSION"),
        server.local_addr,
        server.tables.load().edge.hostport()
    );
    println!(
        "  io backend: {} ({})",
        server.backend.name(),
        server.backend_reason
    );
    println!(
        "  workers: {} ({pin}), batch {}, {} receive buffers of {} bytes",
        s.count, s.batch, s.recv_buffers, s.max_datagram
    );
    println!(
        "  CS shards ({}): {}",
        valid.shards.len(),
        shard_list(valid)
    );
    println!(
        "  groups: {}; {}",
        valid.groups.len(),
        routing_summary(valid)
    );
    match app.admin_addr {
        Some(a) => {
            let auth = if valid.admin_token.is_some() {
                "bearer token"
            } else {
                "no token (loopback)"
            };
            println!("  admin API: http://{a}/ ({auth}): /groups /shards /config /metrics /health /ready");
        }
        None => println!("  admin API: off"),
    }
    match valid.health {
        Some(h) => println!(
            "  health: OPTIONS every {:?}, timeout {:?}, down after {} failures, up after {} answers",
            h.interval, h.timeout, h.fail_threshold, h.ok_threshold
        ),
        None => println!("  health: off (shards always up)"),
    }
}

/// SIGINT/SIGTERM set `stop`, SIGHUP sets `hup`.
struct Signals {
    stop: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let s = Signals {
            stop: Arc::new(AtomicBool::new(false)),
            hup: Arc::new(AtomicBool::new(false)),
        };
        for (sig, flag) in [(SIGINT, &s.stop), (SIGTERM, &s.stop), (SIGHUP, &s.hup)] {
            signal_hook::flag::register(sig, Arc::clone(flag))
                .map_err(|e| format!("cannot install handler for signal {sig}: {e}"))?;
        }
        Ok(s)
    }
}

/// Until SIGINT/SIGTERM: each SIGHUP reloads. A reload runs on its own
/// thread: reading the files may block (a slow disk, a FIFO given as
/// --config), and SIGTERM must not wait for it.
fn serve_until_stopped(cli: &Cli, app: &App, signals: &Signals) {
    let mut reloading: Option<std::thread::JoinHandle<()>> = None;
    while !signals.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if reloading.as_ref().is_some_and(|r| r.is_finished()) {
            let _ = reloading.take().map(std::thread::JoinHandle::join);
        }
        // A SIGHUP during a reload stays pending until that one is done.
        if reloading.is_none() && signals.hup.swap(false, Ordering::Relaxed) {
            let (cli, cp) = (cli.clone(), Arc::clone(&app.cp));
            match std::thread::Builder::new()
                .name("reload".into())
                .spawn(move || reload(&cli, &cp))
            {
                Ok(h) => reloading = Some(h),
                Err(e) => tracing::error!("reload refused: cannot start a reload thread: {e}"),
            }
        }
    }
    if reloading.is_some_and(|r| !r.is_finished()) {
        tracing::warn!("stopping with a reload still running: it is abandoned");
    }
}

/// The counters and the in-proxy latency distribution at exit.
fn report_stop(stats: &[Arc<cpm_edge::dataplane::stats::WorkerStats>]) {
    let snap = cpm_edge::dataplane::stats::Snapshot::merge(stats);
    println!("{snap}");
    let lat = cpm_edge::dataplane::stats::merged_latency(stats);
    if !lat.is_empty() {
        println!(
            "in-proxy latency (ns): p50={} p90={} p99={} p99.9={} max={} n={}",
            lat.value_at_quantile(0.5),
            lat.value_at_quantile(0.9),
            lat.value_at_quantile(0.99),
            lat.value_at_quantile(0.999),
            lat.max(),
            lat.len()
        );
    }
}

/// SIGHUP: re-read the configuration file (and its groups file) with the
/// same command-line overrides; an invalid one, or one changing a setting
/// bound at start, leaves everything running as is (one log line says why).
fn reload(cli: &Cli, cp: &ControlPlane) {
    let r = load_valid(cli).map_err(ReloadError::Invalid).and_then(|v| {
        let groups = v.groups.len();
        cp.reload(v).map(|()| groups)
    });
    match r {
        Ok(groups) => {
            cp.reloads_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(groups, "configuration reloaded");
        }
        Err(e) => {
            cp.reloads_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!("{e}");
        }
    }
}
