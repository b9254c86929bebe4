//! A real etcd for the cluster tests: Debian's `etcd` (package `etcd-server`, which
//! `cargo xtask test` installs) on free loopback ports with a temporary data folder, killed when
//! the handle drops. A missing etcd fails the test with the install command: a cluster
//! test never passes by not running. [`Etcd::start_tls`] serves https and asks every
//! client for a certificate (`--client-cert-auth`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockcore::cluster::EtcdClient;
use lockcore::config::ClusterTls;

/// One running etcd node.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    /// `http://127.0.0.1:PORT` (`https://` from [`Etcd::start_tls`]).
    pub endpoint: String,
    /// Holds the data folder and the node's log until the drop.
    dir: tempfile::TempDir,
    /// What [`Etcd::client`] shows a TLS node: its CA and a client certificate.
    tls: Option<ClusterTls>,
    /// The server side of a TLS node, to start it again the same way.
    server_tls: Option<EtcdTls>,
    /// The peer URL it was started with, to start it again on the same ports.
    peer_url: String,
}

/// The PEM files of an etcd that serves TLS (the server's certificate must name
/// 127.0.0.1 and allow client use too: etcd 3.4's JSON gateway dials its own gRPC
/// port with it).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// Signs the server's certificate and every client's (`--trusted-ca-file`).
    pub ca_file: PathBuf,
    /// `--cert-file`, `--key-file`.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// A client certificate and key the CA signed, for [`Etcd::client`].
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

/// The etcd binary: `FLEET_TEST_ETCD`, else `etcd` on the PATH.
fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLEET_TEST_ETCD") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => path,
        None => panic!(
            "the cluster tests need etcd and it is not on the PATH: install it \
             (`apt-get install -y etcd-server` on Debian; `cargo xtask test` does) or set \
             FLEET_TEST_ETCD to its path"
        ),
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

/// A folder for etcd's data. In memory (`/dev/shm`) where there is one: etcd fsyncs
/// its log on every write, and on a loaded test machine a disk fsync can outlast the
/// short request timeouts a 2 s lease implies, which would fail a test for the disk's
/// sake, not the lock's.
fn data_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    shm.is_dir()
        .then(|| tempfile::tempdir_in(shm).ok())
        .flatten()
        .map_or_else(tempfile::tempdir, Ok)
        .unwrap_or_else(|e| panic!("temp dir: {e}"))
}

/// Starts one node named `test` with its data under `dir`.
fn spawn_node(
    binary: &std::path::Path,
    dir: &std::path::Path,
    endpoint: &str,
    peer_url: &str,
    tls: Option<&EtcdTls>,
    log: std::fs::File,
    err: std::fs::File,
) -> Child {
    let mut command = Command::new(binary);
    if let Some(tls) = tls {
        command
            .arg(format!("--cert-file={}", tls.cert_file.display()))
            .arg(format!("--key-file={}", tls.key_file.display()))
            .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
            .arg("--client-cert-auth");
    }
    command
        .arg("--name=test")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=test={peer_url}"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

impl Etcd {
    /// Starts a one-node etcd and waits until it answers (at most 20 s; a port taken
    /// between the choice and the bind is tried again with new ports).
    pub fn start() -> Etcd {
        Etcd::start_with(None)
    }

    /// As [`Etcd::start`], serving https with `tls`'s certificate and refusing every
    /// client without a certificate its CA signed.
    pub fn start_tls(tls: &EtcdTls) -> Etcd {
        Etcd::start_with(Some(tls))
    }

    fn start_with(tls: Option<&EtcdTls>) -> Etcd {
        let probe_tls = tls.map(|tls| {
            ClusterTls::from_files(
                &tls.ca_file,
                Some((&tls.client_cert_file, &tls.client_key_file)),
            )
            .unwrap_or_else(|e| panic!("the test's TLS files: {e}"))
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let binary = etcd_binary();
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = data_dir();
            let (client, peer) = (free_port(), free_port());
            let endpoint = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log_path = dir.path().join("etcd.log");
            let log = std::fs::File::create(&log_path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
            let err = log
                .try_clone()
                .unwrap_or_else(|e| panic!("cannot reopen {}: {e}", log_path.display()));
            let child = spawn_node(&binary, dir.path(), &endpoint, &peer_url, tls, log, err);
            let mut etcd = Etcd {
                child,
                endpoint,
                dir,
                tls: probe_tls.clone(),
                server_tls: tls.cloned(),
                peer_url,
            };
            if etcd.wait_ready(Duration::from_secs(20)) {
                return etcd;
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            etcd.stop();
        }
        panic!("etcd did not start on loopback; its log:\n{last_log}");
    }

    /// Kills the node (SIGKILL) and leaves it down, its data kept: an etcd that
    /// crashed. [`Etcd::start_again`] brings it back.
    pub fn kill(&mut self) {
        self.stop();
    }

    /// The node's pid (to pause it with SIGSTOP, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the node again on the same ports and data after [`Etcd::kill`], as an
    /// operator restarting it would; waits until it answers (at most 20 s). Its leases
    /// and keys are the ones it had.
    pub fn start_again(&mut self) {
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot reopen {}: {e}", log_path.display()));
        // The client port may linger a moment after the kill: try for a while.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (log, err) = (
                log.try_clone().unwrap_or_else(|e| panic!("{e}")),
                err.try_clone().unwrap_or_else(|e| panic!("{e}")),
            );
            self.child = spawn_node(
                &etcd_binary(),
                self.dir.path(),
                &self.endpoint,
                &self.peer_url,
                self.server_tls.as_ref(),
                log,
                err,
            );
            if self.wait_ready(Duration::from_secs(10)) {
                return;
            }
            self.stop();
            assert!(
                Instant::now() < deadline,
                "etcd did not start again on {}; its log:\n{}",
                self.endpoint,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let client = self.client();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if client.get("/").is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// A client for this node with a 2 s request timeout (with the CA and the client
    /// certificate of a TLS node).
    pub fn client(&self) -> EtcdClient {
        EtcdClient::with_tls(
            vec![self.endpoint.clone()],
            None,
            Duration::from_secs(2),
            self.tls.as_ref(),
        )
    }

    /// The node's own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Skips a cluster test under Wine, saying why: a Windows test binary cannot start
/// Linux's etcd, and the cluster code is platform-free.
pub fn skip_under_wine(test: &str) -> bool {
    crate::wine::skip_under_wine(
        test,
        "etcd is a Linux program the Windows test binary cannot start; the cluster code is \
         platform-free and runs on Linux",
    )
}

/// A two-account desk for "host" `host` whose locks go through `endpoint`, TTL 2 s.
/// Each host's bots say which host they belong to (`--say`). Processes are recognised
/// by command line, so each test gives its desks names of their own (`tag`, made this
/// run's own with [`crate::unique`]: accounts `<tag>_<pid>1` and `2`, global
/// `qs_<tag>_<pid>`): tests running at once, here or in another checkout, must not see
/// each other's bots.
pub fn cluster_desk(endpoint: &str, host: &str, tag: &str) -> crate::Desk {
    let tag = crate::unique(tag);
    let accounts = [format!("{tag}1"), format!("{tag}2")];
    crate::Desk::with_options(
        &format!("qs_{tag}"),
        &[&accounts[0], &accounts[1]],
        &["--say", &format!("host-{host}")],
        &format!(
            "\n[cluster]\nendpoints = [\"{endpoint}\"]\nlease_ttl_secs = 2\nhost = \"{host}\"\n"
        ),
    )
}
