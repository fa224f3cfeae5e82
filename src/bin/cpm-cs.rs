//! `cpm-cs`: the reference CPM Conversation Server (README "The
//! Conversation Server"). One shard per process (`--shard NAME`), or every
//! shard of the configuration in one process (`--all`).

use clap::Parser;
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
    init_logging();
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
    let mut shards = Vec::new();
    for n in &names {
        let s = csnode::start_shard(&text, n, !cli.no_sync).unwrap_or_else(|e| fail(&e));
        eprintln!("cpm-cs: shard {n} listening on {}", s.node.addr());
        shards.push(s);
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
