//! The whole running edge as one value: io workers, the control plane, the
//! admin API and the shard health checker, started from a validated
//! configuration. `main.rs` and the end-to-end tests both run exactly this.

use crate::config::Valid;
use crate::control::health::{self, Health, HealthConfig};
use crate::control::http::{self, HttpConfig};
use crate::control::{api, ControlPlane};
use crate::dataplane::worker::Server;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

pub struct App {
    pub server: Server,
    pub cp: Arc<ControlPlane>,
    /// Where the admin API listens (resolved when bound to port 0).
    pub admin_addr: Option<SocketAddr>,
    control_stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Bind the admin API and build its server configuration; the control
/// plane gets the token cell (rotated on reload) and the server's counters.
fn admin_http(
    v: &Valid,
    bind: SocketAddr,
    control: &mut ControlPlane,
) -> Result<(std::net::TcpListener, HttpConfig), String> {
    let listener = std::net::TcpListener::bind(bind)
        .map_err(|e| format!("cannot bind admin API on {bind}: {e}"))?;
    let token: http::TokenCell = Arc::new(arc_swap::ArcSwapOption::from(
        v.admin_token.clone().map(Arc::new),
    ));
    let l = v.admin_limits;
    let cfg = HttpConfig {
        token: v.admin_token.clone(),
        max_connections: l.max_connections,
        max_connections_per_peer: l.max_connections_per_peer,
        probe_slots: l.probe_slots,
        header_timeout: l.header_timeout,
        live_token: Some(Arc::clone(&token)),
        ..HttpConfig::default()
    };
    control.admin_token = Some(token);
    control.http_stats = Some(Arc::clone(&cfg.stats));
    Ok((listener, cfg))
}

/// Start the data plane of a validated configuration (no control plane).
pub fn start_server(v: &Valid) -> Result<Server, String> {
    Server::start(&v.server, v.tables(), v.admission(), v.registrar.clone())
}

impl App {
    pub fn start(v: &Valid) -> Result<App, String> {
        let server = start_server(v)?;
        let mut control = ControlPlane::new(
            Arc::clone(&server.tables),
            server.stats.clone(),
            server.backend,
            v.clone(),
        );
        control.slow = server
            .slow
            .as_ref()
            .map(|s| (s.queue.clone(), Arc::clone(&s.stats)));
        control.admission = Some(Arc::clone(&server.admission));
        control.tls = server.tls.clone();
        control.streams = server.streams.clone();
        control.registrar = server.registrar.as_ref().map(|r| {
            let file = v
                .registrar
                .as_ref()
                .and_then(|c| c.credentials_file.clone());
            crate::control::registrar_api::RegistrarHandle::new(r, file)
        });
        let control_stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let admin = match v.admin_bind {
            Some(bind) => Some(admin_http(v, bind, &mut control)?),
            None => None,
        };
        let cp = Arc::new(control);
        let mut admin_addr = None;
        if let Some((listener, cfg)) = admin {
            admin_addr = listener.local_addr().ok();
            let api_cp = Arc::clone(&cp);
            let handler: http::Handler = Arc::new(move |req| api::handle(&api_cp, req));
            threads.push(
                http::serve(listener, cfg, handler, Arc::clone(&control_stop))
                    .map_err(|e| format!("cannot start admin API: {e}"))?,
            );
        }
        if let Some(h) = v.health {
            let cfg = HealthConfig {
                probes: h,
                bind: SocketAddr::new(v.server.listen.ip(), 0),
                from_host: server.tables.load().edge.hostport(),
            };
            let t_cp = Arc::clone(&cp);
            // The Interworking Functions are probed as the shards are.
            let targets: health::Targets = Arc::new(move || {
                let t = t_cp.snapshot();
                let shards = t.shards.live().map(|(_, s)| (s.name.clone(), s.addr));
                let iwfs = t.iwfs.iter().map(|i| (i.health_name(), i.addr));
                shards.chain(iwfs).collect()
            });
            let c_cp = Arc::clone(&cp);
            let on_change: health::OnChange =
                Arc::new(move |name, _addr, h| c_cp.set_health(name, h == Health::Up));
            threads.push(
                health::spawn(cfg, targets, on_change, Arc::clone(&control_stop))
                    .map_err(|e| format!("cannot start health checks: {e}"))?,
            );
        }
        Ok(App {
            server,
            cp,
            admin_addr,
            control_stop,
            threads,
        })
    }

    /// Stop the control threads, then the workers; returns the workers'
    /// first io error.
    pub fn stop(mut self) -> Result<(), String> {
        self.control_stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.server.stop()
    }
}

/// Log to stderr with `RUST_LOG`, else `default` as the filter (a bad
/// filter falls back to `info`): the same for every binary of the crate.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
