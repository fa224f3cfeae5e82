//! `cpm-iwf`: the reference Interworking Function for SMS (README
//! "Interworking"): CPM pager-mode messages from the edge to SMS through a
//! Kannel smsbox.

use clap::Parser;
use cpm_edge::iwfnode::{self, Iwf, DEFAULT_TOML};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "cpm-iwf",
    about = "Reference CPM Interworking Function for SMS (OMA CPM 5.3)"
)]
struct Cli {
    /// Configuration file (default: the embedded demo one).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
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
    let settings = iwfnode::load(&text).unwrap_or_else(|e| fail(&e));
    let mut iwf = Iwf::start(settings).unwrap_or_else(|e| fail(&format!("cannot start: {e}")));
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            fail(&format!("cannot watch signal {sig}: {e}"));
        }
    }
    match iwf.local_addr() {
        Ok(a) => tracing::info!(listen = %a, "cpm-iwf serving"),
        Err(e) => fail(&format!("no local address: {e}")),
    }
    iwf.run(&stop);
    let _ = stop.load(Ordering::Relaxed);
}

fn fail(why: &str) -> ! {
    eprintln!("cpm-iwf: {why}");
    std::process::exit(1);
}
