//! The io_uring backend: one multishot `RecvMsgMulti` on a provided-buffer
//! ring for receiving datagrams, and (with a stream reactor in ring mode)
//! one multishot `RecvMulti` per TCP/TLS connection on a second
//! provided-buffer group shared by all of them; each batch's outputs leave
//! with one `sendmmsg`, a connection's bytes with a plain write.
//!
//! Why the sends do not go through the ring: inline UDP sends complete
//! inside the call either way, and one `SendMsg` request per datagram adds
//! request set-up, a completion to post and reap, and a slot to hold until
//! then, with the memory-soundness duties that come with it. On this rig the
//! two measured the same (`perf/run-load.sh`, closed loop, window 64, edge
//! on one CPU, 6 runs each on a quiet box, one binary switching the send
//! path: median 14.37 µs of edge CPU per INVITE+200 pair with `SendMsg`,
//! 14.60 with `sendmmsg`, spread ±10 % either way), so the simpler path is
//! kept: no send slots in the kernel's hands, one send-error policy shared
//! with the mmsg backend.
//!
//! Kernel interfaces used (see [`probe`]):
//! - `io_uring_setup`, preferably with SINGLE_ISSUER | DEFER_TASKRUN |
//!   TASKRUN_FLAG | SUBMIT_ALL (6.1+; a plain ring is used when refused);
//!   the ring is created by [`run`] on the worker thread and used only there;
//! - IORING_FEAT_EXT_ARG: waits carry a timeout, so `stop` is seen within
//!   `WAIT` (50 ms) (5.11+);
//! - IORING_REGISTER_PBUF_RING: a ring of `buf_count` provided buffers that
//!   this module owns (anonymous mmap) and refills (5.19+);
//! - IORING_OP_RECVMSG with IORING_RECV_MULTISHOT and buffer select: one
//!   request keeps posting one completion per datagram (6.0+);
//! - IORING_OP_RECV with IORING_RECV_MULTISHOT and buffer select, one per
//!   stream connection (6.0+);
//! - IORING_OP_ASYNC_CANCEL: a closing connection's receive by its user
//!   data, and at shutdown every request (IORING_ASYNC_CANCEL_ANY, 5.19+).
//!
//! Layout of one provided buffer, as the kernel fills it for a multishot
//! recvmsg: `struct io_uring_recvmsg_out` (16 bytes), the source address
//! (`NAME_LEN` = 32 bytes), then up to `buf_size` payload bytes; a buffer is
//! given back to the kernel right after the handler has seen it.
//!
//! Errors: a receive completion with an error ends the multishot request;
//! the error goes to `on_recv_error` (ENOBUFS too: the buffer ring ran dry
//! because the loop fell behind; no datagram is lost, they wait in the
//! socket) and the request is re-armed. Send errors are handled as in the
//! mmsg backend (`mmsg::Tx::send`): reported to `on_send_error`, ECONNREFUSED
//! (an ICMP for an earlier datagram) and EAGAIN retried once.
//!
//! Bounds: the submission queue holds the recv re-arm and a cancel; the
//! completion queue holds every buffer's completion plus slack, so it never
//! overflows; at most `batch` datagrams are handled per batch, each with at
//! most one output slot.
//!
//! Streams (ring mode): the reactor asks for a connection's receive when it
//! installs the connection and for its cancel when it closes it
//! ([`super::stream::RingOp`], taken each turn). A completion's user data
//! is a tag and the connection's key (slot and generation), so one for a
//! slot's earlier tenant is never delivered to the next; its bytes go to
//! the handler and its buffer back to the kernel at once. A multishot
//! that ends while its connection lives (ENOBUFS: the group ran dry) is
//! asked again. The end of the stream and errors go to the handler, which
//! closes the connection.
//!
//! Memory soundness: the kernel holds pointers to the buffer rings, the
//! receive buffers and the recvmsg header. On exit every request is
//! cancelled and every final completion awaited (the datagram receive, and
//! each stream receive `inflight` names) before that memory is freed; if
//! that does not happen within `DRAIN_DEADLINE` (1 s), or the handler
//! panics, the memory is leaked rather than freed under the kernel.
//!
//! Side effect of tearing a ring down: the kernel notifies every thread that
//! used it with a signal-like task work, which can make one blocking syscall
//! of that thread fail with EINTR afterwards (hence [`probe`] runs on its
//! own short-lived thread).

use std::collections::VecDeque;
use std::io;
use std::mem::{self, ManuallyDrop};
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe, Submitter};

