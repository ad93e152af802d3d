//! The set-up script checks what the build really needs, not only that a program exists: a
//! `protoc` without the well-known types (Debian's libprotobuf-dev), which once passed the old
//! check and broke the build on bare machines, is refused by name.

mod support;

use std::process::Command;
use support::*;

fn setup_check(env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/setup.sh"))
        .arg("--check")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn setup_check_passes_here_and_names_what_is_missing() {
    let (ok, err) = setup_check(&[]);
    assert!(
        ok,
        "scripts/setup.sh --check failed on the machine the tests run on:\n{err}"
    );

    // protoc looks for the well-known types beside itself (../include); a copy elsewhere has
    // none, exactly like a machine where libprotobuf-dev is absent.
    let which = Command::new("bash")
        .args(["-c", "command -v protoc"])
        .output()
        .unwrap();
    let protoc = String::from_utf8_lossy(&which.stdout).trim().to_string();
    assert!(!protoc.is_empty(), "protoc is not on PATH");
    let dir = scratch("setup");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let bare = dir.join("bin/protoc");
    std::fs::copy(&protoc, &bare).unwrap();
    let (ok, err) = setup_check(&[("PROTOC", bare.to_str().unwrap())]);
    assert!(
        !ok,
        "a protoc without the well-known types passed the check"
    );
    assert!(
        err.contains("descriptor.proto") && err.contains("libprotobuf-dev"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line per missing piece:\n{err}");

    let (ok, err) = setup_check(&[("ETCD", "/nonexistent/etcd")]);
    assert!(!ok && err.contains("etcd-server"), "{err}");
}
