//! Locks shared between machines: a small synchronous etcd v3 client and the cluster
//! lock built on it (`[cluster]` in fleet.toml; without that table nothing here runs
//! and no connection is made).
//!
//! A cluster lock is the etcd key `/<desk>/locks/<NAME>`, created in one transaction
//! only if absent (`create_revision == 0`) and attached to a lease. Its value is the
//! lock record as JSON with the holder's `host` added. A keeper thread renews the lease
//! every TTL/3; the holder asks [`ClusterLock::fence`] what its child may still do, and
//! stops it before the lease can end (self-fencing): ask at TTL/2 without a renewal,
//! force at TTL minus a safety margin of TTL/4. Every duration is measured from the
//! moment the last successful renewal was *sent*, on this machine's monotonic clock:
//! etcd restarts the TTL when it receives the renewal, which is later, so the holder's
//! view of the end is never later than etcd's (no wall clocks are compared).
//! Release deletes the key only if it is still the one this holder created (same
//! create revision), then revokes the lease.
//!
//! Why the JSON gateway over `ureq` rather than the gRPC API (`etcd-client`, tonic):
//! the tools are small synchronous, thread-based programs; tonic brings an async
//! runtime, `protoc` at build time and a large dependency tree into every binary and
//! the Windows cross-build. etcd serves the same v3 API as JSON on its client port
//! (`POST /v3/kv/txn`, ...; keys and values base64, 64-bit numbers as strings), and
//! `ureq` (default features off but `rustls`, with ring) is a well-kept blocking HTTP
//! client. With `https://` endpoints etcd's certificate must chain to the config's
//! `ca_file` (never the public roots), and a client certificate is shown if configured.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{ClusterConfig, ClusterTls};
use crate::process::ProcessIdentity;
use crate::record::LockRecord;
use crate::stop::StopRequest;

/// An etcd request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No endpoint answered (refused, timed out, closed).
    #[error("cannot reach etcd at {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// etcd answered with an error (`{"error": ..., "code": ...}`).
    #[error("etcd at {endpoint} refused {what}: {message} (code {code})")]
    Refused {
        endpoint: String,
        what: &'static str,
        message: String,
        code: i64,
    },
    /// etcd answered something this client cannot read.
    #[error("etcd at {endpoint} answered {what} with something unexpected: {detail}")]
    Malformed {
        endpoint: String,
        what: &'static str,
        detail: String,
    },
}

/// A lease's id, as etcd numbers it.
pub type LeaseId = i64;

/// One key as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// 0: attached to no lease.
    pub lease: LeaseId,
}

/// What a create-if-absent transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The key is ours, created at this revision.
    Created { revision: i64 },
    /// Someone else's key was there.
    Exists(KeyValue),
    /// The key was free, but the blocking key (a stop request) exists.
    Blocked(KeyValue),
}

/// A synchronous etcd v3 client over the JSON gateway.
#[derive(Debug)]
pub struct EtcdClient {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// The endpoint that answered last: tried first next time.
    current: AtomicUsize,
    auth: Option<(String, String)>,
    token: Mutex<Option<String>>,
    timeout: Duration,
}

impl EtcdClient {
    /// A client for `endpoints` (`http://HOST:PORT`). `timeout` bounds each request,
    /// connection included; nothing is sent until the first call.
    pub fn new(
        endpoints: Vec<String>,
        auth: Option<(String, String)>,
        timeout: Duration,
    ) -> EtcdClient {
        EtcdClient::with_tls(endpoints, auth, timeout, None)
    }