use super::mmsg::Tx;
use super::socket::from_sockaddr;
use super::stream::RingOp;
use super::{DatagramHandler, IoConfig};
use std::collections::HashMap;

/// user_data of the multishot receive.
const RECV_UD: u64 = u64::MAX;
/// user_data of the cancel request sent at shutdown.
const CANCEL_UD: u64 = u64::MAX - 1;
/// user_data of the multishot poll on `IoConfig::wake`.
const WAKE_UD: u64 = u64::MAX - 2;
/// Provided-buffer group id (one group per ring, rings are per worker).
const BGID: u16 = 0;
/// The stream connections' buffer group (ring mode).
const STREAM_BGID: u16 = 1;
/// Its buffers: shared by every connection of the worker, each taken only
/// from a completion until the handler has seen it (4 MiB a worker).
const STREAM_BUFS: usize = 256;
const STREAM_BUF_LEN: usize = 16 * 1024;
/// The top byte of a stream receive's user data; the rest is its
/// connection's key ([`super::stream::ring_key`]).
const STREAM_TAG: u64 = 0x5a << 56;
const TAG_MASK: u64 = 0xff << 56;
/// `size_of::<struct io_uring_recvmsg_out>()`: four u32 (kernel ABI).
const RECVMSG_OUT_LEN: usize = 16;
/// Room for the source address in each buffer: at least
/// `sizeof(struct sockaddr_in6)` (28), rounded so the payload starts
/// 16-byte aligned.
const NAME_LEN: usize = 32;
/// Longest single wait in the kernel; `stop` is checked after each.
const WAIT: Duration = Duration::from_millis(50);
/// How long shutdown waits for the kernel to release our memory.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);
/// Kernel limit on the entries of a provided-buffer ring.
const MAX_BUF_COUNT: usize = 32768;

/// Check that io_uring is usable here for [`run`]: the ring can be created
/// (not blocked by `kernel.io_uring_disabled`, seccomp or an LSM), timed
/// waits, the opcodes, a provided-buffer ring, and a real multishot recvmsg
/// round trip on a loopback socket.
///
/// The probe runs on a short-lived helper thread: tearing a ring down makes
/// the kernel queue a signal-like task work (TWA_SIGNAL) to every thread that
/// used it, which would interrupt the caller's next blocking syscall with
/// EINTR (e.g. a socket read with a timeout). An exited thread gets none.
pub fn probe() -> Result<(), String> {
    match std::thread::Builder::new()
        .name("io_uring-probe".into())
        .spawn(probe_here)
    {
        Ok(t) => t
            .join()
            .unwrap_or_else(|_| Err("io_uring probe panicked".into())),
        Err(_) => probe_here(),
    }
}

/// [`probe`] on the calling thread.
fn probe_here() -> Result<(), String> {
    let ring = build_ring(8, 16).map_err(setup_error)?;
    if !ring.params().is_feature_ext_arg() {
        return Err("kernel lacks IORING_FEAT_EXT_ARG (timed waits, Linux >= 5.11)".into());
    }
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsg::CODE, "IORING_OP_RECVMSG"),
        (opcode::ProvideBuffers::CODE, "IORING_OP_PROVIDE_BUFFERS"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("kernel lacks {name}"));
        }
    }

    // The kernel may keep pointers to this memory until the recv request
    // ends, so it is declared before the ring and outlives it.
    let mut bufs = BufRing::new(8, RECVMSG_OUT_LEN + NAME_LEN + 64)
        .map_err(|e| format!("buffer ring memory: {e}"))?;
    let hdr = recv_msghdr();
    let mut ring = ring;
    // SAFETY: `bufs` is dropped after `ring` (declared before it, and the
    // ring is dropped explicitly below) or leaked, so the ring memory stays
    // valid while registered.
    unsafe { bufs.register(&ring.submitter(), BGID) }.map_err(|e| {
        format!("IORING_REGISTER_PBUF_RING: {e} (provided-buffer rings need Linux >= 5.19)")
    })?;
    bufs.provide_all();

    let mut recv_armed = false;
    let result = probe_multishot(&mut ring, &bufs, &hdr, &mut recv_armed);
    let drained = cancel_and_drain(&mut ring, recv_armed, &mut HashMap::new());
    if !drained {
        // The kernel may still write into `bufs`: never unmap it.
        mem::forget(bufs);
        mem::forget(hdr);
        return Err("multishot recvmsg could not be cancelled".into());
    }
    let _ = ring.submitter().unregister_buf_ring(BGID);
    drop(ring);
    drop(bufs);
    result
}

