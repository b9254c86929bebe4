//! Cluster locks over TLS against a real etcd that serves https and asks every client
//! for a certificate (`--client-cert-auth`): a lock taken and kept alive past its TTL
//! with the config's CA and client certificate; a client without a certificate, or
//! one that trusts another CA, refused at once with an error naming the endpoint.
//! The certificates are made here (rcgen): a CA, a server certificate for 127.0.0.1,
//! a client certificate, and a second CA that signed none of them.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_tests::etcd::skip_under_wine as skip;
use fleet_tests::etcd::{Etcd, EtcdTls};
use lockcore::cluster::{ClusterClaim, ClusterError, ClusterLock, EtcdClient, Fence};
use lockcore::config::{ClusterConfig, ClusterTls, Fleet};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

/// A certificate authority: its certificate (PEM) and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A certificate `ca` signed, and its key (both PEM).
fn leaf(
    ca: &Ca,
    name: &str,
    sans: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = usages.to_vec();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The PEM files of one test, in a folder of its own: `ca.pem`, `server.pem`,
/// `server-key.pem`, `client.pem`, `client-key.pem`, and `other-ca.pem` (a CA that
/// signed nothing here).
struct Pki {
    dir: tempfile::TempDir,
    etcd: EtcdTls,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca = new_ca("fleet test CA");
        // etcd 3.4's JSON gateway dials its own gRPC port with the server certificate,
        // so the certificate serves as a client one too.
        let (server, server_key) = leaf(
            &ca,
            "etcd",
            &["127.0.0.1"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client, client_key) = leaf(&ca, "desk", &[], &[ExtendedKeyUsagePurpose::ClientAuth]);
        write("other-ca.pem", &new_ca("another CA").pem);
        let etcd = EtcdTls {
            ca_file: write("ca.pem", &ca.pem),
            cert_file: write("server.pem", &server),
            key_file: write("server-key.pem", &server_key),
            client_cert_file: write("client.pem", &client),
            client_key_file: write("client-key.pem", &client_key),
        };
        Pki { dir, etcd }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A `[cluster]` for `endpoint` with `tls`, TTL `ttl_secs`.
    fn cluster(&self, endpoint: &str, tls: ClusterTls, ttl_secs: u64) -> ClusterConfig {
        ClusterConfig {
            endpoints: vec![endpoint.to_string()],
            lease_ttl: Duration::from_secs(ttl_secs),
            host: "A".to_string(),
            desk: "desk".to_string(),
            auth: None,
            tls: Some(tls),
            line: 0,
        }
    }
}

fn record(pid: u32) -> serde_json::Value {
    json!({ "lock_name": "BRAIN_ATLAS", "pid": pid })
}

/// The `[cluster]` of a fleet.toml in `dir` whose TLS files are named relative to it.
fn load_cluster(dir: &Path, endpoint: &str, ttl_secs: u64) -> ClusterConfig {
    let path = dir.join("fleet.toml");
    std::fs::write(
        &path,
        format!(
            "[[account]]\nname = \"ATLAS\"\nbrain = [\"b.py\"]\nwatchdog = [\"w.py\"]\n\n\
             [cluster]\nendpoints = [\"{endpoint}\"]\nlease_ttl_secs = {ttl_secs}\nhost = \"A\"\n\
             ca_file = \"ca.pem\"\ncert_file = \"client.pem\"\nkey_file = \"client-key.pem\"\n"
        ),
    )
    .unwrap();
    Fleet::load(&path).unwrap().cluster.unwrap()
}

#[test]
fn a_lock_is_taken_and_kept_over_tls_past_its_ttl() {
    if skip("a_lock_is_taken_and_kept_over_tls_past_its_ttl") {
        return;
    }
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki.etcd);
    assert!(
        etcd.endpoint.starts_with("https://127.0.0.1:"),
        "{}",
        etcd.endpoint
    );
    let ttl = 3;
    let cluster = load_cluster(pki.dir.path(), &etcd.endpoint, ttl);
    let client = Arc::new(EtcdClient::from_config(&cluster));
    let lock = match ClusterLock::acquire(client, &cluster, "BRAIN_ATLAS", &record(7)).unwrap() {
        ClusterClaim::Held(lock) => lock,
        other => panic!("expected the key, got {other:?}"),
    };
    // Past the TTL the key is only still there because renewals over TLS went through.
    let until = Instant::now() + Duration::from_secs(ttl) + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(lock.fence(), Fence::Keep, "etcd's log:\n{}", etcd.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let kv = etcd
        .client()
        .get("/desk/locks/BRAIN_ATLAS")
        .unwrap()
        .unwrap();
    assert_eq!(kv.lease, lock.lease());
    let value: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(value["host"], "A");
    assert_eq!(value["pid"], 7);
    lock.release().unwrap();
    assert_eq!(etcd.client().get("/desk/locks/BRAIN_ATLAS").unwrap(), None);
}

/// The request fails at once (well within the request timeout plus a margin) with an
/// error that names the endpoint; returns its text.
fn refused(cluster: &ClusterConfig) -> String {
    let started = Instant::now();
    let client = Arc::new(EtcdClient::from_config(cluster));
    let error = match ClusterLock::acquire(client, cluster, "BRAIN_ATLAS", &record(1)) {
        Err(error) => error,
        Ok(claim) => panic!("expected a refusal, got {claim:?}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, ClusterError::Unreachable { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains(&cluster.endpoints[0]), "{text}");
    text
}

#[test]
fn a_client_without_a_certificate_is_refused_naming_the_endpoint() {
    if skip("a_client_without_a_certificate_is_refused_naming_the_endpoint") {
        return;
    }
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki.etcd);
    let tls = ClusterTls::from_files(&pki.etcd.ca_file, None).unwrap();
    let text = refused(&pki.cluster(&etcd.endpoint, tls, 3));
    // TLS 1.3 ends the handshake before etcd checks the (missing) certificate: etcd
    // then closes the connection, and the client sees either its alert or, mostly,
    // the closed socket under the request it is writing; either way the error says
    // what to set.
    assert!(text.contains("certificate"), "{text}");
    assert!(
        text.contains("cert_file and key_file") || text.contains("certificate required"),
        "{text}"
    );
    // Nothing was written by the refused client.
    assert_eq!(etcd.client().get("/desk/locks/BRAIN_ATLAS").unwrap(), None);
}

#[test]
fn a_client_that_trusts_another_ca_is_refused_naming_the_endpoint() {
    if skip("a_client_that_trusts_another_ca_is_refused_naming_the_endpoint") {
        return;
    }
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki.etcd);
    let tls = ClusterTls::from_files(
        &pki.path("other-ca.pem"),
        Some((&pki.etcd.client_cert_file, &pki.etcd.client_key_file)),
    )
    .unwrap();
    let text = refused(&pki.cluster(&etcd.endpoint, tls, 3));
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert_eq!(etcd.client().get("/desk/locks/BRAIN_ATLAS").unwrap(), None);
}

#[test]
fn a_plain_http_client_gets_nothing_from_a_tls_etcd() {
    if skip("a_plain_http_client_gets_nothing_from_a_tls_etcd") {
        return;
    }
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki.etcd);
    let http = etcd.endpoint.replacen("https://", "http://", 1);
    let client = EtcdClient::new(vec![http.clone()], None, Duration::from_secs(2));
    let started = Instant::now();
    let error = client.get("/desk/locks/BRAIN_ATLAS").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(error.to_string().contains(&http), "{error}");
}