    /// As [`EtcdClient::new`], and over TLS with `tls` (for `https://` endpoints).
    pub fn with_tls(
        endpoints: Vec<String>,
        auth: Option<(String, String)>,
        timeout: Duration,
        tls: Option<&ClusterTls>,
    ) -> EtcdClient {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout));
        if let Some(tls) = tls {
            config = config.tls_config(tls_config(tls));
        }
        let agent = config.build().new_agent();
        EtcdClient {
            endpoints,
            agent,
            current: AtomicUsize::new(0),
            auth,
            token: Mutex::new(None),
            timeout,
        }
    }

    /// The client a `[cluster]` table describes; requests time out after a third of
    /// the lease (a renewal that takes longer is as good as lost).
    pub fn from_config(cluster: &ClusterConfig) -> EtcdClient {
        EtcdClient::with_tls(
            cluster.endpoints.clone(),
            cluster.auth.clone(),
            request_timeout(cluster.lease_ttl),
            cluster.tls.as_ref(),
        )
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1).
    pub fn grant(&self, ttl: Duration) -> Result<LeaseId, ClusterError> {
        let secs = ttl.as_secs().max(1);
        let (endpoint, answer) = self.call(
            "/v3/lease/grant",
            &json!({ "TTL": secs }),
            "a lease grant",
            self.timeout,
        )?;
        let id = int(&answer, "ID");
        if id == 0 {
            return Err(malformed(&endpoint, "a lease grant", &answer));
        }
        Ok(id)
    }

    /// Renews a lease once. `Ok(None)`: etcd no longer knows it (expired or revoked).
    pub fn keep_alive(
        &self,
        lease: LeaseId,
        timeout: Duration,
    ) -> Result<Option<Duration>, ClusterError> {
        let (_, answer) = self.call(
            "/v3/lease/keepalive",
            &json!({ "ID": lease.to_string() }),
            "a lease renewal",
            timeout,
        )?;
        // The gateway streams: each answer is wrapped in `result`.
        let result = answer.get("result").unwrap_or(&answer);
        let ttl = int(result, "TTL");
        Ok((ttl > 0).then(|| Duration::from_secs(ttl.unsigned_abs())))
    }

    /// Revokes a lease: every key attached to it is deleted.
    pub fn revoke(&self, lease: LeaseId) -> Result<(), ClusterError> {
        match self.call(
            "/v3/lease/revoke",
            &json!({ "ID": lease.to_string() }),
            "a lease revoke",
            self.timeout,
        ) {
            Ok(_) => Ok(()),
            // Already gone: what revoking wanted.
            Err(ClusterError::Refused { message, .. }) if message.contains("lease not found") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Creates `key` with `value` attached to `lease`, in one transaction, only if the
    /// key does not exist and neither does `blocker` (a stop request for it); otherwise
    /// returns the key that is there, or the blocker.
    pub fn create_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: LeaseId,
        blocker: &str,
    ) -> Result<Created, ClusterError> {
        let key64 = BASE64.encode(key);
        let blocker64 = BASE64.encode(blocker);
        let body = json!({
            "compare": [
                { "key": key64, "target": "CREATE", "result": "EQUAL", "create_revision": "0" },
                { "key": blocker64, "target": "CREATE", "result": "EQUAL", "create_revision": "0" },
            ],
            "success": [{ "request_put": { "key": key64, "value": BASE64.encode(value), "lease": lease.to_string() } }],
            "failure": [{ "request_range": { "key": key64 } }, { "request_range": { "key": blocker64 } }],
        });
        let (endpoint, answer) =
            self.call("/v3/kv/txn", &body, "a lock transaction", self.timeout)?;
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            let revision = answer.get("header").map_or(0, |h| int(h, "revision"));
            if revision == 0 {
                return Err(malformed(&endpoint, "a lock transaction", &answer));
            }
            return Ok(Created::Created { revision });
        }
        let range = |index: usize| {
            answer
                .get("responses")
                .and_then(|r| r.get(index))
                .and_then(|r| r.get("response_range"))
                .map(|r| kvs(&endpoint, r))
                .transpose()
                .map(|kvs| kvs.and_then(|mut kvs| kvs.pop()))
        };
        match (range(0)?, range(1)?) {
            (Some(kv), _) => Ok(Created::Exists(kv)),
            (None, Some(stop)) => Ok(Created::Blocked(stop)),
            // Deleted between the compare and the range: cannot happen in one
            // transaction, so the answer is not what it seems.
            (None, None) => Err(malformed(&endpoint, "a lock transaction", &answer)),
        }
    }

    /// The key, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, ClusterError> {
        self.get_at(key).map(|(kv, _)| kv)
    }

    /// Every key that starts with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, ClusterError> {
        self.list_at(prefix).map(|(kvs, _)| kvs)
    }

    /// Every key that starts with `prefix`, and the store's revision when they were read.
    pub fn list_at(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), ClusterError> {
        let (endpoint, answer) = self.call(
            "/v3/kv/range",
            &json!({ "key": BASE64.encode(prefix), "range_end": BASE64.encode(prefix_end(prefix.as_bytes())) }),
            "a read",
            self.timeout,
        )?;
        let revision = answer.get("header").map_or(0, |h| int(h, "revision"));
        Ok((kvs(&endpoint, &answer)?, revision))
    }

    /// Writes `key` attached to `lease` (it goes when the lease ends).
    pub fn put(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<(), ClusterError> {
        self.call(
            "/v3/kv/put",
            &json!({ "key": BASE64.encode(key), "value": BASE64.encode(value), "lease": lease.to_string() }),
            "a write",
            self.timeout,
        )
        .map(|_| ())
    }

    /// Deletes `key` only if it is still the one created at `revision`: never a key
    /// another holder created since. Returns whether it was deleted.
    pub fn delete_if_created_at(&self, key: &str, revision: i64) -> Result<bool, ClusterError> {
        let key64 = BASE64.encode(key);
        let body = json!({
            "compare": [{ "key": key64, "target": "CREATE", "result": "EQUAL", "create_revision": revision.to_string() }],
            "success": [{ "request_delete_range": { "key": key64 } }],
        });
        let (_, answer) = self.call("/v3/kv/txn", &body, "a release", self.timeout)?;
        Ok(answer.get("succeeded").and_then(Value::as_bool) == Some(true))
    }

    /// The key, if it exists, and the store's revision when it was read: a watch from
    /// the next revision misses no change made after this read.
    pub fn get_at(&self, key: &str) -> Result<(Option<KeyValue>, i64), ClusterError> {
        let (endpoint, answer) = self.call(
            "/v3/kv/range",
            &json!({ "key": BASE64.encode(key) }),
            "a read",
            self.timeout,
        )?;
        let revision = answer.get("header").map_or(0, |h| int(h, "revision"));
        Ok((kvs(&endpoint, &answer)?.pop(), revision))
    }

    /// Replaces the value of `key`, still attached to `lease`, only if it is still the
    /// key created at `revision`. Returns whether it was.
    pub fn update_if_created_at(
        &self,
        key: &str,
        revision: i64,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<bool, ClusterError> {
        let key64 = BASE64.encode(key);
        let body = json!({
            "compare": [{ "key": key64, "target": "CREATE", "result": "EQUAL", "create_revision": revision.to_string() }],
            "success": [{ "request_put": { "key": key64, "value": BASE64.encode(value), "lease": lease.to_string() } }],
        });
        let (_, answer) = self.call("/v3/kv/txn", &body, "an update", self.timeout)?;
        Ok(answer.get("succeeded").and_then(Value::as_bool) == Some(true))
    }

    /// The time a lease has left, as the etcd leader counts it; `None` once it is gone.
    pub fn time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, ClusterError> {
        let (_, answer) = self.call(
            "/v3/lease/timetolive",
            &json!({ "ID": lease.to_string() }),
            "a lease query",
            self.timeout,
        )?;
        let ttl = int(&answer, "TTL");
        Ok((ttl >= 0 && answer.get("TTL").is_some())
            .then(|| Duration::from_secs(ttl.unsigned_abs())))
    }

    /// Waits up to `timeout` for a change of `key` at or after `from_revision` (a
    /// watch: etcd pushes the change, nothing is polled). `Ok(true)`: it changed, or
    /// etcd ended the watch (compaction): read it again. `Ok(false)`: no change yet.
    pub fn wait_for_change(
        &self,
        key: &str,
        from_revision: i64,
        timeout: Duration,
    ) -> Result<bool, ClusterError> {
        self.watch(key, None, from_revision, timeout)
    }

    /// [`EtcdClient::wait_for_change`] for every key that starts with `prefix`.
    pub fn wait_for_change_under(
        &self,
        prefix: &str,
        from_revision: i64,
        timeout: Duration,
    ) -> Result<bool, ClusterError> {
        let end = prefix_end(prefix.as_bytes());
        self.watch(prefix, Some(&end), from_revision, timeout)
    }

    fn watch(
        &self,
        key: &str,
        range_end: Option<&[u8]>,
        from_revision: i64,
        timeout: Duration,
    ) -> Result<bool, ClusterError> {
        let endpoint = self.endpoints
            [self.current.load(Ordering::Relaxed) % self.endpoints.len().max(1)]
        .clone();
        let what = "a watch";
        let token = match &self.auth {
            Some(_) => Some(
                self.token(&endpoint, self.timeout)
                    .map_err(|a| a.into_error(&endpoint))?,
            ),
            None => None,
        };
        let request = self.request(&endpoint, "/v3/watch", timeout, token.as_deref());
        let mut create = json!({
            "key": BASE64.encode(key),
            "start_revision": from_revision.to_string(),
        });
        if let Some(end) = range_end {
            create["range_end"] = Value::String(BASE64.encode(end));
        }
        let body = json!({ "create_request": create });
        let unreachable = |reason: String| ClusterError::Unreachable {
            endpoints: endpoint.clone(),
            reason: explain_transport(&endpoint, reason),
        };
        let mut response = request
            .send(body.to_string())
            .map_err(|e| unreachable(e.to_string()))?;
        // The gateway streams one JSON object per line: first `created`, then events.
        let reader = std::io::BufReader::new(response.body_mut().as_reader());
        let mut created = false;
        for line in std::io::BufRead::lines(reader) {
            let line = match line {
                Ok(line) => line,
                // The watch outlived `timeout` with no change: the expected end.
                Err(_) if created => return Ok(false),
                Err(e) => return Err(unreachable(e.to_string())),
            };
            if line.trim().is_empty() {
                continue;
            }
            let answer: Value =
                serde_json::from_str(line.trim()).map_err(|e| ClusterError::Malformed {
                    endpoint: endpoint.clone(),
                    what,
                    detail: format!(
                        "not JSON ({e}): {}",
                        line.chars().take(200).collect::<String>()
                    ),
                })?;
            if let Some(error) = refusal(&endpoint, what, &answer) {
                return Err(error);
            }
            let result = answer.get("result").unwrap_or(&answer);
            let events = result
                .get("events")
                .and_then(Value::as_array)
                .is_some_and(|e| !e.is_empty());
            if events || result.get("canceled").and_then(Value::as_bool) == Some(true) {
                return Ok(true);
            }
            created |= result.get("created").and_then(Value::as_bool) == Some(true);
        }
        // The stream ended without a change: etcd closed it; read the key again.
        Ok(true)
    }

    /// Deletes every key that starts with `prefix` (tests and tools clearing a desk).
    pub fn delete_prefix(&self, prefix: &str) -> Result<(), ClusterError> {
        self.call(
            "/v3/kv/deleterange",
            &json!({ "key": BASE64.encode(prefix), "range_end": BASE64.encode(prefix_end(prefix.as_bytes())) }),
            "a delete",
            self.timeout,
        )
        .map(|_| ())
    }

    /// One POST, trying each endpoint in turn from the last one that answered. Returns
    /// the endpoint that answered and its JSON.
    fn call(
        &self,
        path: &str,
        body: &Value,
        what: &'static str,
        timeout: Duration,
    ) -> Result<(String, Value), ClusterError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        for i in 0..self.endpoints.len() {
            let index = (first + i) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            match self.post(endpoint, path, body, what, timeout) {
                Ok(answer) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok((endpoint.clone(), answer));
                }
                Err(Attempt::Transport(reason)) => {
                    reasons.push(format!(
                        "{endpoint}: {}",
                        explain_transport(endpoint, reason)
                    ));
                }
                Err(Attempt::Answer(error)) => return Err(error),
            }
        }
        Err(ClusterError::Unreachable {
            endpoints: self.endpoints.join(", "),
            reason: if reasons.is_empty() {
                "no endpoints configured".to_string()
            } else {
                reasons.join("; ")
            },
        })
    }

    fn post(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        what: &'static str,
        timeout: Duration,
    ) -> Result<Value, Attempt> {
        let token = match &self.auth {
            Some(_) => Some(self.token(endpoint, timeout)?),
            None => None,
        };
        let answer = self.post_raw(endpoint, path, body, what, timeout, token.as_deref())?;
        if let Some(error) = refusal(endpoint, what, &answer) {
            // An expired token: authenticate again, once.
            if token.is_some()
                && let ClusterError::Refused { message, .. } = &error
                && message.contains("token")
            {
                *lock(&self.token) = None;
                let token = self.token(endpoint, timeout)?;
                let answer = self.post_raw(endpoint, path, body, what, timeout, Some(&token))?;
                return match refusal(endpoint, what, &answer) {
                    Some(error) => Err(Attempt::Answer(error)),
                    None => Ok(answer),
                };
            }
            return Err(Attempt::Answer(error));
        }
        Ok(answer)
    }

    fn token(&self, endpoint: &str, timeout: Duration) -> Result<String, Attempt> {
        if let Some(token) = lock(&self.token).clone() {
            return Ok(token);
        }
        let Some((user, password)) = &self.auth else {
            return Ok(String::new());
        };
        let what = "authentication";
        let answer = self.post_raw(
            endpoint,
            "/v3/auth/authenticate",
            &json!({ "name": user, "password": password }),
            what,
            timeout,
            None,
        )?;
        if let Some(error) = refusal(endpoint, what, &answer) {
            return Err(Attempt::Answer(error));
        }
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| Attempt::Answer(malformed(endpoint, what, &answer)))?
            .to_string();
        *lock(&self.token) = Some(token.clone());
        Ok(token)
    }

    /// A JSON POST to `endpoint` + `path`, ended after `timeout`, with the token.
    fn request(
        &self,
        endpoint: &str,
        path: &str,
        timeout: Duration,
        token: Option<&str>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let request = self
            .agent
            .post(format!("{endpoint}{path}"))
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("content-type", "application/json");
        match token {
            Some(token) => request.header("authorization", token),
            None => request,
        }
    }

    fn post_raw(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        what: &'static str,
        timeout: Duration,
        token: Option<&str>,
    ) -> Result<Value, Attempt> {
        let mut response = self
            .request(endpoint, path, timeout, token)
            .send(body.to_string())
            .map_err(|e| Attempt::Transport(from_outside(&e.to_string(), 300)))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Attempt::Transport(from_outside(&e.to_string(), 300)))?;
        serde_json::from_str::<Value>(text.trim()).map_err(|e| {
            Attempt::Answer(ClusterError::Malformed {
                endpoint: endpoint.to_string(),
                what,
                detail: format!(
                    "HTTP {status}, not JSON ({e}): {}",
                    from_outside(&text, 200)
                ),
            })
        })
    }
}