/// Arm a multishot recvmsg on a loopback socket, send it a datagram and
/// check that a buffer-select completion arrives with the MORE flag.
fn probe_multishot(
    ring: &mut IoUring,
    bufs: &BufRing,
    hdr: &libc::msghdr,
    recv_armed: &mut bool,
) -> Result<(), String> {
    let sock = UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| UdpSocket::bind("[::1]:0"))
        .map_err(|e| format!("probe socket: {e}"))?;
    sock.set_nonblocking(true)
        .map_err(|e| format!("probe socket: {e}"))?;
    let me = sock
        .local_addr()
        .map_err(|e| format!("probe socket: {e}"))?;

    let sqe = recv_sqe(sock.as_raw_fd(), hdr);
    // SAFETY: the SQE points at `hdr` and at buffer group BGID (`bufs`),
    // which both outlive the request: the caller cancels and drains it
    // before dropping them, or leaks them. Dropping `sock` at the end of this
    // function is harmless: a submitted request holds its own reference to
    // the socket file.
    unsafe { ring.submission().push(&sqe) }.map_err(|_| "submission queue full".to_string())?;
    ring.submit().map_err(|e| format!("io_uring_enter: {e}"))?;
    *recv_armed = true;
    sock.send_to(b"cpm-edge probe", me)
        .map_err(|e| format!("probe send: {e}"))?;

    let ts = Timespec::from(WAIT);
    let args = SubmitArgs::new().timespec(&ts);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut outcome = None;
        for cqe in ring.completion() {
            if cqe.user_data() != RECV_UD {
                continue;
            }
            let (res, flags) = (cqe.result(), cqe.flags());
            if !cqueue::more(flags) {
                *recv_armed = false;
            }
            outcome = Some(if res == -libc::EINVAL {
                Err("multishot recvmsg unsupported (needs Linux >= 6.0)".to_string())
            } else if res < 0 {
                Err(format!(
                    "multishot recvmsg: {}",
                    io::Error::from_raw_os_error(-res)
                ))
            } else if let Some(bid) = cqueue::buffer_select(flags) {
                match RecvMsgOut::parse(bufs.buf(bid), hdr) {
                    Ok(m) if m.payload_data() == b"cpm-edge probe" && cqueue::more(flags) => Ok(()),
                    Ok(_) => Err("multishot recvmsg: unexpected completion".to_string()),
                    Err(()) => Err("multishot recvmsg: unparsable buffer".to_string()),
                }
            } else {
                Err("multishot recvmsg completed without a provided buffer".to_string())
            });
            break;
        }
        if let Some(o) = outcome {
            return o;
        }
        if Instant::now() >= deadline {
            return Err("multishot recvmsg: no completion within 2 s".into());
        }
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(format!("io_uring_enter: {e}")),
        }
    }
}

