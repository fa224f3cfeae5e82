//! Seed 5.3.1.1.1 end to end through a real SMS gateway: a CPM pager-mode
//! MESSAGE for a user who is not registered and prefers SMS goes client →
//! cpm-edge → her Participating Function (cpm-cs) → cpm-edge → cpm-iwf →
//! Kannel (bearerbox + smsbox) → fakesmsc playing the SMSC, and lands with
//! her MSISDN and the text. Kannel is Debian's `kannel` + `kannel-extras`
//! (tests/run.sh installs them); every process is started here on loopback
//! and stopped by PID.

mod common;
use common::free_port;
use common::party::{Party, Received};
use cpm_edge::app::App;
use cpm_edge::config::Config;
use cpm_edge::iwfnode::{self, Iwf};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DOMAIN: &str = "example.net";
const BEARERBOX: &str = "/usr/sbin/bearerbox";
const SMSBOX: &str = "/usr/sbin/smsbox";
const FAKESMSC: &str = "/usr/lib/kannel/test/fakesmsc";
const MSG_TAG: &str = "+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"";

/// Kannel's three processes, killed by PID when dropped.
struct Kannel {
    children: Vec<Child>,
    dir: PathBuf,
    sendsms: SocketAddr,
}

impl Drop for Kannel {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(bin: &str, args: &[&str], log: &Path) -> Child {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: apt-get install kannel kannel-extras (tests/run.sh does)"
    );
    let out = std::fs::File::create(log).unwrap();
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"))
}