/// The TLS settings of a `[cluster]`'s client: the config's CA as the only roots (etcd
/// runs on a private CA; a public one must not vouch for it), the client certificate
/// if any. The PEM files were parsed when the config loaded.
fn tls_config(tls: &ClusterTls) -> ureq::tls::TlsConfig {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let roots: Vec<Certificate<'static>> = tls
        .ca_certs
        .iter()
        .map(|der| Certificate::from_der(der).to_owned())
        .collect();
    TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(&roots))
        .client_cert(tls.client.as_ref().map(|client| client.cert.clone()))
        .build()
}

/// A transport error in words a user can act on. Under TLS 1.3 etcd checks a client
/// certificate only after the handshake and closes the connection, so a missing one
/// shows as a broken pipe, a reset, or an alert (`CertificateRequired`, or
/// `BadCertificate` from etcd's Go TLS), depending on timing.
fn explain_transport(endpoint: &str, reason: String) -> String {
    let cut_off = [
        "Broken pipe",
        "reset",
        "certificate required",
        "CertificateRequired",
        "BadCertificate",
    ];
    if endpoint.starts_with("https://") && cut_off.iter().any(|c| reason.contains(c)) {
        format!(
            "{reason} (etcd closed the TLS connection: if it requires client certificates \
             (--client-cert-auth), set cert_file and key_file in [cluster])"
        )
    } else {
        reason
    }
}