/// Run the worker loop on `socket` with io_uring until `stop`.
///
/// Returns an error when the resources cannot be set up (bad `buf_count`,
/// ring creation or buffer registration refused) or `io_uring_enter`
/// fails for a reason other than a signal or a timeout. Per-datagram errors
/// go to the handler: receive errors (ENOBUFS when the buffer ring ran dry,
/// ECONNREFUSED, ...) to `on_recv_error` after which the receive is re-armed,
/// send errors to `on_send_error`.
pub fn run<H: DatagramHandler>(
    socket: &UdpSocket,
    cfg: IoConfig,
    handler: &mut H,
    stop: &AtomicBool,
) -> io::Result<()> {
    let batch = cfg.batch.clamp(1, u16::MAX as usize);
    if !cfg.buf_count.is_power_of_two() || cfg.buf_count > MAX_BUF_COUNT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "io_uring buf_count must be a power of two <= {MAX_BUF_COUNT}, got {}",
                cfg.buf_count
            ),
        ));
    }
    let entry_len = RECVMSG_OUT_LEN + NAME_LEN + cfg.buf_size;
    if entry_len > u32::MAX as usize || cfg.out_size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "io buffer size out of range",
        ));
    }

    let bufs = BufRing::new(cfg.buf_count, entry_len)?;
    let mut tx = Tx::new(batch, cfg.out_size);
    let hdr = recv_msghdr();
    // Room for the streams' arms and cancels of a turn (more are pushed
    // after a submit).
    let sq_entries = 256;
    // The completions of every provided buffer plus slack; the streams'
    // final completions beyond that wait in the kernel's overflow list
    // (IORING_FEAT_NODROP), never lost.
    let cq_entries = (cfg.buf_count + STREAM_BUFS + 64).next_power_of_two() as u32;
    let mut ring = build_ring(sq_entries, cq_entries)?;
    // SAFETY: the ring memory is freed only after the ring is gone or the
    // group unregistered (below), or never (leaked).
    unsafe { bufs.register(&ring.submitter(), BGID) }?;
    // The stream connections' receives, when the handler has them: their
    // own buffer group, registered before any of their requests.
    let sbufs = match cfg.wake {
        Some(_) => {
            let b = BufRing::new(STREAM_BUFS, STREAM_BUF_LEN)?;
            // SAFETY: as for `bufs`: freed only once no request uses it.
            unsafe { b.register(&ring.submitter(), STREAM_BGID) }?;
            Some(b)
        }
        None => None,
    };
    let ring_streams = sbufs.is_some() && handler.enable_ring_receives();

    // From here on the kernel may hold pointers into this memory. It is
    // freed only once the kernel is known to be done with it (every request
    // completed); on any other exit, including a panic unwinding out of the
    // handler, it is leaked rather than freed under the kernel.
    let mut bufs = ManuallyDrop::new(bufs);
    let hdr = ManuallyDrop::new(hdr);
    bufs.provide_all();
    let mut sbufs = ManuallyDrop::new(sbufs);
    if let Some(b) = sbufs.as_mut() {
        b.provide_all();
    }

    let mut lp = Loop {
        fd: socket.as_raw_fd(),
        wake: cfg.wake,
        wake_armed: false,
        woken: false,
        last_wake: Instant::now(),
        batch,
        bufs: &mut bufs,
        tx: &mut tx,
        hdr: &hdr,
        recv_armed: false,
        pending: VecDeque::with_capacity(cfg.buf_count + 4),
        pending_errors: 0,
        streams: match (ring_streams, sbufs.as_mut()) {
            (true, Some(b)) => Some(RingStreams {
                bufs: b,
                inflight: HashMap::new(),
                ops: Vec::new(),
                arm: Vec::new(),
                cancel: Vec::new(),
            }),
            _ => None,
        },
    };
    let result = lp.run(&mut ring, handler, stop);
    let recv_armed = lp.recv_armed;
    let mut inflight = lp.streams.take().map(|r| r.inflight).unwrap_or_default();
    let drained = cancel_and_drain(&mut ring, recv_armed, &mut inflight);
    if drained {
        let _ = ring.submitter().unregister_buf_ring(BGID);
        let _ = ring.submitter().unregister_buf_ring(STREAM_BGID);
        drop(ring);
        drop(ManuallyDrop::into_inner(bufs));
        drop(ManuallyDrop::into_inner(sbufs));
        drop(ManuallyDrop::into_inner(hdr));
    }
    result
}

/// The state of one worker loop.
struct Loop<'a> {
    fd: RawFd,
    batch: usize,
    bufs: &'a mut BufRing,
    /// The current batch's outputs.
    tx: &'a mut Tx,
    hdr: &'a libc::msghdr,
    /// A multishot recv is (or will be, once submitted) in the kernel.
    recv_armed: bool,
    /// `IoConfig::wake`, its multishot poll armed, and a readiness seen.
    wake: Option<RawFd>,
    wake_armed: bool,
    woken: bool,
    /// The handler's wake also runs its timers: at least every
    /// `super::WAKE_TICK`.
    last_wake: Instant,
    /// Receive completions (result, flags) drained from the CQ and not yet
    /// handled. Holds at most one error (the receive is re-armed only when
    /// none is pending) plus one entry per provided buffer, so it never
    /// grows past its initial capacity.
    pending: VecDeque<(i32, u32)>,
    pending_errors: usize,
    /// Ring mode: the stream connections' receives.
    streams: Option<RingStreams<'a>>,
}

/// The stream connections' multishot receives (ring mode).
///
/// Invariant: `inflight` holds exactly the keys whose request the kernel
/// has (pushed, and no final completion seen), with the descriptor and
/// whether the connection still wants it (`false` once cancelled). Every
/// queue is bounded by the connections the reactor holds (one arm and one
/// cancel each at most).
struct RingStreams<'a> {
    bufs: &'a mut BufRing,
    inflight: HashMap<u64, (RawFd, bool)>,
    /// Taken from the handler each turn.
    ops: Vec<RingOp>,
    /// Receives to push: new connections, and live ones whose multishot
    /// ended without their end (buffers ran out: ENOBUFS).
    arm: Vec<(u64, RawFd)>,
    /// Cancels to push.
    cancel: Vec<u64>,
}

