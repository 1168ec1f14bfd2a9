//! The `coffer` binary end to end, as an operator uses it: first start, the pepper and
//! lock rules, and every user command, including their bad inputs.

mod common;

use common::{PW, Scratch, start_server};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_creates_config_data_pepper_and_certificate() {
    let s = Scratch::empty();
    let out = s.run(&["init", "--kdf-profile", "insecure-fast-for-tests"], "");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "coffer.toml",
        "coffer-data",
        "coffer.pepper",
        "127.0.0.1:1143",
        "127.0.0.1:1993",
        "127.0.0.1:2424",
        "127.0.0.1:8443",
        "coffer user add",
    ] {
        assert!(
            stderr.contains(expected),
            "first-start message lacks {expected:?}: {stderr}"
        );
    }
    assert_eq!(mode(&s.path("coffer.pepper")), 0o600);
    assert_eq!(mode(&s.path("coffer-data")), 0o700);
    assert_eq!(mode(&s.path("coffer-data/tls/key.pem")), 0o600);
    assert!(
        std::fs::read_to_string(s.path("coffer-data/tls/cert.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(s.path("coffer-data/coffer.db").exists());
    let config = std::fs::read_to_string(s.path("coffer.toml")).unwrap();
    for section in [
        "[tls]",
        "[imap]",
        "[lmtp]",
        "[panel]",
        "[kdf]",
        "[keys]",
        "[recovery]",
        "[limits]",
        "[log]",
    ] {
        assert!(config.contains(section), "config lacks {section}");
    }
    assert!(config.contains("profile = \"insecure-fast-for-tests\""));

    // A second init changes nothing and says so.
    let pepper = std::fs::read(s.path("coffer.pepper")).unwrap();
    let out = s.run(&["init"], "");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already set up"));
    assert_eq!(std::fs::read(s.path("coffer.pepper")).unwrap(), pepper);
}

#[test]
fn the_default_profile_is_calibrated_not_the_test_one() {
    let s = Scratch::empty();
    let out = s.run(&["init"], "");
    assert!(out.status.success());
    let config = std::fs::read_to_string(s.path("coffer.toml")).unwrap();
    assert!(config.contains("profile = \"calibrated\""));
    assert!(config.contains("memory_kib = 65536"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Calibrated Argon2id: 64 MiB"));
}

#[test]
fn config_flag_and_environment_select_another_installation() {
    let s = Scratch::empty();
    std::fs::create_dir_all(s.path("elsewhere")).unwrap();
    s.ok(
        &[
            "--config",
            "elsewhere/c.toml",
            "init",
            "--kdf-profile",
            "insecure-fast-for-tests",
        ],
        "",
    );
    assert!(s.path("elsewhere/c.toml").exists());
    assert!(
        s.path("elsewhere/coffer-data/coffer.db").exists(),
        "paths are relative to the config"
    );
    assert!(!s.path("coffer.toml").exists());
    let out = s
        .command(&["user", "add", "bob", "--password-stdin"])
        .env("COFFER_CONFIG", s.path("elsewhere/c.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{PW}\n").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = s.ok(&["--config", "elsewhere/c.toml", "user", "list"], "");
    assert!(list.contains("bob"));
}

#[test]
fn missing_short_or_wrong_pepper_is_refused_naming_the_file_and_changes_nothing() {
    let s = Scratch::init();
    s.add_user("alice", PW);
    let pepper_path = s.path("coffer.pepper");
    let good = std::fs::read(&pepper_path).unwrap();

    std::fs::remove_file(&pepper_path).unwrap();
    let err = s.fails(&["user", "list"], "");
    assert!(
        err.contains("coffer.pepper") && err.contains("missing"),
        "{err}"
    );
    assert!(
        !pepper_path.exists(),
        "a new pepper must never be generated over existing data"
    );
    let err = s.fails(&["serve"], "");
    assert!(err.contains("coffer.pepper"), "{err}");
    assert!(!pepper_path.exists());

    std::fs::write(&pepper_path, "coffer-pepper-v1:abcd\n").unwrap();
    std::fs::set_permissions(&pepper_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = s.fails(&["user", "list"], "");
    assert!(
        err.contains("coffer.pepper") && err.contains("malformed"),
        "{err}"
    );

    std::fs::write(
        &pepper_path,
        format!("coffer-pepper-v1:{}\n", "11".repeat(32)),
    )
    .unwrap();
    let err = s.fails(&["user", "list"], "");
    assert!(
        err.contains("coffer.pepper") && err.contains("wrong pepper"),
        "{err}"
    );
    let err = s.fails(
        &["user", "add", "carol", "--password-stdin"],
        &format!("{PW}\n"),
    );
    assert!(err.contains("wrong pepper"), "{err}");

    std::fs::write(&pepper_path, &good).unwrap();
    std::fs::set_permissions(&pepper_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = s.fails(&["user", "list"], "");
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&pepper_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let list = s.ok(&["user", "list"], "");
    assert!(
        list.contains("alice") && !list.contains("carol"),
        "nothing changed: {list}"
    );
}

#[test]
fn a_second_server_on_the_same_data_is_refused_and_cli_works_beside_the_server() {
    let s = Scratch::init();
    let mut server = start_server(&s);
    let err = s.fails(&["serve"], "");
    assert!(err.contains("already running"), "{err}");

    // User commands work while the server runs.
    s.add_user("alice", PW);
    assert!(s.ok(&["user", "list"], "").contains("alice"));
    let out = s.ok(&["check"], "");
    assert!(out.contains("check: OK"));

    server.kill().unwrap();
    server.wait().unwrap();
    // After the first is gone, a new server starts.
    let mut again = start_server(&s);
    again.kill().unwrap();
    again.wait().unwrap();
}

#[test]
fn server_stops_cleanly_on_sigterm() {
    let s = Scratch::init();
    let server = start_server(&s);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&server),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success());
}

#[test]
fn user_lifecycle_passwords_app_passwords_and_recovery_code() {
    let s = Scratch::init();
    s.add_user("alice", PW);
    let err = s.fails(
        &["user", "add", "Alice", "--password-stdin"],
        &format!("{PW}\n"),
    );
    assert!(
        err.contains("already exists"),
        "usernames are case-insensitive: {err}"
    );
    assert!(
        s.ok(&["user", "list"], "")
            .contains("alice\thigh\tgeneration 1")
    );

    // Wrong password and unknown user: the same message.
    let wrong = s.fails(
        &["check", "--user", "alice", "--password-stdin"],
        "not the password\n",
    );
    let unknown = s.fails(
        &["check", "--user", "nobody", "--password-stdin"],
        "not the password\n",
    );
    assert!(wrong.contains("authentication failed"), "{wrong}");
    assert_eq!(wrong.replace("alice", "X"), unknown.replace("nobody", "X"));

    // Password change: the old one stops working, the new one opens.
    s.ok(
        &["user", "passwd", "alice", "--password-stdin"],
        &format!("{PW}\nan even better password\n"),
    );
    s.fails(
        &["check", "--user", "alice", "--password-stdin"],
        &format!("{PW}\n"),
    );
    s.ok(
        &["check", "--user", "alice", "--password-stdin"],
        "an even better password\n",
    );
    let pw = "an even better password";

    // App passwords.
    let out = s.ok(
        &[
            "user",
            "app-password",
            "add",
            "alice",
            "--label",
            "phone",
            "--password-stdin",
        ],
        &format!("{pw}\n"),
    );
    let id = out
        .split("id ")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .trim()
        .to_string();
    let secret = out
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 19 && l.matches('-').count() == 3)
        .unwrap()
        .to_string();
    let list = s.ok(
        &["user", "app-password", "list", "alice", "--password-stdin"],
        &format!("{pw}\n"),
    );
    assert!(list.contains(&id) && list.contains("phone"), "{list}");
    // App passwords cannot be used for account changes.
    let err = s.fails(
        &["user", "recovery-code", "alice", "--password-stdin"],
        &format!("{secret}\n"),
    );
    assert!(err.contains("cannot be used here"), "{err}");
    s.ok(&["user", "app-password", "revoke", "alice", &id], "");
    let list = s.ok(
        &["user", "app-password", "list", "alice", "--password-stdin"],
        &format!("{pw}\n"),
    );
    assert!(list.contains("no app passwords"), "{list}");
    let err = s.fails(&["user", "app-password", "revoke", "alice", &id], "");
    assert!(err.contains("no app password with id"), "{err}");
    let err = s.fails(&["user", "app-password", "revoke", "alice", "zz"], "");
    assert!(err.contains("not an app password id"), "{err}");

    // Recovery code: shown once, changes the password, then used up.
    let out = s.ok(
        &["user", "recovery-code", "alice", "--password-stdin"],
        &format!("{pw}\n"),
    );
    let code = out
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 35)
        .unwrap()
        .to_string();
    let spaced = code.replace('-', " ").to_lowercase();
    s.ok(
        &["user", "passwd", "alice", "--password-stdin"],
        &format!("{spaced}\nset with the recovery code\n"),
    );
    s.ok(
        &["check", "--user", "alice", "--password-stdin"],
        "set with the recovery code\n",
    );
    s.fails(
        &["user", "passwd", "alice", "--password-stdin"],
        &format!("{code}\nanother new password\n"),
    );

    // Delete.
    s.fails(&["user", "delete", "nobody", "--yes"], "");
    s.ok(&["user", "delete", "alice", "--yes"], "");
    assert!(!s.ok(&["user", "list"], "").contains("alice"));
}

#[test]
fn modes_recovery_key_escrow_reset_and_reopen() {
    let s = Scratch::init();
    s.add_user("alice", PW);
    let err = s.fails(
        &["user", "mode", "alice", "low", "--password-stdin"],
        &format!("{PW}\n"),
    );
    assert!(err.contains("recovery-key generate"), "{err}");

    let out = s.ok(&["recovery-key", "generate", "--out", "recovery.key"], "");
    assert!(out.contains("OFFLINE"));
    assert_eq!(mode(&s.path("recovery.key")), 0o600);
    let config = std::fs::read_to_string(s.path("coffer.toml")).unwrap();
    assert!(
        config.contains("public_key = \"age1"),
        "public half written to config"
    );
    assert!(config.contains("# Coffer configuration"), "comments kept");
    let secret = std::fs::read_to_string(s.path("recovery.key")).unwrap();
    assert!(
        !config.contains(secret.lines().last().unwrap()),
        "the secret never goes into the config"
    );
    s.fails(&["recovery-key", "generate", "--out", "again.key"], "");

    s.ok(
        &["user", "mode", "alice", "low", "--password-stdin"],
        &format!("{PW}\n"),
    );
    assert!(s.ok(&["user", "list"], "").contains("alice\tlow"));
    s.ok(
        &[
            "user",
            "recover",
            "alice",
            "--recovery-key",
            "recovery.key",
            "--password-stdin",
        ],
        "restored by the operator\n",
    );
    s.ok(
        &["check", "--user", "alice", "--password-stdin"],
        "restored by the operator\n",
    );
    s.fails(
        &["check", "--user", "alice", "--password-stdin"],
        &format!("{PW}\n"),
    );
    let err = s.fails(
        &[
            "user",
            "recover",
            "alice",
            "--recovery-key",
            "coffer.toml",
            "--password-stdin",
        ],
        "x long password\n",
    );
    assert!(err.contains("AGE-SECRET-KEY"), "{err}");

    s.ok(
        &["user", "mode", "alice", "high", "--password-stdin"],
        "restored by the operator\n",
    );
    let err = s.fails(
        &[
            "user",
            "recover",
            "alice",
            "--recovery-key",
            "recovery.key",
            "--password-stdin",
        ],
        "yet another password\n",
    );
    assert!(err.contains("no escrow slot"), "{err}");

    // Reset: a new keyring; the old password reopens the old mail.
    s.ok(
        &["user", "reset", "alice", "--yes", "--password-stdin"],
        "after the reset pw\n",
    );
    assert!(s.ok(&["user", "list"], "").contains("generation 2"));
    s.fails(
        &["check", "--user", "alice", "--password-stdin"],
        "restored by the operator\n",
    );
    let err = s.fails(
        &["user", "reopen", "alice", "--password-stdin"],
        "after the reset pw\nwrong old password\n",
    );
    assert!(err.contains("opens no earlier keyring"), "{err}");
    let out = s.ok(
        &["user", "reopen", "alice", "--password-stdin"],
        "after the reset pw\nrestored by the operator\n",
    );
    assert!(
        out.contains("6 mailboxes are back under Recovered/"),
        "{out}"
    );
    s.ok(
        &["check", "--user", "alice", "--password-stdin"],
        "after the reset pw\n",
    );
}

#[test]
fn bad_usernames_and_passwords_get_clear_errors() {
    let s = Scratch::init();
    let long = "a".repeat(300);
    for (name, expected) in [
        ("", "empty"),
        (long.as_str(), "longer than 255"),
        ("two words", "only letters"),
    ] {
        let err = s.fails(
            &["user", "add", name, "--password-stdin"],
            &format!("{PW}\n"),
        );
        assert!(err.contains(expected), "{name:?}: {err}");
    }
    let err = s.fails(&["user", "add", "alice", "--password-stdin"], "short\n");
    assert!(err.contains("at least 10 characters"), "{err}");
    let err = s.fails(&["user", "add", "alice", "--password-stdin"], "\n");
    assert!(err.contains("empty"), "{err}");
    let out = s.run_bytes(
        &["user", "add", "alice", "--password-stdin"],
        b"\xff\xfe not utf8 at all\n",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UTF-8"));
    let err = s.fails(&["user", "add", "alice", "--password-stdin"], "");
    assert!(err.contains("standard input ended"), "{err}");
    let err = s.fails(
        &["user", "add", "alice", "--password-stdin"],
        &format!("{}\n", "x".repeat(2000)),
    );
    assert!(err.contains("longer than 1024"), "{err}");
    assert!(s.ok(&["user", "list"], "").contains("No users yet"));
}

#[test]
fn every_subcommand_has_help() {
    let s = Scratch::empty();
    for args in [
        vec!["--help"],
        vec!["init", "--help"],
        vec!["serve", "--help"],
        vec!["user", "--help"],
        vec!["user", "add", "--help"],
        vec!["user", "app-password", "--help"],
        vec!["user", "app-password", "revoke", "--help"],
        vec!["recovery-key", "generate", "--help"],
        vec!["check", "--help"],
    ] {
        let out = s.ok(&args, "");
        assert!(out.contains("Usage:"), "{args:?}");
    }
    assert!(!s.path("coffer.toml").exists(), "--help creates nothing");
}

#[test]
fn login_cost_is_the_configured_argon2_cost() {
    // With the calibrated profile a wrong password costs a real Argon2id run.
    let s = Scratch::empty();
    s.ok(&["init"], "");
    s.add_user("alice", PW);
    let start = Instant::now();
    s.fails(
        &["check", "--user", "alice", "--password-stdin"],
        "wrong password\n",
    );
    assert!(
        start.elapsed() > Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn commands_other_than_init_and_serve_never_create_an_installation() {
    let s = Scratch::empty();
    let err = s.fails(&["user", "list"], "");
    assert!(
        err.contains("no Coffer installation") && err.contains("coffer init"),
        "{err}"
    );
    assert!(!s.path("coffer.toml").exists() && !s.path("coffer-data").exists());
}

#[test]
fn a_pepper_without_its_data_is_refused_by_serve_and_accepted_by_init() {
    let s = Scratch::init();
    s.add_user("alice", PW);
    // The data volume "is not mounted".
    std::fs::rename(s.path("coffer-data"), s.path("elsewhere")).unwrap();
    let err = s.fails(&["serve"], "");
    assert!(
        err.contains("no database") && err.contains("mounted"),
        "{err}"
    );
    assert!(
        !s.path("coffer-data/coffer.db").exists(),
        "serve created nothing"
    );
    let err = s.fails(&["user", "list"], "");
    assert!(err.contains("no database"), "{err}");
    // `init` knowingly starts a new, empty installation with the same pepper.
    s.ok(&["init"], "");
    assert!(s.ok(&["user", "list"], "").contains("No users yet"));
}

#[test]
fn the_server_runs_without_core_dumps() {
    let s = Scratch::init();
    let mut server = start_server(&s);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], &["0", "0"], "{core}");
    server.kill().unwrap();
    server.wait().unwrap();
}
