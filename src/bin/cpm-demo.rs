//! `cpm-demo`: the bundled client of README's demo. Against a running
//! `cpm-system`, it plays the five demo users of group
//! `sip:grp1@groups.example.net` (alice..erin on 127.0.0.1:5071-5075) and
//! sets up a pre-defined group session, OMA CPM Appendix C.1: alice invites
//! the group, bob accepts at once, carol a second later, dave is busy, erin
//! rings until the Controlling Function CANCELs her; then alice hangs up.
//! Every message each client receives is printed as it arrives.
//!
//! The user agents are the scripted parties of the end-to-end tests
//! (`tests/common/party.rs`, included by path): a plain RFC 3261 UA that
//! shares no code with the server it talks to.

#[allow(dead_code)]
#[path = "../../tests/common/party.rs"]
mod party;

use clap::Parser;
use party::{msrp_sdp, Answer, Party};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "cpm-demo",
    about = "A pre-defined group session (OMA CPM Appendix C.1) through cpm-system"
)]
struct Cli {
    /// The edge.
    #[arg(long, default_value = "127.0.0.1:5060")]
    edge: SocketAddr,
    #[arg(long, default_value = "sip:grp1@groups.example.net")]
    group: String,
    /// How long to wait for the silent member's CANCEL (the CS's invite
    /// timeout is 10 s in cpm-cs's embedded default).
    #[arg(long, default_value_t = 12)]
    ring_seconds: u64,
}

const NAMES: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

fn main() {
    let cli = Cli::parse();
    let parties: Vec<Party> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let addr: SocketAddr = format!("127.0.0.1:{}", 5071 + i)
                .parse()
                .unwrap_or(cli.edge);
            Party::bind_at(n, addr)
        })
        .collect();
    script(&parties);
    let t0 = Instant::now();
    let mut shown = vec![0usize; parties.len()];
    println!("alice -> INVITE {} (via {})", cli.group, cli.edge);
    let call = parties[0].invite(
        &cli.group,
        cli.edge,
        &msrp_sdp("alice", parties[0].addr()),
        "",
    );
    let ring_until = Instant::now() + Duration::from_secs(cli.ring_seconds);
    while Instant::now() < ring_until && !settled(&parties) {
        show(&parties, &mut shown, t0);
        std::thread::sleep(Duration::from_millis(20));
    }
    show(&parties, &mut shown, t0);
    if call.is_confirmed() {
        println!("alice -> BYE");
        let code = call.bye();
        std::thread::sleep(Duration::from_millis(300));
        show(&parties, &mut shown, t0);
        println!("alice's BYE answered {code:?}");
    } else {
        println!(
            "alice's session was not set up: final {:?}",
            call.final_code()
        );
    }
    println!("\nwhat each client received (retransmissions removed):");
    for p in &parties {
        println!("  {:6} {:?}", p.name(), p.summary_dedup());
    }
}

/// C.1's cast: bob first, carol later, dave busy, erin rings.
fn script(p: &[Party]) {
    let accept = |p: &Party, ms: u64| Answer::Accept {
        ring: true,
        delay: Duration::from_millis(ms),
        sdp: msrp_sdp(p.name(), p.addr()),
    };
    p[1].set_answer(accept(&p[1], 0));
    p[2].set_answer(accept(&p[2], 1000));
    p[3].set_answer(Answer::Reject {
        code: 486,
        delay: Duration::from_millis(200),
    });
    p[4].set_answer(Answer::RingOnly);
}

/// erin's CANCEL has come and been answered: everything C.1 shows happened.
fn settled(p: &[Party]) -> bool {
    p[4].summary_dedup().iter().any(|s| s == "ACK")
}

fn show(parties: &[Party], shown: &mut [usize], t0: Instant) {
    for (i, p) in parties.iter().enumerate() {
        let log = p.log();
        for r in log.iter().skip(shown[i]) {
            let ms = r.at.saturating_duration_since(t0).as_millis();
            println!(
                "{ms:>6} ms  {:6} <- {}  ({})",
                p.name(),
                r.start_line,
                r.cseq
            );
        }
        shown[i] = log.len();
    }
}
