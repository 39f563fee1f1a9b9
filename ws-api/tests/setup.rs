//! A shop owner's set-up, as they meet it: `panshi.example.toml` documents every setting at
//! its default and passes `config check`; an unknown key or a bad value is named (by
//! `config check`, by `serve`, from the environment); a shop without a payment channel or
//! without a reachable public URL is warned about; `--help` says the defaults; `audit`
//! tells a held or missing data dir from a damaged one; logs are text on a terminal and
//! JSON elsewhere; Ctrl-C stops gracefully, letting requests in flight finish.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn panshi() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_panshi"));
    // The developer's own PANSHI_ variables must not leak into these checks.
    for (name, _) in std::env::vars() {
        if name.starts_with("PANSHI_") {
            command.env_remove(name);
        }
    }
    command
}

fn run(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("panshi runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("panshi.example.toml")
}

/// The settings a TOML text mentions, set or commented out (`# key = ...`), by dotted path,
/// with the value text of those that are set.
fn documented(text: &str) -> BTreeMap<String, Option<String>> {
    let mut section = String::new();
    let mut keys = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (commented, body) = match line.strip_prefix("# ") {
            Some(body) => (true, body),
            None => (false, line),
        };
        let Some((key, value)) = body.split_once(" = ") else {
            continue;
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let path = if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        };
        keys.entry(path)
            .or_insert_with(|| (!commented).then(|| value.to_owned()));
    }
    keys
}

/// Every setting's dotted path and default, leaves only (free-form tables as one leaf).
fn leaves(tree: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    for (key, value) in tree.as_object().expect("a table") {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(_) if path != "payment_methods" => leaves(value, &path, out),
            _ => {
                out.insert(path, value.clone());
            }
        }
    }
}

#[test]
fn the_example_config_passes_and_documents_every_setting_at_its_default() {
    let (code, stdout, stderr) = run(panshi().arg("config").arg("check").arg(example()));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");

    let text = std::fs::read_to_string(example()).unwrap();
    let documented = documented(&text);
    let mut known = BTreeMap::new();
    leaves(&ws_api::settings::known_keys(), "", &mut known);
    let parsed = ws_api::settings::file_tree(&example()).unwrap();
    for (path, default) in &known {
        if path == "payment_methods" {
            assert_eq!(parsed["payment_methods"], *default, "payment_methods");
            continue;
        }
        let Some(value) = documented.get(path) else {
            panic!("panshi.example.toml does not document `{path}` (default {default})");
        };
        if value.is_some() {
            let given = path.split('.').fold(&parsed, |node, part| &node[part]);
            assert_eq!(
                given, default,
                "`{path}` in panshi.example.toml is not its default"
            );
        } else {
            assert!(
                default.is_null(),
                "`{path}` is commented out but has a default ({default}): show it"
            );
        }
    }
}

