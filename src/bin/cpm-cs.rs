//! `cpm-cs`: the reference CPM Conversation Server (README "The
//! Conversation Server"). One shard per process (`--shard NAME`), or every
//! shard of the configuration in one process (`--all`); the process's admin
//! API (`[admin]`, README "Admin API of cpm-cs") changes the users and
//! groups of all its shards while they run.

use clap::Parser;
use cpm_edge::control::cs_api::{self, CsApi};
use cpm_edge::csnode::{self, config::DEFAULT_TOML};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "cpm-cs",
    about = "Reference CPM Conversation Server (OMA CPM 5.2.3.2, Appendix C)"
)]
struct Cli {
    /// Configuration file (default: the embedded demo cluster).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The shard this process serves as.
    #[arg(long, default_value = "cs1")]
    shard: String,
    /// Serve every shard of the configuration in this process.
    #[arg(long)]
    all: bool,
    /// Do not register hosted groups with the edge's admin API.
    #[arg(long)]
    no_sync: bool,
    /// This process's admin API on ADDR instead of `[admin] bind` (one
    /// address per process when shards run as separate processes; "" =
    /// off). The token stays `[admin] token`.
    #[arg(long, value_name = "ADDR")]
    admin_bind: Option<String>,
    #[arg(long)]
    print_default_config: bool,
}

fn main() {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_TOML}");
        return;
    }
    let text = match &cli.config {
        Some(p) => {
            std::fs::read_to_string(p).unwrap_or_else(|e| fail(&format!("{}: {e}", p.display())))
        }
        None => DEFAULT_TOML.to_string(),
    };
    cpm_edge::app::init_logging("info");
    let names = if cli.all {
        csnode::config::shard_list(&text).unwrap_or_else(|e| fail(&e.to_string()))
    } else {
        vec![cli.shard.clone()]
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            fail(&format!("signal {sig}: {e}"));
        }
    }
    let cluster = csnode::config::shard_list(&text).unwrap_or_else(|e| fail(&e.to_string()));
    let mut shards = Vec::new();
    let mut admin = None;
    for n in &names {
        let valid = csnode::config::load(&text, n, csnode::random_key())
            .unwrap_or_else(|e| fail(&e.to_string()));
        admin = admin.or(valid.admin.clone());
        let s = csnode::start(valid, !cli.no_sync).unwrap_or_else(|e| fail(&e));
        eprintln!("cpm-cs: shard {n} listening on {}", s.node.addr());
        shards.push(s);
    }
    let admin = match cli.admin_bind.as_deref().map(str::trim) {
        None => admin,
        Some("") => None,
        Some(b) => {
            let bind = b
                .parse()
                .unwrap_or_else(|_| fail(&format!("--admin-bind: '{b}' is not an IP:port")));
            let token = admin.and_then(|a| a.token);
            Some(csnode::config::AdminApi { bind, token })
        }
    };
    let admin_server = admin.map(|a| {
        let api = CsApi::new(&shards, cluster).unwrap_or_else(|e| fail(&e));
        let server = cs_api::serve(&a, Arc::new(api)).unwrap_or_else(|e| fail(&e));
        eprintln!(
            "cpm-cs: admin API on http://{} (changes live until restart)",
            server.addr
        );
        server
    });
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(admin_server);
    for s in &shards {
        let snap = s.node.snapshot();
        eprintln!(
            "cpm-cs: shard at {}: {} sessions started, {} ended, {} refused, {} datagrams in, {} out",
            s.node.addr(),
            snap.stats.sessions_started.iter().sum::<u64>(),
            snap.stats.sessions_ended,
            snap.stats.refused,
            snap.datagrams_in,
            snap.datagrams_out
        );
    }
}

fn fail(e: &str) -> ! {
    eprintln!("cpm-cs: {e}");
    std::process::exit(2);
}