impl Loop<'_> {
    fn run<H: DatagramHandler>(
        &mut self,
        ring: &mut IoUring,
        handler: &mut H,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let (submitter, mut sq, mut cq) = ring.split();
        let ts = Timespec::from(WAIT);
        let wait_args = SubmitArgs::new().timespec(&ts);
        let cap = self.pending.capacity();

        while !stop.load(Ordering::Relaxed) {
            // 1. Completions: receives are queued in order.
            cq.sync();
            while self.pending.len() < cap {
                let Some(cqe) = cq.next() else { break };
                // The datagram receive, the wake poll and the streams'
                // receives complete during the loop (their cancels too,
                // which carry nothing).
                if cqe.user_data() & TAG_MASK == STREAM_TAG {
                    self.stream_completion(cqe.user_data(), cqe.result(), cqe.flags(), handler);
                    continue;
                }
                if cqe.user_data() == WAKE_UD {
                    self.woken = true;
                    if !cqueue::more(cqe.flags()) {
                        self.wake_armed = false;
                    }
                    continue;
                }
                if cqe.user_data() == RECV_UD {
                    if !cqueue::more(cqe.flags()) {
                        self.recv_armed = false;
                    }
                    if cqe.result() < 0 {
                        self.pending_errors += 1;
                    }
                    if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                        self.bufs.taken(bid);
                    }
                    self.pending.push_back((cqe.result(), cqe.flags()));
                }
            }
            cq.sync();

            // 2. One batch: up to `batch` datagrams.
            let mut started = false;
            let mut n = 0;
            // Outputs filled in `tx` for this batch.
            let mut k = 0;
            while n < self.batch {
                let Some((res, flags)) = self.pending.pop_front() else {
                    break;
                };
                let bid = cqueue::buffer_select(flags);
                if res < 0 {
                    self.pending_errors -= 1;
                    if res != -libc::ECANCELED {
                        handler.on_recv_error(-res);
                    }
                } else if let Some(bid) = bid {
                    if !started {
                        handler.on_batch_start();
                        started = true;
                    }
                    n += 1;
                    k += usize::from(self.dispatch(bid, k, handler));
                } else {
                    handler.on_recv_error(libc::EINVAL);
                }
                if let Some(bid) = bid {
                    self.bufs.provide(bid);
                }
            }

            // 3. Re-arm the receive once no error is pending and the ring
            //    has a buffer (after ENOBUFS, ECONNREFUSED, CQ overflow...).
            if !self.recv_armed
                && self.pending_errors == 0
                && self.bufs.has_free(self.pending.len())
            {
                let sqe = recv_sqe(self.fd, self.hdr);
                // SAFETY: the SQE points at `self.hdr` and buffer group BGID,
                // both alive until the request is cancelled and drained (or
                // leaked) by `run`'s caller.
                if unsafe { sq.push(&sqe) }.is_ok() {
                    self.recv_armed = true;
                }
            }

            // 4. The batch's outputs: one sendmmsg.
            if started {
                if k > 0 {
                    self.tx.send(self.fd, k, handler);
                }
                handler.on_batch_end();
            }

            // 5. The wake descriptor: its work, and its poll re-armed; the
            //    streams' receives asked for (armed, cancelled).
            self.wake(&mut sq, handler);
            self.stream_requests((&submitter, &mut sq), handler);

            // 6. Nothing to do without the kernel: wait (bounded); the
            //    same call submits a re-arm.
            sq.sync();
            cq.sync();
            if self.pending.is_empty() && cq.is_empty() {
                match submitter.submit_with_args(1, &wait_args) {
                    Ok(_) => {}
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(e),
                }
                sq.sync();
            }
        }
        Ok(())
    }

    /// Readiness of `IoConfig::wake` seen: the handler does its work.
    /// Its poll is (re-)armed whenever it is not: a single-shot end
    /// (`more` unset) or the first pass.
    fn wake<H: DatagramHandler>(&mut self, sq: &mut squeue::SubmissionQueue<'_>, handler: &mut H) {
        let Some(fd) = self.wake else { return };
        if self.woken || self.last_wake.elapsed() >= super::WAKE_TICK {
            self.woken = false;
            self.last_wake = Instant::now();
            handler.on_wake();
        }
        if !self.wake_armed {
            let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(WAKE_UD);
            // SAFETY: a poll request holds no pointer into our memory.
            if unsafe { sq.push(&sqe) }.is_ok() {
                self.wake_armed = true;
            }
        }
    }

    /// One completion of a stream connection's receive: its bytes (or its
    /// end, or its error) to the handler while the connection wants them,
    /// the buffer back to the kernel, and a multishot that ended while the
    /// connection lives asked again.
    fn stream_completion<H: DatagramHandler>(&mut self, ud: u64, res: i32, flags: u32, h: &mut H) {
        let Some(rs) = self.streams.as_mut() else {
            return;
        };
        let key = ud & !TAG_MASK;
        let bid = cqueue::buffer_select(flags);
        if let Some(bid) = bid {
            rs.bufs.taken(bid);
        }
        let wanted = rs.inflight.get(&key).is_some_and(|&(_, w)| w);
        if !cqueue::more(flags) {
            if let Some((fd, true)) = rs.inflight.remove(&key) {
                if res > 0 || res == -libc::ENOBUFS {
                    rs.arm.push((key, fd));
                }
            }
        }
        match (res, bid) {
            (n, Some(bid)) if n > 0 && wanted => {
                let len = (n as usize).min(rs.bufs.buf_len);
                h.on_ring_recv(key, Ok(&rs.bufs.buf(bid)[..len]));
            }
            (0, _) if wanted => h.on_ring_recv(key, Ok(&[])),
            (e, _) if e < 0 && wanted && e != -libc::ENOBUFS && e != -libc::ECANCELED => {
                h.on_ring_recv(key, Err(-e));
            }
            _ => {}
        }
        if let Some(bid) = bid {
            rs.bufs.provide(bid);
        }
    }

    /// The handler's requests for the streams' receives into the
    /// submission queue: what does not fit waits for the next turn.
    fn stream_requests<H: DatagramHandler>(
        &mut self,
        (submitter, sq): (&Submitter<'_>, &mut squeue::SubmissionQueue<'_>),
        h: &mut H,
    ) {
        let Some(rs) = self.streams.as_mut() else {
            return;
        };
        h.take_ring_ops(&mut rs.ops);
        for op in rs.ops.drain(..) {
            match op {
                RingOp::Arm { fd, key } => rs.arm.push((key, fd)),
                RingOp::Cancel { key } => {
                    rs.arm.retain(|&(k, _)| k != key);
                    if let Some(e) = rs.inflight.get_mut(&key).filter(|e| e.1) {
                        e.1 = false;
                        rs.cancel.push(key);
                    }
                }
            }
        }
        while let Some(&key) = rs.cancel.last() {
            let sqe = opcode::AsyncCancel::new(STREAM_TAG | key)
                .build()
                .user_data(CANCEL_UD);
            // SAFETY: a cancel request carries no pointer.
            if !push_or_submit(submitter, sq, &sqe) {
                return;
            }
            rs.cancel.pop();
        }
        while let Some(&(key, fd)) = rs.arm.last() {
            let sqe = opcode::RecvMulti::new(types::Fd(fd), STREAM_BGID)
                .build()
                .user_data(STREAM_TAG | key);
            // SAFETY: the request points at buffer group STREAM_BGID only,
            // alive until every stream receive has completed (or leaked)
            // in `run`; the descriptor is the connection's, open while
            // `inflight` says the request may be in the kernel's hands (its
            // close asks for a cancel first, and the kernel holds its own
            // reference to the file besides).
            if !push_or_submit(submitter, sq, &sqe) {
                return;
            }
            rs.arm.pop();
            rs.inflight.insert(key, (fd, true));
        }
    }

    /// Hand one received buffer to the handler; its output (if any) goes in
    /// output slot `k` of the batch's sendmmsg. True when it produced one.
    fn dispatch<H: DatagramHandler>(&mut self, bid: u16, k: usize, handler: &mut H) -> bool {
        let msg = match RecvMsgOut::parse(self.bufs.buf(bid), self.hdr) {
            Ok(m) => m,
            Err(()) => {
                handler.on_recv_error(libc::EINVAL);
                return false;
            }
        };
        let mut ss = zeroed_storage();
        let name = msg.name_data();
        let copy = name.len().min(mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `copy` bytes fit both in `name` and in `ss`, which are
        // distinct objects; sockaddr_storage is plain data so any bytes are
        // a valid value.
        unsafe {
            ptr::copy_nonoverlapping(
                name.as_ptr(),
                (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
                copy,
            )
        };
        let Some(src) = from_sockaddr(&ss, msg.incoming_name_len() as libc::socklen_t) else {
            handler.on_recv_error(libc::EAFNOSUPPORT);
            return false;
        };
        debug_assert!(k < self.batch, "one output slot per datagram of a batch");
        match handler.on_datagram(
            msg.payload_data(),
            msg.is_payload_truncated(),
            src,
            self.tx.out(k),
        ) {
            Some((len, dst)) => {
                self.tx.set(k, len, dst);
                true
            }
            None => false,
        }
    }
}

/// Cancel the multishot receive (if armed) and wait until the kernel has
/// completed it. True when nothing is left in flight, false when the
/// deadline passed first or the ring failed.
fn cancel_and_drain(
    ring: &mut IoUring,
    mut recv_armed: bool,
    streams: &mut HashMap<u64, (RawFd, bool)>,
) -> bool {
    let (submitter, mut sq, mut cq) = ring.split();
    let ts = Timespec::from(WAIT);
    let args = SubmitArgs::new().timespec(&ts);
    let deadline = Instant::now() + DRAIN_DEADLINE;
    let mut cancel_sent = false;
    loop {
        cq.sync();
        for cqe in &mut cq {
            let ud = cqe.user_data();
            if ud == RECV_UD && !cqueue::more(cqe.flags()) {
                recv_armed = false;
            }
            if ud & TAG_MASK == STREAM_TAG && !cqueue::more(cqe.flags()) {
                streams.remove(&(ud & !TAG_MASK));
            }
        }
        cq.sync();
        if !recv_armed && streams.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if !cancel_sent {
            // Every request of the ring at once: the datagram receive, the
            // wake poll and every stream receive.
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(CANCEL_UD);
            // SAFETY: a cancel request carries no pointer.
            cancel_sent = unsafe { sq.push(&sqe) }.is_ok();
            sq.sync();
        }
        match submitter.submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if is_transient(&e) => {}
            Err(_) => return false,
        }
        sq.sync();
    }
}