#[test]
fn unknown_keys_and_bad_values_are_named_by_config_check_and_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("panshi.toml");
    std::fs::write(
        &file,
        "listn = \"0.0.0.0:80\"\n[epay]\npidd = \"1001\"\n[alerts.telegram]\nchat = \"1\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(panshi().arg("config").arg("check").arg(&file));
    assert_ne!(code, 0);
    for key in ["`listn`", "`epay.pidd`", "`alerts.telegram.chat`"] {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
    let data = dir.path().join("data");
    let (code, _, stderr) = run(panshi()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .arg("--data")
        .arg(&data));
    assert_ne!(code, 0, "serve started with unknown keys");
    assert!(stderr.contains("`epay.pidd`"), "{stderr}");
    assert!(
        !data.exists(),
        "nothing is created before the settings are good"
    );

    let (code, _, stderr) = run(panshi()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("PANSHI_EPAY_PID", "1001"));
    assert_ne!(code, 0, "serve started with an unknown variable");
    assert!(stderr.contains("PANSHI_EPAY_PID"), "{stderr}");

    std::fs::write(
        &file,
        "order_ttl_secs = \"soon\"\n[smtp]\nhost = \"mail.example.com\"\ntls = \"startls\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(panshi().arg("config").arg("check").arg(&file));
    assert_ne!(code, 0);
    assert!(stderr.contains("order_ttl_secs"), "{stderr}");
    assert!(
        stderr.contains("smtp.tls"),
        "each bad value is named: {stderr}"
    );
    std::fs::write(
        &file,
        "[smtp]\nhost = \"mail.example.com\"\n[epay]\npid = \"1\"\nkey = \"k\"\ngateway_url = \"https://pay.example.com/submit.php\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(panshi().arg("config").arg("check").arg(&file));
    assert_ne!(code, 0);
    assert!(stderr.contains("smtp.from is required"), "{stderr}");
    assert!(stderr.contains("base URL"), "{stderr}");
}

#[test]
fn a_shop_without_payments_or_a_reachable_address_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("panshi.toml");
    std::fs::write(&file, "listen = \"0.0.0.0:8080\"\n").unwrap();
    let (code, stdout, stderr) = run(panshi().arg("config").arg("check").arg(&file));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("no payment channel is configured"),
        "{stdout}"
    );
    assert!(stdout.contains("public_url is not set"), "{stdout}");

    // And at start, in the log.
    let mut child = panshi()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .env("PANSHI_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut warned = (false, false);
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        warned.0 |= line.contains("no payment channel is configured");
        warned.1 |= line.contains("public_url is not set");
        if line.contains("listening") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(warned, (true, true), "both warnings are logged at start");
}

#[test]
fn help_shows_defaults_environment_and_what_audit_does() {
    let (code, stdout, _) = run(panshi().args(["serve", "--help"]));
    assert_eq!(code, 0);
    for text in [
        "[default: 127.0.0.1:8080]",
        "[default: ./panshi-data]",
        "PANSHI_ADMIN_TOKEN",
        "PANSHI_EPAY__PID",
        "panshi.example.toml",
        "config check",
    ] {
        assert!(stdout.contains(text), "serve --help lacks {text}: {stdout}");
    }
    let (code, stdout, _) = run(panshi().args(["audit", "--help"]));
    assert_eq!(code, 0);
    assert!(stdout.contains("every invariant"), "{stdout}");
    assert!(stdout.contains("Exit status"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tells_a_missing_or_held_data_dir_from_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(panshi()
        .args(["audit", "--data"])
        .arg(dir.path().join("typo")));
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("no such data dir"), "{stderr}");
    assert!(!stdout.contains("violation"), "{stdout}");

    let (code, _, stderr) = run(panshi().args(["audit", "--data"]).arg(dir.path()));
    assert_eq!(code, 2);
    assert!(stderr.contains("not a Panshi data dir"), "{stderr}");

    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    let (code, stdout, stderr) = run(panshi().args(["audit", "--data"]).arg(&data));
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("a running server holds"), "{stderr}");
    assert!(!stdout.contains("violation"), "{stdout}");
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

/// Runs `serve` under a pseudo-terminal (util-linux `script`) and returns its first lines.
fn terminal_lines(data: &Path) -> String {
    let command = format!(
        "{} serve --listen 127.0.0.1:0 --data {}",
        env!("CARGO_BIN_EXE_panshi"),
        data.display()
    );
    let mut child = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("PANSHI_ADMIN_TOKEN", ADMIN)
        .env("PANSHI_PUBLIC_URL", "https://shop.example.com")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("util-linux script runs");
    let mut seen = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("listening on") {
            break;
        }
    }
    // The server goes with its terminal: killing `script` hangs it up.
    child.kill().unwrap();
    child.wait().unwrap();
    seen
}

#[test]
fn logs_are_text_on_a_terminal_and_json_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let seen = terminal_lines(&dir.path().join("tty"));
    assert!(seen.contains("log recovered"), "{seen}");
    assert!(
        !seen.lines().any(|l| l.trim_start().starts_with('{')),
        "JSON on a terminal: {seen}"
    );

    let mut child = panshi()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("pipe"))
        .env("PANSHI_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let parsed: Value = serde_json::from_str(&first).expect("a JSON log line");
    assert!(parsed["fields"]["message"].is_string(), "{first}");
}

/// SIGINT while an order creation waits on a slow gateway: the order is answered, the
/// process exits 0, and the log says the stop is graceful.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_lets_requests_in_flight_finish() {
    use tokio::io::AsyncReadExt;
    let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_url = format!("http://{}", gateway.local_addr().unwrap());
    tokio::spawn(async move {
        // Hold every call unanswered; the shop's gateway timeout ends it.
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = gateway.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut child = panshi()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("PANSHI_ADMIN_TOKEN", ADMIN)
        .env("PANSHI_EPAY__PID", PID)
        .env("PANSHI_EPAY__KEY", KEY)
        .env("PANSHI_EPAY__GATEWAY_URL", &gateway_url)
        .env("PANSHI_EPAY__CREATE_VIA_MAPI", "true")
        .env("PANSHI_PUBLIC_URL", "http://127.0.0.1:9")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let base = stdout
        .lines()
        .find_map(|l| {
            l.ok()?
                .strip_prefix("panshi: listening on ")
                .map(str::to_owned)
        })
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let http = reqwest::Client::new();
    let product = http
        .post(format!("{base}/api/v1/admin/products"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"sku":"sig","name":"Signal","price_cents":100,"currency":"CNY"}))
        .send()
        .await
        .unwrap();
    assert_eq!(product.status(), 201);
    let cards = http
        .post(format!("{base}/api/v1/admin/products/sig/cards"))
        .bearer_auth(ADMIN)
        .header("Content-Type", "text/plain")
        .body("SIG-1\nSIG-2\n")
        .send()
        .await
        .unwrap();
    assert_eq!(cards.status(), 200);
    let order = tokio::spawn(
        http.post(format!("{base}/api/v1/orders"))
            .json(&serde_json::json!({"sku":"sig","quantity":1,"contact":"c@example.com","channel":"alipay"}))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let answer = order
        .await
        .unwrap()
        .expect("the order in flight is answered");
    assert!(answer.status().is_success(), "{}", answer.status());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let log = log.join().unwrap();
    assert!(log.contains("stopping gracefully"), "{log}");
    assert!(!log.contains("forced"), "{log}");
}

/// The demo is for looking around: no advice about resellers' sealing keys or a public
/// address in its log.
#[test]
fn the_demo_gives_no_production_advice() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = panshi()
        .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(log.contains("listening"), "{log}");
    for advice in ["sealing", "public_url", "payment channel", "WARN"] {
        assert!(
            !log.contains(advice),
            "the demo's log holds {advice}: {log}"
        );
    }
}
