//! `cpm-system`: a whole CPM system on loopback in one process (README,
//! "The two commands"): cpm-edge on its embedded default configuration
//! (127.0.0.1:5060, admin API on 127.0.0.1:8080, four CS shards) and the
//! reference Conversation Server for each of those shards (cpm-cs's
//! embedded default: demo users alice..erin on 127.0.0.1:5071-5075 and the
//! demo groups), with the Conversation Servers' admin API on
//! 127.0.0.1:8090 (cpm-cs's `[admin]`), and the SMS Interworking Function
//! (cpm-iwf's embedded default: SIP on 127.0.0.1:5090, the edge's `[[iwf]]`
//! for `sms`; Kannel's MO and delivery-report calls on 127.0.0.1:5091; a
//! Kannel smsbox expected on 127.0.0.1:13013, without which an SMS is
//! answered `503 SMS Gateway Unreachable`). Every step a Conversation
//! Server takes (the C.1 sequence of a group session) is logged as it
//! happens.

use clap::Parser;
use cpm_edge::app::App;
use cpm_edge::config::Config;
use cpm_edge::control::cs_api::{self, CsApi};
use cpm_edge::csnode;
use cpm_edge::iwfnode::{self, Iwf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "cpm-system",
    about = "cpm-edge and its reference Conversation Servers, in one process"
)]
struct Cli {
    /// The edge's configuration (default: cpm-edge's embedded one).
    #[arg(long)]
    edge_config: Option<std::path::PathBuf>,
    /// The Conversation Servers' configuration (default: cpm-cs's embedded one).
    #[arg(long)]
    cs_config: Option<std::path::PathBuf>,
    /// The SMS Interworking Function's configuration (default: cpm-iwf's
    /// embedded one).
    #[arg(long)]
    iwf_config: Option<std::path::PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    cpm_edge::app::init_logging("info");
    let edge_text = read(cli.edge_config.as_deref(), cpm_edge::config::DEFAULT_TOML);
    let cs_text = read(cli.cs_config.as_deref(), csnode::config::DEFAULT_TOML);
    let iwf_text = read(cli.iwf_config.as_deref(), iwfnode::DEFAULT_TOML);
    let iwf_settings =
        iwfnode::load(&iwf_text).unwrap_or_else(|e| fail(&format!("iwf configuration: {e}")));
    let valid = Config::parse(&edge_text)
        .and_then(|c| c.validate())
        .unwrap_or_else(|e| fail(&format!("edge configuration: {e}")));
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            fail(&format!("signal {sig}: {e}"));
        }
    }
    let app = App::start(&valid).unwrap_or_else(|e| fail(&format!("edge: {e}")));
    let names = csnode::config::shard_list(&cs_text).unwrap_or_else(|e| fail(&e.to_string()));
    let mut admin = None;
    let shards: Vec<csnode::Shard> = names
        .iter()
        .map(|n| {
            let v = csnode::config::load(&cs_text, n, csnode::random_key())
                .unwrap_or_else(|e| fail(&format!("cs configuration: {e}")));
            admin = admin.take().or(v.admin.clone());
            csnode::start(v, true).unwrap_or_else(|e| fail(&e))
        })
        .collect();
    let cs_admin = admin.map(|a| {
        let api = CsApi::new(&shards, names.clone()).unwrap_or_else(|e| fail(&e));
        cs_api::serve(&a, Arc::new(api)).unwrap_or_else(|e| fail(&format!("cs: {e}")))
    });
    let gateway = iwf_settings.gateway.addr;
    let mut iwf = Iwf::start(iwf_settings).unwrap_or_else(|e| fail(&format!("iwf: {e}")));
    let iwf_at = (iwf.local_addr().ok(), iwf.mo_addr(), gateway);
    let iwf_stop = Arc::clone(&stop);
    let iwf_thread = std::thread::Builder::new()
        .name("cpm-iwf".into())
        .spawn(move || iwf.run(&iwf_stop))
        .unwrap_or_else(|e| fail(&format!("iwf thread: {e}")));
    banner(&valid, &shards, cs_admin.as_ref().map(|s| s.addr), iwf_at);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = iwf_thread.join();
    drop(cs_admin);
    drop(shards);
    if let Err(e) = app.stop() {
        eprintln!("cpm-system: {e}");
    }
}

type IwfAt = (
    Option<std::net::SocketAddr>,
    Option<std::net::SocketAddr>,
    std::net::SocketAddr,
);

fn banner(
    valid: &cpm_edge::config::Valid,
    shards: &[csnode::Shard],
    cs_admin: Option<std::net::SocketAddr>,
    (iwf_sip, iwf_http, gateway): IwfAt,
) {
    eprintln!("cpm-system: edge on {}", valid.server.listen);
    if let Some(a) = valid.admin_bind {
        eprintln!("cpm-system: edge admin API on http://{a}");
    }
    for s in shards {
        eprintln!(
            "cpm-system: Conversation Server shard {} on {}",
            s.name,
            s.node.addr()
        );
    }
    if let Some(a) = cs_admin {
        eprintln!("cpm-system: Conversation Servers' admin API on http://{a} (users, groups; changes live until restart)");
    }
    if let Some(a) = iwf_sip {
        eprintln!("cpm-system: SMS Interworking Function on {a}, to Kannel's sendsms at {gateway}");
    }
    if let Some(a) = iwf_http {
        eprintln!("cpm-system: Kannel's MO and delivery-report calls to http://{a}/mo and /dlr");
    }
    eprintln!("cpm-system: demo users alice..erin at sip:NAME@127.0.0.1:5071..5075;");
    eprintln!(
        "cpm-system: run `cargo run --release --bin cpm-demo` for a group session (Appendix C.1)"
    );
}

fn read(path: Option<&std::path::Path>, default: &str) -> String {
    match path {
        Some(p) => {
            std::fs::read_to_string(p).unwrap_or_else(|e| fail(&format!("{}: {e}", p.display())))
        }
        None => default.to_string(),
    }
}

fn fail(e: &str) -> ! {
    eprintln!("cpm-system: {e}");
    std::process::exit(2);
}