/// Push `sqe`, submitting what the queue holds first when it is full.
/// `false`: it did not fit even then (it waits for the next turn).
///
/// The caller vouches for `sqe` as for [`squeue::SubmissionQueue::push`]:
/// everything it points at stays valid until it completes.
fn push_or_submit(
    submitter: &Submitter<'_>,
    sq: &mut squeue::SubmissionQueue<'_>,
    sqe: &squeue::Entry,
) -> bool {
    // SAFETY: the caller's promise above.
    if unsafe { sq.push(sqe) }.is_ok() {
        return true;
    }
    sq.sync();
    let _ = submitter.submit();
    sq.sync();
    // SAFETY: as above.
    unsafe { sq.push(sqe) }.is_ok()
}

/// Errors of `io_uring_enter` that only mean "try again".
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

/// Create a ring: the single-issuer deferred-task-run flavour when the
/// kernel has it (completions are produced only when this thread enters the
/// kernel: no inter-processor interrupts), else a plain one.
fn build_ring(sq_entries: u32, cq_entries: u32) -> io::Result<IoUring> {
    let fast = IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_clamp()
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(sq_entries);
    match fast {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(cq_entries)
            .setup_clamp()
            .build(sq_entries),
        other => other,
    }
}

/// Explain a failed `io_uring_setup`.
fn setup_error(e: io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) => {
            match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .as_deref()
                .map(str::trim)
            {
                Some("2") => " (sysctl kernel.io_uring_disabled=2)",
                Some("1") => {
                    " (sysctl kernel.io_uring_disabled=1 and not in kernel.io_uring_group)"
                }
                _ => " (blocked by a seccomp or LSM policy)",
            }
        }
        Some(libc::ENOSYS) => " (kernel without io_uring, or the syscall is filtered)",
        _ => "",
    };
    format!("io_uring_setup: {e}{hint}")
}

