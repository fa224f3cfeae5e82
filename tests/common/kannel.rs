//! Debian's Kannel on loopback for the interworking tests: bearerbox, smsbox
//! and `fakesmsc` (kannel-extras) playing the SMSC, on free ports, killed
//! by PID when dropped.

use super::free_port;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BEARERBOX: &str = "/usr/sbin/bearerbox";
const SMSBOX: &str = "/usr/sbin/smsbox";
const FAKESMSC: &str = "/usr/lib/kannel/test/fakesmsc";

/// Kannel's three processes, killed by PID when dropped.
pub struct Kannel {
    children: Vec<Child>,
    pub dir: PathBuf,
    pub sendsms: SocketAddr,
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

pub fn start_kannel(mo_url: Option<&str>, mo_sms: Option<&str>) -> Kannel {
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
         group = sendsms-user\nusername = iwf\npassword = iwf-secret\nconcatenation = true\nmax-messages = 10\n{mo}",
        d = dir.display(),
        // Kannel's MO interface: every SMS from the SMSC to this URL; no
        // reply SMS (max-messages 0).
        mo = mo_url.map_or(String::new(), |u| format!(
            "\ngroup = sms-service\nkeyword = default\nget-url = \"{u}\"\nmax-messages = 0\ncatch-all = true\n"
        )),
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
        // fakesmsc sends `-m` MO messages (from to type text), one per `-i`
        // seconds, and logs every MT it receives.
        &[
            "-H",
            "127.0.0.1",
            "-r",
            &smsc_s,
            "-i",
            "1",
            "-m",
            if mo_sms.is_some() { "1" } else { "0" },
            mo_sms.unwrap_or("x"),
        ],
        &dir.join("fakesmsc.out"),
    ));
    wait_tcp(k.sendsms, "smsbox");
    k
}

/// fakesmsc's log lines for received messages: `<from to type text>`.
pub fn smsc_got(k: &Kannel) -> Vec<String> {
    std::fs::read_to_string(k.dir.join("fakesmsc.out"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("Got message ").map(|(_, r)| r.to_string()))
        .collect()
}

/// Wait (at most 10 s) until fakesmsc has received `n` messages; what it
/// received.
pub fn await_smsc(k: &Kannel, n: usize) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let got = smsc_got(k);
        if got.len() >= n {
            return got;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "fakesmsc got {got:?}, not {n}; kannel in {}",
            k.dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
