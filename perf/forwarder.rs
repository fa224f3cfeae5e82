//! cpm-forwarder: the no-parse baseline of the performance comparison.
//!
//! recvmmsg → sendmmsg with no SIP processing at all: datagrams from the
//! shard go to the client last seen, everything else goes to the shard.
//! It measures what the rig itself costs (mostly kernel UDP work), the
//! ceiling any SIP proxy on this machine can approach. Use it with one load
//! generator and a CS responder started with `--reply-to` this forwarder
//! (the forwarder adds no Via, so answers would otherwise bypass it).

#[path = "common.rs"]
mod common;

use clap::Parser;
use common::{
    bind_udp, install_stop_handlers, pin_to_cpu, stop_requested, wait_readable, MsgBatch,
    SendOutcome,
};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "No-parse UDP forwarder: the ceiling of the rig")]
struct Args {
    /// Address the generator sends to.
    #[arg(long, default_value = "127.0.0.1:5060")]
    listen: SocketAddr,
    /// The single shard every request goes to.
    #[arg(long, default_value = "127.0.0.1:7001")]
    shard: SocketAddrV4,
    /// Datagrams per recvmmsg/sendmmsg batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// CPU to pin to.
    #[arg(long)]
    cpu: Option<usize>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = install_stop_handlers() {
        eprintln!("cpm-forwarder: signals: {e}");
        std::process::exit(1);
    }
    if let Some(cpu) = args.cpu {
        if let Err(e) = pin_to_cpu(cpu) {
            eprintln!("cpm-forwarder: {e}");
            std::process::exit(1);
        }
    }
    let (sock, _, _) = match bind_udp(args.listen, 8 << 20) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cpm-forwarder: bind {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    let fd = sock.as_raw_fd();
    let mut b = MsgBatch::new(args.batch, 2048);
    let mut client: Option<SocketAddrV4> = None;
    let (mut to_shard, mut to_client, mut no_client, mut send_err) = (0u64, 0u64, 0u64, 0u64);
    let mut plan: Vec<Option<(usize, SocketAddrV4)>> = vec![None; args.batch];
    let mut ready = [false];
    println!(
        "cpm-forwarder: {} -> shard {} (no parsing), batch {}",
        args.listen, args.shard, args.batch
    );
    while !stop_requested() {
        wait_readable(&[fd], Duration::from_millis(100), &mut ready);
        loop {
            let n = match b.recv(fd, args.batch) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for (i, p) in plan.iter_mut().enumerate().take(n) {
                let (data, _, src) = b.received(i);
                *p = match src {
                    Some(s) if s == args.shard => client.map(|c| (data.len(), c)),
                    Some(s) => {
                        client = Some(s);
                        Some((data.len(), args.shard))
                    }
                    None => None,
                };
            }
            // Send each contiguous run of forwardable slots in one sendmmsg.
            let mut i = 0;
            while i < n {
                let Some((len, dst)) = plan[i] else {
                    no_client += 1;
                    i += 1;
                    continue;
                };
                let start = i;
                b.set_outgoing(i, len, dst);
                i += 1;
                while i < n {
                    let Some((len, dst)) = plan[i] else { break };
                    b.set_outgoing(i, len, dst);
                    i += 1;
                }
                let mut from = start;
                while from < i {
                    match b.send(fd, from, i, 0) {
                        SendOutcome::Sent(k) => {
                            for p in &plan[from..from + k] {
                                match p {
                                    Some((_, d)) if *d == args.shard => to_shard += 1,
                                    _ => to_client += 1,
                                }
                            }
                            from += k;
                        }
                        SendOutcome::WouldBlock => std::thread::sleep(Duration::from_micros(50)),
                        SendOutcome::Failed(_) => {
                            send_err += 1;
                            from += 1;
                        }
                    }
                }
            }
        }
    }
    println!("FORWARDER to_shard={to_shard} to_client={to_client} no_client={no_client} send_errors={send_err}");
}
