//! The `sfu-node` binary's command line.

use sfu_node::auth::Authenticator;
use std::collections::BTreeMap;
use std::process::Command;

#[test]
fn token_subcommand_mints_a_token_the_node_accepts() {
    let out = Command::new(env!("CARGO_BIN_EXE_sfu-node"))
        .args([
            "token",
            "--identity",
            "alice",
            "--room",
            "demo",
            "--no-publish",
            "--name",
            "Alice",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let keys: BTreeMap<String, String> = [("devkey".to_owned(), "secret".to_owned())].into();
    let grants = Authenticator::new(&keys).verify(token.trim()).unwrap();
    assert_eq!(grants.identity, "alice");
    assert_eq!(grants.name, "Alice");
    assert_eq!(grants.room.as_deref(), Some("demo"));
    assert!(!grants.can_publish && grants.can_subscribe && grants.room_join);
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_sfu-node"))
        .args(["--keys", "nocolon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key:secret"), "{err}");
}
