//! A TCP proxy on loopback, to cut one "host" off etcd in the cluster tests. While it
//! forwards, bytes pass both ways; [`Proxy::partition`] turns it into a black hole:
//! nothing is forwarded any more, connections stay open and new ones are accepted but
//! never answered, as when a network drops packets (the holder sees timeouts, not a
//! quick refusal). [`Proxy::heal`] forwards again on new connections.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// A running proxy; it stops accepting when dropped.
#[derive(Debug)]
pub struct Proxy {
    /// `http://127.0.0.1:PORT`: the endpoint to give the cut-off host.
    pub endpoint: String,
    cut: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards connections on a new loopback port to `target` (`127.0.0.1:PORT`).
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("proxy: cannot bind a loopback port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy: no local address: {e}"))
            .port();
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("proxy: cannot make the listener non-blocking: {e}"));
        let cut = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let target = target.trim_start_matches("http://").to_string();
        {
            let (cut, closed) = (Arc::clone(&cut), Arc::clone(&closed));
            thread::spawn(move || accept_loop(&listener, &target, &cut, &closed));
        }
        Proxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            cut,
            closed,
        }
    }

    /// Stops forwarding: from now on nothing passes, in either direction.
    pub fn partition(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again (connections opened from now on).
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        self.cut.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &TcpListener, target: &str, cut: &Arc<AtomicBool>, closed: &AtomicBool) {
    while !closed.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                if cut.load(Ordering::SeqCst) {
                    // Accepted, never answered: held open until the proxy goes.
                    hold(client, Arc::clone(cut));
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    if let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) {
                        let cut = Arc::clone(cut);
                        thread::spawn(move || pump(from, to, &cut));
                    }
                }
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Keeps a connection open and silent while the partition lasts.
fn hold(stream: TcpStream, cut: Arc<AtomicBool>) {
    thread::spawn(move || {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = [0u8; 4096];
        let mut stream = stream;
        while cut.load(Ordering::SeqCst) {
            match stream.read(&mut buf) {
                Ok(0) => return,
                _ => continue,
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
    });
}

/// Copies one direction until either side closes; while cut, reads and drops.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    let mut was_cut = false;
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if cut.load(Ordering::SeqCst) {
                    was_cut = true;
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // A connection that lived through a partition stays dead after it.
                if cut.load(Ordering::SeqCst) {
                    was_cut = true;
                } else if was_cut {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