/// Why one endpoint did not give an answer.
enum Attempt {
    /// Try the next endpoint.
    Transport(String),
    /// An answer: another endpoint would say the same.
    Answer(ClusterError),
}

impl Attempt {
    fn into_error(self, endpoint: &str) -> ClusterError {
        match self {
            Attempt::Transport(reason) => ClusterError::Unreachable {
                endpoints: endpoint.to_string(),
                reason,
            },
            Attempt::Answer(error) => error,
        }
    }
}

/// Requests time out after a sixth of the lease (at least 200 ms): two tries fit
/// between renewals, and a renewal that hangs is reported long before TTL/2.
pub fn request_timeout(ttl: Duration) -> Duration {
    (ttl / 6).max(Duration::from_millis(200))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A 64-bit number from the gateway's JSON: a string, or a number; absent means 0.
fn int(value: &Value, key: &str) -> i64 {
    match value.get(key) {
        Some(Value::String(text)) => text.parse().unwrap_or(0),
        Some(Value::Number(number)) => number.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn malformed(endpoint: &str, what: &'static str, answer: &Value) -> ClusterError {
    ClusterError::Malformed {
        endpoint: endpoint.to_string(),
        what,
        detail: answer.to_string().chars().take(300).collect(),
    }
}

/// The error etcd put in an answer (`{"error": ...}`, or a stream's `{"error": {...}}`).
fn refusal(endpoint: &str, what: &'static str, answer: &Value) -> Option<ClusterError> {
    let error = answer.get("error")?;
    let (message, code) = match error {
        Value::Object(_) => (
            error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            int(error, "code"),
        ),
        other => (
            answer
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| other.to_string(), str::to_string),
            int(answer, "code"),
        ),
    };
    Some(ClusterError::Refused {
        endpoint: endpoint.to_string(),
        what,
        message: from_outside(&message, 300),
        code,
    })
}

/// Text an endpoint sent, fit for a terminal and a log line: whoever answers on the
/// endpoint's port wrote it, so control characters (a terminal escape) become `?` and
/// it is cut at `max` characters (an error message may be megabytes long).
pub(crate) fn from_outside(text: &str, max: usize) -> String {
    let mut kept: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        kept.push_str("...");
    }
    kept
}

/// The keys of a range answer.
fn kvs(endpoint: &str, answer: &Value) -> Result<Vec<KeyValue>, ClusterError> {
    let Some(list) = answer.get("kvs").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    let decode = |kv: &Value, field: &str| -> Result<Vec<u8>, ClusterError> {
        let text = kv.get(field).and_then(Value::as_str).unwrap_or_default();
        BASE64.decode(text).map_err(|e| ClusterError::Malformed {
            endpoint: endpoint.to_string(),
            what: "a read",
            detail: format!("{field} is not base64: {e}"),
        })
    };
    list.iter()
        .map(|kv| {
            Ok(KeyValue {
                key: String::from_utf8_lossy(&decode(kv, "key")?).into_owned(),
                value: decode(kv, "value")?,
                create_revision: int(kv, "create_revision"),
                mod_revision: int(kv, "mod_revision"),
                lease: int(kv, "lease"),
            })
        })
        .collect()
}

/// The end of etcd's range for a prefix: the prefix with its last byte below 0xff
/// incremented (`\0` alone means "to the end of the key space").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Which of a desk's holders is fencing: brains stop first, so that even while a host
/// fences no brain trades without its watchdog (DESIGN.md rule 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceStage {
    /// A brain: asked to stop at TTL/2 without a renewal, forced at 5/8 of the TTL.
    Brain,
    /// A watchdog or a global: asked at TTL/2 once no brain that needs it runs, at 11/16
    /// at the latest; forced at TTL minus the safety margin (3/4 of the TTL).
    Guard { brains_down: bool },
}