fn wait_tcp(a: SocketAddr, what: &str) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what} never listened on {a}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_kannel() -> Kannel {
    let dir =
        std::env::temp_dir().join(format!("cpm-kannel-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(dir.join("spool")).unwrap();
    let (admin, boxp, smsc, sendsms) = (free_port(), free_port(), free_port(), free_port());
    let conf = format!(
        "group = core\nadmin-port = {admin}\nadmin-password = adm\nsmsbox-port = {boxp}\n\
         log-file = \"{d}/bearerbox.log\"\nlog-level = 0\nbox-allow-ip = \"127.0.0.1\"\n\
         admin-allow-ip = \"127.0.0.1\"\nstore-type = spool\nstore-location = \"{d}/spool\"\n\
         dlr-storage = internal\n\n\
         group = smsc\nsmsc = fake\nsmsc-id = fake1\nport = {smsc}\nconnect-allow-ip = 127.0.0.1\n\n\
         group = smsbox\nbearerbox-host = 127.0.0.1\nbearerbox-port = {boxp}\nsendsms-port = {sendsms}\n\
         sendsms-interface = 127.0.0.1\nlog-file = \"{d}/smsbox.log\"\nlog-level = 0\n\n\
         group = sendsms-user\nusername = iwf\npassword = iwf-secret\nconcatenation = true\nmax-messages = 10\n",
        d = dir.display()
    );
    let cfg = dir.join("kannel.conf");
    std::fs::write(&cfg, conf).unwrap();
    let cfg_s = cfg.to_str().unwrap().to_string();
    let mut k = Kannel {
        children: Vec::new(),
        sendsms: format!("127.0.0.1:{sendsms}").parse().unwrap(),
        dir: dir.clone(),
    };
    k.children
        .push(spawn(BEARERBOX, &[&cfg_s], &dir.join("bearerbox.out")));
    wait_tcp(format!("127.0.0.1:{smsc}").parse().unwrap(), "bearerbox");
    k.children
        .push(spawn(SMSBOX, &[&cfg_s], &dir.join("smsbox.out")));
    let smsc_s = smsc.to_string();
    k.children.push(spawn(
        FAKESMSC,
        &["-H", "127.0.0.1", "-r", &smsc_s, "-i", "1", "-m", "0", "x"],
        &dir.join("fakesmsc.out"),
    ));
    wait_tcp(k.sendsms, "smsbox");
    k
}

/// fakesmsc's log lines for received messages: `<from to type text>`.
fn smsc_got(k: &Kannel) -> Vec<String> {
    std::fs::read_to_string(k.dir.join("fakesmsc.out"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("Got message ").map(|(_, r)| r.to_string()))
        .collect()
}

fn send_message(p: &Party, edge: SocketAddr, to: &str, n: u32, text: &str) -> String {
    let call_id = format!("iw-{n}-{}", p.addr().port());
    let req = format!(
        "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-iw{n}-{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=m{n}\r\nTo: <{to}>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 MESSAGE\r\nAccept-Contact: *;{MSG_TAG}\r\nContent-Type: text/plain;charset=UTF-8\r\n\
         Content-Length: {}\r\n\r\n{text}",
        text.len(),
        a = p.addr(),
    );
    p.send_raw(req.as_bytes(), edge);
    let fin = |r: &Received| {
        r.call_id == call_id && r.method_or_code.parse::<u16>().is_ok_and(|c| c >= 200)
    };
    assert!(
        p.wait_for(|l| l.iter().any(fin), Duration::from_secs(8)),
        "no answer to MESSAGE {n}: {:?}",
        p.summary()
    );
    p.log().into_iter().find(fin).map(|r| r.start_line).unwrap()
}

#[test]
fn a_message_for_an_unregistered_user_preferring_sms_lands_at_the_smsc() {
    let kannel = start_kannel();
    let edge_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let iwf_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cs = [free_port(), free_port()];
    let shards = format!(
        "[[shard]]\nname = \"cs1\"\naddr = \"127.0.0.1:{}\"\n[[shard]]\nname = \"cs2\"\naddr = \"127.0.0.1:{}\"\n",
        cs[0], cs[1]
    );
    let edge_toml = format!(
        "[listen]\naddr = \"{edge_addr}\"\n[admin]\nbind = \"127.0.0.1:0\"\n[workers]\ncount = 1\n\
         [health]\nenabled = false\n{shards}[[iwf]]\nservice = \"sms\"\naddr = \"{iwf_addr}\"\n"
    );
    let edge = App::start(&Config::parse(&edge_toml).unwrap().validate().unwrap()).unwrap();
    let cs_toml = format!(
        "[server]\nedges = [\"{edge_addr}\"]\nterminating = \"registered\"\n{shards}\
         [[user]]\nid = \"sip:alice@{DOMAIN}\"\n\
         [[user]]\nid = \"sip:erin@{DOMAIN}\"\nwhen_unregistered = \"sms\"\nmsisdn = \"+447700900123\"\n\
         [[user]]\nid = \"sip:frank@{DOMAIN}\"\nwhen_unregistered = \"sms\"\nmsisdn = \"+447700900124\"\n"
    );
    let nodes: Vec<_> = ["cs1", "cs2"]
        .iter()
        .map(|n| cpm_edge::csnode::start_shard(&cs_toml, n, false).unwrap())
        .collect();
    let iwf_toml = format!(
        "[sip]\nlisten = \"{iwf_addr}\"\nedges = [\"{edge_addr}\"]\nsender = \"+447700900000\"\nmax_parts = 3\n\
         [kannel]\nsendsms = \"{}\"\nusername = \"iwf\"\npassword = \"iwf-secret\"\ntimeout_ms = 3000\n",
        kannel.sendsms
    );
    let mut iwf = Iwf::start(iwfnode::load(&iwf_toml).unwrap()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let iwf_thread = std::thread::spawn(move || iwf.run(&s2));

    let alice = Party::bind("alice");
    let ok = send_message(
        &alice,
        edge_addr,
        &format!("sip:erin@{DOMAIN}"),
        1,
        "hello erin, by SMS",
    );
    assert!(ok.starts_with("SIP/2.0 202 "), "{ok}");
    let t0 = Instant::now();
    while smsc_got(&kannel).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nothing reached fakesmsc"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = smsc_got(&kannel);
    assert!(
        got[0].ends_with("<+447700900000 +447700900123 text hello erin, by SMS>"),
        "{got:?}"
    );
    // A text beyond the IWF's 3 parts: a clear error back to alice, and
    // nothing sent.
    let long = "x".repeat(3 * 153 + 1);
    let no = send_message(&alice, edge_addr, &format!("sip:frank@{DOMAIN}"), 2, &long);
    assert!(
        no.starts_with("SIP/2.0 413 Request Entity Too Large - Text Needs 4 SMS Parts (At Most 3)"),
        "{no}"
    );
    // Kannel gone: the IWF says so (503) rather than losing the message.
    drop(kannel);
    let dead = send_message(
        &alice,
        edge_addr,
        &format!("sip:frank@{DOMAIN}"),
        3,
        "anyone?",
    );
    assert!(
        dead.starts_with("SIP/2.0 503 Service Unavailable - SMS Gateway Unreachable"),
        "{dead}"
    );
    stop.store(true, Ordering::Relaxed);
    iwf_thread.join().unwrap();
    drop(nodes);
    edge.stop().unwrap();
}