/// The multishot receive request.
fn recv_sqe(fd: RawFd, hdr: &libc::msghdr) -> squeue::Entry {
    opcode::RecvMsgMulti::new(types::Fd(fd), hdr, BGID)
        .build()
        .user_data(RECV_UD)
}

/// The recvmsg template of the multishot receive: only the name and
/// control lengths matter (they lay out each buffer).
fn recv_msghdr() -> Box<libc::msghdr> {
    // SAFETY: msghdr is plain old data; all-zero (null pointers, zero
    // lengths) is a valid value.
    let mut h: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
    h.msg_namelen = NAME_LEN as libc::socklen_t;
    h.msg_controllen = 0;
    h
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    unsafe { mem::zeroed() }
}

/// An anonymous private read-write mapping, zero-filled, page aligned.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn new(len: usize) -> io::Result<Mmap> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: an anonymous mapping at an address of the kernel's choice
        // touches no existing memory; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap {
            ptr: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
        })
    }

    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; no reference into
        // the mapping outlives `self` (all handed-out slices borrow it), and
        // owners leak the mapping instead of dropping it while the kernel may
        // still use it.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// `struct io_uring_buf`: one entry of a provided-buffer ring. In entry 0,
/// `resv` is the ring's tail, written by us and read by the kernel.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}
const _: () = assert!(mem::size_of::<RawBuf>() == 16);