/// What the holder of a cluster lock must do with its child now (self-fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The lease was renewed recently: run.
    Keep,
    /// No renewal for TTL/2: ask the child to stop.
    AskStop,
    /// TTL minus the safety margin has passed without a renewal, or etcd says the
    /// lease is gone: force the child now.
    Force,
}

/// The keeper's view of a lease, for the holder and its log.
#[derive(Debug, Clone)]
pub struct LeaseStatus {
    /// When the last successful renewal (or the grant) was sent.
    pub renewed_at: Instant,
    /// Since when renewals fail (wall clock, for the log), if they do.
    pub failing_since: Option<SystemTime>,
    pub last_error: Option<String>,
    /// etcd said the lease no longer exists: it will never be renewed again.
    pub gone: bool,
}

/// The lease's health as another thread sees it: [`FenceWatch::fence`] says what the
/// child may still do, [`FenceWatch::reason`] why, for the log.
#[derive(Debug, Clone)]
pub struct FenceWatch {
    key: String,
    ttl: Duration,
    status: Arc<Mutex<LeaseStatus>>,
}

impl FenceWatch {
    /// What a holder in `stage` must do now.
    pub fn fence(&self, stage: FenceStage) -> Fence {
        fence(&lock(&self.status), self.ttl, stage)
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Time left before the lease can end, as this holder counts it (zero once gone).
    pub fn ttl_left(&self) -> Duration {
        let status = lock(&self.status);
        if status.gone {
            return Duration::ZERO;
        }
        self.ttl.saturating_sub(status.renewed_at.elapsed())
    }

    /// Since when renewals fail and why.
    pub fn reason(&self) -> String {
        let status = lock(&self.status).clone();
        if status.gone {
            return format!(
                "etcd says the lease of {} is gone (expired or revoked): another host may \
                 hold it now",
                self.key
            );
        }
        let since = status
            .failing_since
            .map(|t| {
                let at = chrono::DateTime::<chrono::Local>::from(t).format("%H:%M:%S%.3f");
                format!(" since {at}")
            })
            .unwrap_or_default();
        format!(
            "cannot renew the lease of {}{since} ({:.1} s since the last renewal, the lease \
             lasts {} s): {}",
            self.key,
            status.renewed_at.elapsed().as_secs_f64(),
            self.ttl.as_secs(),
            status
                .last_error
                .as_deref()
                .unwrap_or("the renewal sent has not been answered"),
        )
    }
}

/// A held cluster lock: the key, its lease and the thread that keeps the lease alive.
/// Dropping it releases the key (best effort); [`ClusterLock::release`] reports errors.
#[derive(Debug)]
pub struct ClusterLock {
    client: Arc<EtcdClient>,
    key: String,
    lease: LeaseId,
    revision: i64,
    ttl: Duration,
    status: Arc<Mutex<LeaseStatus>>,
    stop_keeper: Option<mpsc::Sender<()>>,
    keeper: Option<JoinHandle<()>>,
}

/// Who holds a cluster key, as its value says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHolder {
    /// The holder's host, if the value names one.
    pub host: Option<String>,
    /// The value as stored (the lock record with `host`), lossily as text.
    pub value: String,
    pub lease: LeaseId,
    pub create_revision: i64,
}

impl ClusterHolder {
    pub fn from_kv(kv: &KeyValue) -> ClusterHolder {
        let value = String::from_utf8_lossy(&kv.value).into_owned();
        let host = serde_json::from_str::<Value>(&value)
            .ok()
            .and_then(|v| v.get("host").and_then(Value::as_str).map(str::to_string));
        ClusterHolder {
            host,
            value,
            lease: kv.lease,
            create_revision: kv.create_revision,
        }
    }
}

