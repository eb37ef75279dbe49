//! The `kiln` binary as an operator runs it: which configuration file it reads, what
//! read-only commands do with a store that is not there, what its logs look like when
//! they go to a file, and the URL-signing key it makes for itself.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::db::admin_url;

/// The built binary, with no configuration inherited from the test's environment.
fn kiln(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.current_dir(dir).env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("KILN_") && !key.starts_with("KILN_TEST_") {
            command.env_remove(key);
        }
    }
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn kiln_config_names_the_file_and_a_named_file_must_exist() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("other.toml"), "[database]\nurl = \"sqlite:from-file.db\"\n").expect("write config");
    let output = kiln(dir.path()).env("KILN_CONFIG", "other.toml").arg("migrate").output().expect("run kiln");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(dir.path().join("from-file.db").exists(), "the file named by KILN_CONFIG was read");

    for (how, mut command) in [
        ("--config", {
            let mut c = kiln(dir.path());
            c.args(["--config", "missing.toml", "migrate"]);
            c
        }),
        ("KILN_CONFIG", {
            let mut c = kiln(dir.path());
            c.env("KILN_CONFIG", "missing.toml").arg("migrate");
            c
        }),
    ] {
        let output = command.output().expect("run kiln");
        assert_eq!(output.status.code(), Some(1), "{how}: {}", stderr(&output));
        let text = stderr(&output);
        assert!(text.contains("missing.toml") && text.contains("does not exist"), "{how}: {text}");
    }
    assert!(!dir.path().join("kiln.db").exists(), "nothing ran on the defaults");
}

/// Every read-only command, against `url`: exits 4 with a message containing `expected`.
fn read_only_commands_refuse(dir: &Path, url: &str, expected: &str) {
    let team = uuid::Uuid::new_v4().to_string();
    let commands: [&[&str]; 6] = [
        &["audit", "verify"],
        &["audit", "replay", "--team", &team],
        &["audit", "export", "--team", &team],
        &["projections", "status"],
        &["projections", "rebuild", "--verify"],
        &["projections", "rebuild"],
    ];
    for args in commands {
        let output = kiln(dir).args(["--database-url", url]).args(args).output().expect("run kiln");
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(4), "{args:?}: {text}");
        assert!(text.contains(expected), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[test]
fn read_only_commands_never_create_or_migrate_a_sqlite_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("absent.db");
    read_only_commands_refuse(dir.path(), &format!("sqlite:{}", missing.display()), "no database at");
    assert!(!missing.exists(), "no file was created");

    // An empty file is an SQLite database with no tables.
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").expect("create empty file");
    read_only_commands_refuse(dir.path(), &format!("sqlite:{}", empty.display()), "is not migrated");
    assert_eq!(std::fs::metadata(&empty).expect("still there").len(), 0, "not migrated by the commands");

    // The listing needs no store at all.
    let output = kiln(dir.path()).args(["--database-url", &format!("sqlite:{}", missing.display()), "projections", "list"]).output().expect("run");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("team_balances"));
    assert!(!missing.exists());
}

#[tokio::test]
async fn read_only_commands_never_create_or_migrate_a_postgres_database() {
    use sqlx::{Connection, Executor};
    let dir = tempfile::tempdir().expect("temp dir");
    let name = format!("kiln_cli_{}", uuid::Uuid::new_v4().simple());
    let admin = admin_url();
    let server = admin.rsplit_once('/').map(|(server, _)| server.to_string()).expect("url with a database");
    let url = format!("{server}/{name}");
    let run = {
        let (dir, url) = (dir.path().to_path_buf(), url.clone());
        move |expected: &'static str| {
            let (dir, url) = (dir.clone(), url.clone());
            tokio::task::spawn_blocking(move || read_only_commands_refuse(&dir, &url, expected))
        }
    };
    run("no database at").await.expect("missing database");

    let mut connection = sqlx::PgConnection::connect(&admin).await.expect("admin connection");
    connection.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create empty database");
    let outcome = run("is not migrated").await;
    let mut check = sqlx::PgConnection::connect(&url).await.expect("connect");
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut check)
        .await
        .expect("query");
    check.close().await.expect("close");
    connection.execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str()).await.expect("drop");
    outcome.expect("empty database");
    assert!(!migrated, "the commands applied no migration");
}

