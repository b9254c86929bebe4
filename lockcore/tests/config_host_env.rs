//! `FLEET_HOST` names this machine in `[cluster]` over the config's `host`, so that one
//! fleet.toml serves several machines. Its own test binary: it sets the variable, and
//! no other test may read the environment meanwhile.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use lockcore::config::{Fleet, HOST_ENV};

#[test]
fn fleet_host_overrides_the_configured_host() {
    let text = "[[account]]\nname = \"ACC\"\nbrain = [\"b.py\"]\nwatchdog = [\"w.py\"]\n\
                [cluster]\nendpoints = [\"http://127.0.0.1:2379\"]\nhost = \"A\"\n";
    // SAFETY: the only test in this binary; nothing else reads the environment.
    unsafe { std::env::set_var(HOST_ENV, " B ") };
    let cluster = Fleet::from_toml(Path::new("fleet.toml"), text)
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(cluster.host, "B");
    // An empty FLEET_HOST is no name: the config's host stands.
    // SAFETY: as above.
    unsafe { std::env::set_var(HOST_ENV, "") };
    let cluster = Fleet::from_toml(Path::new("fleet.toml"), text)
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(cluster.host, "A");
}