/// One lock key as the cluster holds it now: who holds it, for how much longer.
#[derive(Debug, Clone)]
pub struct ClusterEntry {
    /// The lock name (the key without its prefix).
    pub name: String,
    pub holder: ClusterHolder,
    /// The lock record in the value, if it reads as one: its `pid`/`pid_start` name the
    /// holder's child once it runs.
    pub record: Option<LockRecord>,
    /// What the lease has left, as etcd's leader counts it (`None`: it just ended).
    pub ttl_left: Option<Duration>,
}

impl ClusterEntry {
    /// The child the holder runs, when the record names one (not the holder itself).
    pub fn child(&self) -> Option<ProcessIdentity> {
        let record = self.record.as_ref()?;
        if record.holder_pid == Some(record.pid) {
            return None;
        }
        Some(ProcessIdentity {
            pid: record.pid,
            start_time: record.pid_start?,
        })
    }
}

/// Every lock key of the desk, with its lease's time left: what check-procs shows and
/// what keeps the tools from taking another host's child for an unlocked copy.
pub fn read_entries(
    client: &EtcdClient,
    cluster: &ClusterConfig,
) -> Result<Vec<ClusterEntry>, ClusterError> {
    let prefix = cluster.lock_key("");
    client
        .list(&prefix)?
        .iter()
        .map(|kv| {
            let holder = ClusterHolder::from_kv(kv);
            let ttl_left = match kv.lease {
                0 => None,
                lease => client.time_to_live(lease)?,
            };
            Ok(ClusterEntry {
                name: kv.key.strip_prefix(&prefix).unwrap_or(&kv.key).to_string(),
                record: serde_json::from_str(&holder.value).ok(),
                holder,
                ttl_left,
            })
        })
        .collect()
}

/// Watches `key` on a thread of its own until it is free (absent), then calls
/// `on_free` once. A standby's wait: etcd pushes the deletion (a watch), and every
/// `window` the key is read again, so a lost watch costs at most that long. Errors
/// are retried; `keep_waiting` returning false ends the wait without a call.
pub fn spawn_free_watch(
    client: Arc<EtcdClient>,
    key: String,
    window: Duration,
    keep_waiting: impl Fn() -> bool + Send + 'static,
    on_free: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let retry = (window / 8).max(Duration::from_millis(100));
    std::thread::Builder::new()
        .name(format!("standby {key}"))
        .spawn(move || {
            while keep_waiting() {
                match client.get_at(&key) {
                    Ok((None, _)) => return on_free(),
                    Ok((Some(_), revision)) => {
                        if client.wait_for_change(&key, revision + 1, window).is_err() {
                            std::thread::sleep(retry);
                        }
                    }
                    Err(_) => std::thread::sleep(retry),
                }
            }
        })
}

/// The answer to a cluster lock attempt.
#[derive(Debug)]
pub enum ClusterClaim {
    Held(ClusterLock),
    /// Another holder has the key.
    HeldElsewhere(ClusterHolder),
    /// The key is free, but someone asked, through etcd, for the component to stop: a
    /// standby must not take over what the desk's owner is stopping.
    StopRequested(StopRequest),
}

/// A stop request as its key holds it: the fields of a `<NAME>.stop` file. A value
/// that does not read as one still means "stop", with the component's own timeout.
fn stop_request_of(name: &str, kv: &KeyValue) -> StopRequest {
    match serde_json::from_slice::<StopRequest>(&kv.value) {
        Ok(mut request) => {
            request.name = name.to_string();
            request
        }
        Err(e) => StopRequest {
            name: name.to_string(),
            deadline: None,
            requested_by: None,
            requested_on: None,
            unreadable: Some(format!(
                "the stop request key {} does not read ({e})",
                kv.key
            )),
        },
    }
}

/// Asks the holder of `name`, on whatever host, to stop it: the key
/// `/<desk>/stop/<NAME>` holds the request (the fields of a `<NAME>.stop` file, with
/// this host), under a lease that outlives the request's deadline by a TTL, so that a
/// requester that dies leaves nothing behind for long. While it exists no host takes
/// the component's key.
pub fn place_stop_request(
    client: &EtcdClient,
    cluster: &ClusterConfig,
    request: &StopRequest,
) -> Result<(), ClusterError> {
    let mut request = request.clone();
    request.requested_on = Some(cluster.host.clone());
    let lease = client.grant(request.time_left(Duration::ZERO) + cluster.lease_ttl)?;
    let value = serde_json::to_vec(&request).unwrap_or_default();
    client.put(&cluster.stop_key(&request.name), &value, lease)
}

/// Watches the desk's stop requests on a thread of its own and calls `on_request`
/// once for each new one (a holder turns it into its own `<NAME>.stop`). etcd pushes
/// each new key; every `window` they are read again, so a lost watch costs at most
/// that long. Ends when `keep_watching` says so.
pub fn spawn_stop_watch(
    client: Arc<EtcdClient>,
    cluster: &ClusterConfig,
    keep_watching: impl Fn() -> bool + Send + 'static,
    on_request: impl Fn(StopRequest) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let prefix = cluster.stop_key("");
    let window = cluster.lease_ttl;
    let retry = (window / 8).max(Duration::from_millis(100));
    std::thread::Builder::new()
        .name("cluster stop requests".into())
        .spawn(move || {
            let mut seen: Vec<(String, i64)> = Vec::new();
            while keep_watching() {
                match client.list_at(&prefix) {
                    Ok((kvs, revision)) => {
                        seen.retain(|s| {
                            kvs.iter()
                                .any(|kv| (&kv.key, kv.create_revision) == (&s.0, s.1))
                        });
                        for kv in kvs {
                            let id = (kv.key.clone(), kv.create_revision);
                            if seen.contains(&id) {
                                continue;
                            }
                            seen.push(id);
                            let name = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key);
                            on_request(stop_request_of(name, &kv));
                        }
                        if client
                            .wait_for_change_under(&prefix, revision + 1, window)
                            .is_err()
                        {
                            std::thread::sleep(retry);
                        }
                    }
                    Err(_) => std::thread::sleep(retry),
                }
            }
        })
}