#[test]
fn logs_to_a_pipe_carry_no_colour_and_json_on_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = kiln(dir.path()).args(["--database-url", "sqlite:k.db", "migrate"]).output().expect("run kiln");
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("migrations applied"), "{text}");
    assert!(!text.contains('\u{1b}'), "no escape codes when stderr is not a terminal: {text:?}");

    let output = kiln(dir.path()).args(["--log-format", "json", "--database-url", "sqlite:k.db", "migrate"]).output().expect("run kiln");
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = stderr(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.iter().any(|l| l["message"] == "migrations applied"), "{lines:?}");
}

#[test]
fn the_url_signing_key_is_made_on_first_run_private_and_logged_with_its_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let start = || {
        let mut child = kiln(dir.path())
            .args(["--database-url", "sqlite:k.db", "serve", "--port", "0"])
            .env("KILN_STORAGE__LOCAL_ROOT", "store")
            .env("KILN_JOBS__SEED_CATALOG_ON_START", "false")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kiln");
        let stderr = child.stderr.take().expect("stderr");
        let lines: Vec<String> = std::io::BufRead::lines(std::io::BufReader::new(stderr))
            .take(50)
            .map_while(Result::ok)
            .take_while(|l| !l.contains("kiln listening"))
            .collect();
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "kiln did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        lines.join("\n")
    };
    let key_file = dir.path().join("store").join(".url-signing-key");
    let first = start();
    assert!(first.contains("generated a new key") && first.contains(".url-signing-key"), "{first}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).expect("key file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let key = std::fs::read_to_string(&key_file).expect("key");
    let second = start();
    assert!(second.contains("using the key kept in this file"), "{second}");
    assert!(!first.contains(key.trim()) && !second.contains(key.trim()), "the key itself is never logged");
    assert_eq!(std::fs::read_to_string(&key_file).expect("key"), key, "kept across restarts");
}

/// The CLI is a door like the others: `kiln team create` with a control character in the
/// name gets the domain's text rule (nothing opened), a clean name opens the team.
#[test]
fn team_create_holds_the_text_rule() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = kiln(dir.path()).args(["team", "create", "--name", "Acme\u{1}Studio", "--credits", "0"]).output().expect("run kiln");
    assert!(!output.status.success(), "a control character is refused");
    let text = stderr(&output);
    assert!(text.contains("name contains the control character U+0001"), "{text}");
    assert!(output.stdout.is_empty(), "no team, no key: {}", String::from_utf8_lossy(&output.stdout));
    let output = kiln(dir.path()).args(["team", "create", "--name", "Acme\tStudio", "--credits", "0"]).output().expect("run kiln");
    assert!(output.status.success(), "a tab is text: {}", stderr(&output));
}

/// `kiln team create` says where to sign in: this Kiln's configured address, not a
/// fixed one — the public URL when set, else the listen address (a wildcard host named
/// as loopback).
#[test]
fn team_create_names_the_configured_address() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (env, expected) in [
        (vec![("KILN_HTTP__PORT", "9412")], "Sign in with it at http://127.0.0.1:9412/,"),
        (vec![("KILN_HTTP__HOST", "0.0.0.0"), ("KILN_HTTP__PORT", "9413")], "Sign in with it at http://127.0.0.1:9413/,"),
        (vec![("KILN_STORAGE__PUBLIC_BASE_URL", "https://kiln.example.com/")], "Sign in with it at https://kiln.example.com/,"),
    ] {
        let output = kiln(dir.path()).envs(env.clone()).args(["team", "create", "--name", "Acme", "--credits", "0"]).output().expect("run kiln");
        assert!(output.status.success(), "{env:?}: {}", stderr(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains(expected), "{env:?}: {text}");
        assert!(!text.contains("8080"), "{env:?}: {text}");
    }
}
