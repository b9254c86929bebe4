//! DESIGN.md rule 9, last sentence, against the configs this repository ships and
//! the desks its tests generate: every one loads, and no component's command line is
//! a copy of another component by the copy rule (so no tool can take one for the
//! other). A desk that broke this would be refused at load; this keeps the shipped
//! and generated ones honest.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use fleet_tests::{Desk, unique};
use lockcore::Fleet;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Every pair of the desk's components, both ways; and each recognises itself.
fn assert_pairs_distinct(fleet: &Fleet) {
    let components: Vec<_> = fleet.components().collect();
    assert!(components.len() >= 3, "{}", fleet.path.display());
    for a in &components {
        assert!(
            a.copy_rule.is_copy(&a.command),
            "{}: `{}` does not recognise its own command",
            fleet.path.display(),
            a.lock_name
        );
        for b in &components {
            if a.lock_name != b.lock_name {
                assert!(
                    !a.copy_rule.is_copy(&b.command),
                    "{}: `{}`'s command {:?} is a copy of `{}`",
                    fleet.path.display(),
                    b.lock_name,
                    b.command,
                    a.lock_name
                );
            }
        }
    }
}

#[test]
fn every_shipped_and_generated_desk_loads_with_components_that_are_not_copies_of_each_other() {
    for shipped in ["examples/demo/fleet.toml", "examples/desk/fleet.toml"] {
        let fleet = Fleet::load(&repo_file(shipped)).unwrap_or_else(|e| panic!("{e}"));
        assert_pairs_distinct(&fleet);
    }
    // The shapes the test helpers write: plain, with stand-in options on every
    // command, with options added to some components, with extra account keys.
    let plain = Desk::new(
        &unique("CFGPAIR_Q"),
        &[&*unique("CFGPAIR_A"), &*unique("CFGPAIR_B")],
    );
    let options = Desk::with_options(
        &unique("CFGPAIR_Q2"),
        &[&*unique("CFGPAIR_C"), &*unique("CFGPAIR_D")],
        &["--exit-log", "/tmp/x"],
        "",
    );
    let extra = Desk::with_extra(
        &unique("CFGPAIR_Q3"),
        &[&*unique("CFGPAIR_E")],
        "restart = \"always\"\nbrain_requires_watchdog = false",
    );
    let added = Desk::new(
        &unique("CFGPAIR_Q4"),
        &[&*unique("CFGPAIR_F"), &*unique("CFGPAIR_G")],
    );
    added.add_args(
        &[&*unique("BRAIN_CFGPAIR_F"), &*unique("WATCHDOG_CFGPAIR_G")],
        &["--ignore-stop"],
    );
    for desk in [&plain, &options, &extra, &added] {
        let fleet = Fleet::load(&desk.config()).unwrap_or_else(|e| panic!("{e}"));
        assert_pairs_distinct(&fleet);
    }
}