/// The key's value: the lock record's JSON object with `host` added.
pub fn lock_value(record: &impl Serialize, host: &str) -> Vec<u8> {
    let mut value = serde_json::to_value(record).unwrap_or(Value::Null);
    match &mut value {
        Value::Object(map) => {
            map.insert("host".into(), Value::String(host.to_string()));
        }
        other => value = json!({ "host": host, "record": other.take() }),
    }
    value.to_string().into_bytes()
}

impl ClusterLock {
    /// Takes the key of `lock_name` under a new lease, if nobody holds it. On success
    /// a keeper thread renews the lease every TTL/3 until release.
    pub fn acquire(
        client: Arc<EtcdClient>,
        cluster: &ClusterConfig,
        lock_name: &str,
        record: &impl Serialize,
    ) -> Result<ClusterClaim, ClusterError> {
        let key = cluster.lock_key(lock_name);
        let ttl = cluster.lease_ttl;
        // The lease's clock starts no earlier than this, on etcd's side.
        let granted_at = Instant::now();
        let lease = client.grant(ttl)?;
        let created = client.create_if_absent(
            &key,
            &lock_value(record, &cluster.host),
            lease,
            &cluster.stop_key(lock_name),
        );
        let revision = match created {
            Ok(Created::Created { revision }) => revision,
            Ok(Created::Exists(kv)) => {
                // Ours is unused: revoke it rather than let it linger for a TTL.
                let _ = client.revoke(lease);
                return Ok(ClusterClaim::HeldElsewhere(ClusterHolder::from_kv(&kv)));
            }
            Ok(Created::Blocked(stop)) => {
                let _ = client.revoke(lease);
                return Ok(ClusterClaim::StopRequested(stop_request_of(
                    lock_name, &stop,
                )));
            }
            Err(e) => {
                let _ = client.revoke(lease);
                return Err(e);
            }
        };
        let status = Arc::new(Mutex::new(LeaseStatus {
            renewed_at: granted_at,
            failing_since: None,
            last_error: None,
            gone: false,
        }));
        let (stop_keeper, stopped) = mpsc::channel();
        let keeper = {
            let client = Arc::clone(&client);
            let status = Arc::clone(&status);
            std::thread::Builder::new()
                .name(format!("lease-keeper {lock_name}"))
                .spawn(move || keep_lease(&client, lease, ttl, &status, &stopped))
                .ok()
        };
        if keeper.is_none() {
            let _ = client.delete_if_created_at(&key, revision);
            let _ = client.revoke(lease);
            return Err(ClusterError::Unreachable {
                endpoints: String::new(),
                reason: "cannot start the thread that renews the lease".into(),
            });
        }
        Ok(ClusterClaim::Held(ClusterLock {
            client,
            key,
            lease,
            revision,
            ttl,
            status,
            stop_keeper: Some(stop_keeper),
            keeper,
        }))
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The safety margin before the lease's end: TTL/4. A holder frozen longer than
    /// this (a suspended VM) may outlive its lease: the documented limit.
    pub fn safety_margin(&self) -> Duration {
        self.ttl / 4
    }

    pub fn status(&self) -> LeaseStatus {
        lock(&self.status).clone()
    }

    /// What the holder of anything but a brain must do with its child now.
    pub fn fence(&self) -> Fence {
        self.watch().fence(FenceStage::Guard { brains_down: true })
    }

    /// Why the holder fences, for its log.
    pub fn fence_reason(&self) -> String {
        self.watch().reason()
    }

    /// A handle on the lease's health for another thread (the one that fences the
    /// child while the holder's thread waits for it).
    pub fn watch(&self) -> FenceWatch {
        FenceWatch {
            key: self.key.clone(),
            ttl: self.ttl,
            status: Arc::clone(&self.status),
        }
    }

    /// Writes a new value (the record naming the child just started) if the key is
    /// still ours. `Ok(false)`: it is not (the lease ended): the holder must fence.
    pub fn update_record(&self, record: &impl Serialize, host: &str) -> Result<bool, ClusterError> {
        self.client.update_if_created_at(
            &self.key,
            self.revision,
            &lock_value(record, host),
            self.lease,
        )
    }

    /// Stops renewing, deletes the key if it is still ours, revokes the lease.
    pub fn release(mut self) -> Result<(), ClusterError> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), ClusterError> {
        let Some(stop) = self.stop_keeper.take() else {
            return Ok(());
        };
        drop(stop);
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        let deleted = self.client.delete_if_created_at(&self.key, self.revision);
        let revoked = self.client.revoke(self.lease);
        deleted.and(revoked)
    }

    /// Stops renewing without releasing: the key stays until its lease expires. What a
    /// holder that dies without a word looks like to the cluster (tests).
    pub fn abandon(mut self) {
        self.stop_keeper.take();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        let _ = self.release_inner();
    }
}

fn fence(status: &LeaseStatus, ttl: Duration, stage: FenceStage) -> Fence {
    let quiet = status.renewed_at.elapsed();
    let (ask, force) = match stage {
        FenceStage::Brain => (ttl / 2, ttl * 5 / 8),
        FenceStage::Guard { brains_down: true } => (ttl / 2, ttl - ttl / 4),
        FenceStage::Guard { brains_down: false } => (ttl * 11 / 16, ttl - ttl / 4),
    };
    if status.gone || quiet >= force {
        Fence::Force
    } else if quiet >= ask {
        Fence::AskStop
    } else {
        Fence::Keep
    }
}

