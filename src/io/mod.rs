//! Datagram io at the edge of the process: sockets, io_uring and the
//! recvmmsg/sendmmsg fallback; and stream sockets ([`stream`], TCP and
//! TLS ([`tls`]): receiving through the worker's io_uring on that
//! backend, through epoll readiness on the fallback).
//!
//! This module owns every syscall of a worker's hot loop and nothing about SIP.
//! A worker hands [`run`] a bound socket and a [`DatagramHandler`]; the loop
//! receives a batch, calls the handler once per datagram (each datagram yields
//! at most one output datagram: a stateless proxy forwards or answers, never
//! both), then submits the whole batch of outputs at once.
//!
//! Invariants:
//! - bounded: at most `IoConfig::batch` datagrams in flight per direction,
//!   a fixed pool of `IoConfig::buf_count` receive buffers of `buf_size` bytes;
//! - a send error (ECONNREFUSED from an ICMP port unreachable, ENOBUFS, EAGAIN)
//!   is reported to the handler and never stops the loop;
//! - the loop returns within ~100 ms of `stop` becoming true.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;

pub mod mmsg;
pub mod socket;
pub mod stream;
pub mod tls;
pub mod uring;

/// The longest a handler with a wake descriptor waits for its
/// [`DatagramHandler::on_wake`] (its timers run there).
pub const WAKE_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Which kernel interface moves the datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring: multishot recvmsg on a provided-buffer ring; each batch's
    /// outputs leave with one sendmmsg.
    Uring,
    /// recvmmsg/sendmmsg: the fallback where io_uring is missing or blocked.
    Mmsg,
}

impl IoBackend {
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Uring => "io_uring",
            IoBackend::Mmsg => "recvmmsg/sendmmsg",
        }
    }
}

/// What the operator asked for (`--io`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoChoice {
    Auto,
    Uring,
    Mmsg,
}

/// Sizes of a worker's io resources. All bounded, all fixed at start.
#[derive(Clone, Copy, Debug)]
pub struct IoConfig {
    /// Max datagrams handled per receive batch and submitted per send batch.
    pub batch: usize,
    /// Size of one receive buffer; a datagram larger than this is reported
    /// to the handler as truncated (and must be dropped by it).
    pub buf_size: usize,
    /// Number of receive buffers (io_uring: provided-buffer ring entries,
    /// a power of two).
    pub buf_count: usize,
    /// Max size of one output datagram (the `out` slice handed to the handler).
    pub out_size: usize,
    /// A descriptor whose readability calls [`DatagramHandler::on_wake`]
    /// (the worker's stream reactor), waited on beside the socket.
    pub wake: Option<std::os::fd::RawFd>,
}

/// The code above io: SIP scan + route + rewrite, stats.
pub trait DatagramHandler {
    /// Called once per received batch before its first datagram.
    fn on_batch_start(&mut self) {}
    /// One received datagram from `src`. `truncated` is true when the datagram
    /// was larger than the receive buffer (then `data` is only its beginning).
    /// To send, write into `out` and return `Some((len, dst))`.
    fn on_datagram(
        &mut self,
        data: &[u8],
        truncated: bool,
        src: SocketAddr,
        out: &mut [u8],
    ) -> Option<(usize, SocketAddr)>;
    /// Called once per batch after its outputs were handed to the kernel.
    fn on_batch_end(&mut self) {}
    /// A send to `dst` failed with errno `err`. Count it; the loop goes on.
    fn on_send_error(&mut self, dst: SocketAddr, err: i32);
    /// A receive completed with errno `err`. Count it; the loop goes on.
    fn on_recv_error(&mut self, err: i32);
    /// [`IoConfig::wake`] is readable: do what waits there (without
    /// blocking) until it is not.
    fn on_wake(&mut self) {}
    /// The io_uring backend, at start: will the handler's stream
    /// connections receive through the ring ([`stream::RingOp`])? `true`:
    /// its reactor is in ring mode from now on.
    fn enable_ring_receives(&mut self) -> bool {
        false
    }
    /// Ring mode: the connections' receive requests since the last call.
    fn take_ring_ops(&mut self, _ops: &mut Vec<stream::RingOp>) {}
    /// Ring mode: what the receive of the connection `key` names brought
    /// (bytes, empty at the end of the stream, or an errno).
    fn on_ring_recv(&mut self, _key: u64, _res: Result<&[u8], i32>) {}
}

/// Pick the backend: `Auto` probes io_uring (ring creation, multishot
/// recvmsg and provided-buffer rings) and falls back to mmsg, saying why.
pub fn select_backend(choice: IoChoice) -> Result<(IoBackend, String), String> {
    match choice {
        IoChoice::Mmsg => Ok((IoBackend::Mmsg, "forced by --io mmsg".to_string())),
        IoChoice::Uring => match uring::probe() {
            Ok(()) => Ok((IoBackend::Uring, "forced by --io uring".to_string())),
            Err(e) => Err(format!(
                "--io uring requested but io_uring is unusable: {e}"
            )),
        },
        IoChoice::Auto => match uring::probe() {
            Ok(()) => Ok((
                IoBackend::Uring,
                "auto: io_uring probe succeeded".to_string(),
            )),
            Err(e) => Ok((
                IoBackend::Mmsg,
                format!("auto: io_uring unusable ({e}), using fallback"),
            )),
        },
    }
}

/// Run the worker loop on `socket` until `stop` is set.
pub fn run<H: DatagramHandler>(
    backend: IoBackend,
    socket: &std::net::UdpSocket,
    cfg: IoConfig,
    handler: &mut H,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    assert!(cfg.batch > 0 && cfg.batch <= 1024, "io batch out of range");
    assert!(
        cfg.buf_size >= 1024 && cfg.out_size >= 1024,
        "io buffers too small"
    );
    match backend {
        IoBackend::Uring => uring::run(socket, cfg, handler, stop),
        IoBackend::Mmsg => mmsg::run(socket, cfg, handler, stop),
    }
}
