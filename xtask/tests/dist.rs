//! `cargo xtask dist` packaging: the folder, the zip, its file list, CRLF wrappers.
//! Uses stand-in binaries (`--prebuilt`) so the test checks the packaging, not a
//! release build. CI builds no release: `wrappers_under_cmd.rs` packages the Windows
//! lane's debug tools the same way and runs the bundle's wrappers under Wine.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::Path;
use std::process::Command;

fn xtask() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
}

#[test]
fn dist_makes_a_folder_and_a_zip_with_every_file_and_crlf_wrappers() {
    let tmp = tempfile::tempdir().unwrap();
    let bins = tmp.path().join("bins");
    std::fs::create_dir_all(&bins).unwrap();
    for tool in ["master-launch", "safe-shutdown", "check-procs", "lock-gc"] {
        std::fs::write(bins.join(format!("{tool}.exe")), b"MZ stand-in").unwrap();
    }
    let out = tmp.path().join("dist");
    let status = xtask()
        .args(["dist", "--target", "x86_64-pc-windows-gnu", "--prebuilt"])
        .arg(&bins)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let name = format!(
        "desk-tools-{}-x86_64-pc-windows-gnu",
        env!("CARGO_PKG_VERSION")
    );
    assert!(out.join(&name).is_dir());
    let zip_path = out.join(format!("{name}.zip"));
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    let mut names: Vec<String> = archive
        .file_names()
        .map(|n| n.unwrap().to_string())
        .collect();
    names.sort();
    let mut expected: Vec<String> = [
        "CHECK_PROCS.bat",
        "INSTALL_AT_LOGON.bat",
        "LOCK_GC.bat",
        "MASTER_LAUNCH.bat",
        "README.txt",
        "SAFE_SHUTDOWN.bat",
        "SAFE_START.bat",
        "check-procs.exe",
        "fleet.toml",
        "lock-gc.exe",
        "master-launch.exe",
        "process_lock.py",
        "safe-shutdown.exe",
        "START_quantum_server.bat",
        "UNINSTALL_AT_LOGON.bat",
        "alerts/mail.py",
        "alerts/webhook.py",
    ]
    .iter()
    .map(|f| format!("{name}/{f}"))
    .collect();
    for account in ["ATLAS", "BG_INSTANT", "BG_CHALLENGE", "GL_3", "FTMO"] {
        expected.push(format!("{name}/START_BRAIN_{account}.bat"));
        expected.push(format!("{name}/START_WATCHDOG_{account}.bat"));
    }
    expected.sort();
    assert_eq!(names, expected);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        if !name.ends_with(".bat") {
            continue;
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "{name} has a bare LF"
        );
        assert!(
            text.contains("set \"HERE=%~dp0\"\r\ncd /d \"%HERE%\""),
            "{name}"
        );
        assert!(text.contains("exit /b %code%"), "{name}");
    }
    // The drop-in lock module for the desk's bots, byte for byte, and the README says
    // what to do with it.
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/process_lock.py");
    assert_eq!(
        std::fs::read(out.join(&name).join("process_lock.py")).unwrap(),
        std::fs::read(module).unwrap()
    );
    // The [[alert]] examples, byte for byte, in the zip too.
    for example in ["webhook.py", "mail.py"] {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/alerts")
            .join(example);
        let mut zipped = Vec::new();
        archive
            .by_name(&format!("{name}/alerts/{example}"))
            .unwrap()
            .read_to_end(&mut zipped)
            .unwrap();
        assert_eq!(zipped, std::fs::read(source).unwrap(), "{example}");
    }
    let readme = std::fs::read_to_string(out.join(&name).join("README.txt")).unwrap();
    assert!(
        readme.contains("keep `with ProcessLock(...)`")
            && readme.contains("replace the old\r\nprocess_lock.py")
            && readme.contains("if not os.environ.get(\"FLEET_LOCK_FILE\"):"),
        "{readme}"
    );
    let start = std::fs::read_to_string(out.join(&name).join("START_BRAIN_GL_3.bat")).unwrap();
    assert!(start.contains(
        "\"%HERE%master-launch.exe\" --config \"%HERE%fleet.toml\" start --or-run BRAIN_GL_3 %*"
    ));
    let install = std::fs::read_to_string(out.join(&name).join("INSTALL_AT_LOGON.bat")).unwrap();
    assert!(
        install.contains("\"%HERE%master-launch.exe\" --config \"%HERE%fleet.toml\" install %*")
    );
    let uninstall =
        std::fs::read_to_string(out.join(&name).join("UNINSTALL_AT_LOGON.bat")).unwrap();
    assert!(
        uninstall
            .contains("\"%HERE%master-launch.exe\" --config \"%HERE%fleet.toml\" uninstall %*")
    );
    let readme = std::fs::read_to_string(out.join(&name).join("README.txt")).unwrap();
    assert!(readme.contains("INSTALL_AT_LOGON.bat") && readme.contains("taskschd.msc"));
    // Every exit code, as lockcore states it (3 also for a copy without any lock).
    let words = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    for code in lockcore::ExitCode::ALL {
        let line = format!("{} {}", code.code(), code.meaning());
        assert!(words.contains(&line), "{line:?} missing from {readme}");
    }
    assert!(words.contains("runs without any lock"), "{readme}");

    // SAFE_START.bat: master-launch --replace, and its line in README.txt.
    let safe_start = std::fs::read_to_string(out.join(&name).join("SAFE_START.bat")).unwrap();
    assert!(
        safe_start
            .contains("\"%HERE%master-launch.exe\" --config \"%HERE%fleet.toml\" --replace %*"),
        "{safe_start}"
    );
    assert!(
        readme.contains("SAFE_START.bat      see what runs, stop it in a safe order"),
        "{readme}"
    );
    let shutdown = std::fs::read_to_string(out.join(&name).join("SAFE_SHUTDOWN.bat")).unwrap();
    assert!(
        !shutdown.to_lowercase().contains("set /p"),
        "a second prompt of its own"
    );
}

#[test]
fn a_bad_config_is_refused_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("fleet.toml");
    std::fs::write(&config, "bogus = 1\n").unwrap();
    let output = xtask()
        .args(["dist", "--prebuilt"])
        .arg(tmp.path())
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(
        text.contains("fleet.toml:1: unknown field `bogus`"),
        "{text}"
    );
    assert!(!Path::new(&tmp.path().join("out")).exists());
}