/// The keeper thread: renew every TTL/3, retry failures every TTL/12, stop when the
/// holder drops the sender, or when etcd says the lease is gone.
fn keep_lease(
    client: &EtcdClient,
    lease: LeaseId,
    ttl: Duration,
    status: &Mutex<LeaseStatus>,
    stopped: &mpsc::Receiver<()>,
) {
    let interval = ttl / 3;
    let retry = (ttl / 12).max(Duration::from_millis(50));
    let timeout = request_timeout(ttl);
    let mut next = Instant::now() + interval;
    loop {
        match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let sent = Instant::now();
        let outcome = client.keep_alive(lease, timeout);
        let mut status = lock(status);
        match outcome {
            Ok(Some(_)) => {
                status.renewed_at = sent;
                status.failing_since = None;
                status.last_error = None;
                next = sent + interval;
            }
            Ok(None) => {
                status.gone = true;
                status.failing_since.get_or_insert_with(SystemTime::now);
                status.last_error = Some("the lease no longer exists".into());
                return;
            }
            Err(e) => {
                status.failing_since.get_or_insert_with(SystemTime::now);
                status.last_error = Some(e.to_string());
                next = Instant::now() + retry;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_an_endpoint_loses_control_characters_and_is_cut() {
        assert_eq!(from_outside("\u{1b}[31mred\u{7}", 20), "?[31mred?");
        assert_eq!(from_outside(&"x".repeat(1000), 5), "xxxxx...");
        assert_eq!(from_outside("fine", 4), "fine");
    }

    #[test]
    fn a_closed_tls_connection_names_the_keys_to_set_whatever_its_symptom() {
        for symptom in [
            "io: Broken pipe (os error 32)",
            "io: Connection reset by peer (os error 104)",
            "io: received fatal alert: CertificateRequired",
            "io: received fatal alert: BadCertificate",
        ] {
            let said = explain_transport("https://10.0.0.5:2379", symptom.to_string());
            assert!(said.contains("set cert_file and key_file"), "{said}");
        }
        let plain = explain_transport("http://10.0.0.5:2379", "io: Broken pipe".into());
        assert_eq!(plain, "io: Broken pipe");
    }

    #[test]
    fn prefix_end_increments_the_last_byte_that_can_be() {
        assert_eq!(prefix_end(b"/desk/locks/"), b"/desk/locks0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn gateway_numbers_are_read_as_strings_or_numbers() {
        let v = json!({ "a": "42", "b": 7, "c": "x" });
        assert_eq!(int(&v, "a"), 42);
        assert_eq!(int(&v, "b"), 7);
        assert_eq!(int(&v, "c"), 0);
        assert_eq!(int(&v, "missing"), 0);
    }

    #[test]
    fn fencing_asks_at_half_the_ttl_and_forces_before_its_end() {
        let ttl = Duration::from_secs(8);
        let at = |ago: Duration, gone: bool| LeaseStatus {
            renewed_at: Instant::now() - ago,
            failing_since: None,
            last_error: None,
            gone,
        };
        let guard = FenceStage::Guard { brains_down: true };
        let waiting = FenceStage::Guard { brains_down: false };
        let brain = FenceStage::Brain;
        let secs = |s| at(Duration::from_secs(s), false);
        assert_eq!(fence(&secs(3), ttl, guard), Fence::Keep);
        assert_eq!(fence(&secs(4), ttl, guard), Fence::AskStop);
        assert_eq!(fence(&secs(6), ttl, guard), Fence::Force);
        assert_eq!(fence(&at(Duration::ZERO, true), ttl, guard), Fence::Force);
        // Brains first: forced at 5 s, while a watchdog whose brain still runs is
        // asked only at 5.5 s.
        assert_eq!(fence(&secs(4), ttl, brain), Fence::AskStop);
        assert_eq!(fence(&secs(5), ttl, brain), Fence::Force);
        assert_eq!(fence(&secs(5), ttl, waiting), Fence::Keep);
        assert_eq!(
            fence(&at(Duration::from_millis(5500), false), ttl, waiting),
            Fence::AskStop
        );
        assert_eq!(fence(&secs(6), ttl, waiting), Fence::Force);
    }

    #[test]
    fn the_value_is_the_record_with_the_host() {
        let value = lock_value(&json!({ "pid": 7 }), "A");
        let parsed: Value = serde_json::from_slice(&value).unwrap_or_default();
        assert_eq!(parsed, json!({ "pid": 7, "host": "A" }));
        let holder = ClusterHolder::from_kv(&KeyValue {
            key: "/desk/locks/X".into(),
            value,
            create_revision: 3,
            mod_revision: 3,
            lease: 9,
        });
        assert_eq!(holder.host.as_deref(), Some("A"));
    }

    #[test]
    fn an_error_answer_is_a_refusal_naming_its_message() {
        let error = refusal(
            "http://e",
            "a read",
            &json!({ "error": "bad", "message": "etcdserver: lease not found", "code": 5 }),
        );
        assert!(
            matches!(error, Some(ClusterError::Refused { ref message, code: 5, .. }) if message.contains("lease not found")),
            "{error:?}"
        );
        let stream = refusal(
            "http://e",
            "a renewal",
            &json!({ "error": { "message": "m", "code": 14 } }),
        );
        assert!(matches!(
            stream,
            Some(ClusterError::Refused { code: 14, .. })
        ));
        assert!(refusal("http://e", "a read", &json!({ "kvs": [] })).is_none());
    }
}