/// A provided-buffer ring and its buffers.
struct BufRing {
    ring: Mmap,
    bufs: Mmap,
    entries: u16,
    mask: u16,
    /// Our tail; published to the kernel with a release store.
    tail: u16,
    /// Distance between buffers (cache-line aligned).
    stride: usize,
    /// Length of each buffer given to the kernel.
    buf_len: usize,
    /// Debug builds: which buffers are in the kernel's hands.
    #[cfg(debug_assertions)]
    in_ring: Vec<bool>,
}

impl BufRing {
    fn new(entries: usize, buf_len: usize) -> io::Result<BufRing> {
        assert!(entries.is_power_of_two() && entries <= MAX_BUF_COUNT);
        let stride = buf_len.div_ceil(64) * 64;
        Ok(BufRing {
            ring: Mmap::new(entries * mem::size_of::<RawBuf>())?,
            bufs: Mmap::new(entries * stride)?,
            entries: entries as u16,
            mask: (entries - 1) as u16,
            tail: 0,
            stride,
            buf_len,
            #[cfg(debug_assertions)]
            in_ring: vec![false; entries],
        })
    }

    /// Register the ring as buffer group `bgid`.
    ///
    /// # Safety
    /// The ring memory must stay mapped until the group is unregistered or
    /// the io_uring is closed with no request left using it.
    unsafe fn register(&self, submitter: &Submitter<'_>, bgid: u16) -> io::Result<()> {
        // SAFETY: the mapping is page aligned and holds `entries` entries,
        // as the kernel requires; its lifetime is the caller's contract.
        unsafe {
            submitter.register_buf_ring_with_flags(self.ring.as_ptr() as u64, self.entries, bgid, 0)
        }
    }

    /// Give every buffer to the kernel.
    fn provide_all(&mut self) {
        for bid in 0..self.entries {
            self.provide(bid);
        }
    }

    /// Give buffer `bid` back to the kernel (it must not be in the ring).
    fn provide(&mut self, bid: u16) {
        #[cfg(debug_assertions)]
        {
            let given = &mut self.in_ring[bid as usize];
            assert!(!*given, "buffer {bid} provided twice");
            *given = true;
        }
        let slot = (self.tail & self.mask) as usize;
        let base = self.ring.as_ptr().cast::<RawBuf>();
        // SAFETY: slot < entries, inside the ring mapping, whose base is page
        // aligned hence aligned for RawBuf. The entry at the tail is not
        // owned by the kernel (it only reads entries between its head and
        // the published tail), so writing it races with nothing; fields are
        // written through raw pointers, leaving `resv` of entry 0 (the tail,
        // read concurrently by the kernel) untouched. `bid` < entries keeps
        // the address inside the buffer mapping.
        unsafe {
            let e = base.add(slot);
            ptr::addr_of_mut!((*e).addr)
                .write(self.bufs.as_ptr().add(bid as usize * self.stride) as u64);
            ptr::addr_of_mut!((*e).len).write(self.buf_len as u32);
            ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: `resv` of entry 0 is a 2-byte aligned u16 inside the
        // mapping, only ever accessed atomically (by us here and by the
        // kernel); the release store publishes the entry written above.
        let tail = unsafe { &*ptr::addr_of!((*base).resv).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// A completion handed buffer `bid` to us (checked in debug builds).
    fn taken(&mut self, bid: u16) {
        #[cfg(debug_assertions)]
        {
            let given = &mut self.in_ring[(bid & self.mask) as usize];
            assert!(*given, "buffer {bid} completed but not provided");
            *given = false;
        }
        let _ = bid;
    }

    /// Whether the kernel has at least one buffer, given how many are held
    /// by pending completions (an upper bound on those not in the ring).
    fn has_free(&self, held: usize) -> bool {
        held < self.entries as usize
    }

    /// The whole of buffer `bid` (header, name, payload).
    fn buf(&self, bid: u16) -> &[u8] {
        let bid = (bid & self.mask) as usize;
        // SAFETY: the range is inside the buffer mapping (bid < entries,
        // buf_len <= stride), which is initialized (zero-filled, then written
        // by the kernel). The buffer was handed to us by a completion, so
        // the kernel no longer writes it until we provide it again, which
        // needs `&mut self` and so ends this borrow first.
        unsafe {
            std::slice::from_raw_parts(self.bufs.as_ptr().add(bid * self.stride), self.buf_len)
        }
    }
}
