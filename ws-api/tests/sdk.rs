//! Panshi's Alipay and WeChat Pay signatures judged by the providers' own SDKs, not by our
//! code: Alipay's official `alipay-sdk` for Node.js (tests/sdk/package.json, driven by
//! tests/sdk/alipay.cjs) and `wechatpayv3` for Python (tests/sdk/requirements.txt, driven by
//! tests/sdk/wechat.py), all pinned and installed by tests/sdk/install.
//!
//! - A request Panshi signs (an Alipay page URL, a WeChat Pay Native call captured on the
//!   wire) gets the very signature the SDK computes for it.
//! - Every notify vector the script builds is accepted by a real `panshi` process exactly
//!   when the SDK accepts it, and every Alipay answer is believed exactly when the SDK
//!   believes it.
//!
//! Needs Node.js, Python 3 and tests/sdk/install: under CI a missing SDK fails the test,
//! elsewhere it is skipped with a note.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use engine::keys::{PrivateKey, PublicKey};
use parking_lot::Mutex;
use serde_json::{json, Value};
use simulations::gateway::keys::{self as simkeys, shop_env};

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/sdk")
}

/// Runs `program script` on `input` and reads its JSON answer.
fn run_script(program: &str, script: &str, input: &Value) -> Value {
    let mut child = Command::new(program)
        .arg(sdk_dir().join(script))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{script} writes JSON: {e}"))
}

/// The SDKs' verdicts on `input`; `None` (skip) where they are not installed and this is
/// not CI.
fn run_sdks(input: &Value) -> Option<(Value, Value)> {
    let installed = sdk_dir().join("node_modules/alipay-sdk").exists()
        && sdk_dir().join("python/wechatpayv3").exists();
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "the providers' SDKs are not installed, and CI is set: run tests/sdk/install \
             (.ci/run does)"
        );
        eprintln!("note: the providers' SDKs are not installed; skipping (run tests/sdk/install)");
        return None;
    }
    Some((
        run_script("node", "alipay.cjs", input),
        run_script("python3", "wechat.py", input),
    ))
}

/// A stand-in WeChat Pay: records each request and answers Native with a signed code_url.
async fn recording_wechat() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let platform = PrivateKey::parse(simkeys::WECHAT_PLATFORM_PRIVATE_PEM).unwrap();
    let url = stand_in_with(Arc::new(move |request: &Seen| {
        let path = request.line.split(' ').nth(1).unwrap_or("").to_owned();
        let method = request.line.split(' ').next().unwrap_or("").to_owned();
        record.lock().push(json!({
            "method": method, "path": path, "body": request.body,
            "authorization": request.header("Authorization").unwrap_or(""),
        }));
        let body = r#"{"code_url":"weixin://wxpay/bizpayurl?pr=sdk"}"#.to_owned();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let signature = engine::wechatpay::sign_answer(
            &platform,
            &timestamp,
            "STANDIN",
            body.as_bytes(),
            &ring::rand::SystemRandom::new(),
        );
        Reply {
            status: 200,
            headers: vec![
                ("Wechatpay-Timestamp".into(), timestamp),
                ("Wechatpay-Nonce".into(), "STANDIN".into()),
                ("Wechatpay-Signature".into(), signature),
                (
                    "Wechatpay-Serial".into(),
                    simkeys::WECHAT_PLATFORM_SERIAL.into(),
                ),
            ],
            body,
        }
    }))
    .await;
    (url, seen)
}

fn sdk_input(alipay_order: &Value, wechat_order: &Value, wechat_request: Value) -> Value {
    json!({
        "keys": {
            "alipay_app_private": simkeys::ALIPAY_APP_PRIVATE_PEM,
            "alipay_gateway_private": simkeys::ALIPAY_GATEWAY_PRIVATE_PEM,
            "alipay_gateway_public": simkeys::ALIPAY_GATEWAY_PUBLIC_PEM,
            "wechat_merchant_private": simkeys::WECHAT_MERCHANT_PRIVATE_PEM,
            "wechat_platform_private": simkeys::WECHAT_PLATFORM_PRIVATE_PEM,
            "wechat_platform_public": simkeys::WECHAT_PLATFORM_PUBLIC_PEM,
            "wechat_api_v3_key": simkeys::WECHAT_API_V3_KEY,
            "forger_private": simkeys::WECHAT_MERCHANT_PRIVATE_PEM,
        },
        "ids": {
            "alipay_app_id": simkeys::ALIPAY_APP_ID,
            "wechat_mch_id": simkeys::WECHAT_MCH_ID,
            "wechat_app_id": simkeys::WECHAT_APP_ID,
            "wechat_platform_serial": simkeys::WECHAT_PLATFORM_SERIAL,
        },
        "orders": {
            "alipay": {"order_id": alipay_order["order_id"], "amount": "12.50"},
            "wechat": {"order_id": wechat_order["order_id"], "total": 2000},
        },
        "requests": {
            "alipay_page_url": alipay_order["payment"]["url"],
            "wechat_native": wechat_request,
        },
    })
}

async fn alipay_verdict(server: &Server, form: &str) -> bool {
    let response = server
        .http
        .post(server.url("/api/v1/payments/alipay/notify"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .unwrap();
    let (status, body) = (response.status().as_u16(), response.text().await.unwrap());
    assert!(
        matches!((status, body.as_str()), (200, "success") | (400, "fail")),
        "{status} {body}"
    );
    status == 200
}

async fn wechat_verdict(server: &Server, vector: &Value) -> bool {
    let text = |name: &str| vector[name].as_str().unwrap().to_owned();
    let response = server
        .http
        .post(server.url("/api/v1/payments/wechat/notify"))
        .header("Content-Type", "application/json")
        .header("Wechatpay-Timestamp", text("timestamp"))
        .header("Wechatpay-Nonce", text("nonce"))
        .header("Wechatpay-Signature", text("signature"))
        .header("Wechatpay-Serial", text("serial"))
        .body(text("body"))
        .send()
        .await
        .unwrap();
    response.status().is_success()
}

/// Both verdicts occur, so a Panshi that accepted or refused everything would fail.
fn assert_mixed(vectors: &[Value], what: &str) {
    let accepted = vectors.iter().filter(|v| v["sdk_accepts"] == true).count();
    assert!(
        accepted > 0 && accepted < vectors.len(),
        "{what}: the SDK both accepts and refuses some"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_sdks_and_panshi_agree_on_every_signature() {
    let (wechat_base, wechat_requests) = recording_wechat().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = shop_env("http://127.0.0.1:9");
    env.retain(|(k, _)| k != "PANSHI_WECHAT__API_BASE");
    env.push(("PANSHI_WECHAT__API_BASE".into(), wechat_base));
    // Half the vectors are refused on purpose: their warnings are not this test's output.
    env.push(("PANSHI_LOG__LEVEL".into(), "error".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::start_with(dir.path(), &env);
    server.product("ali", 1250, &keys("A", 2)).await;
    server.product("wx", 2000, &keys("W", 2)).await;
    let (code, alipay_order) = server
        .order_via("ali", 1, "sdk@example.com", "alipay")
        .await;
    assert_eq!(
        (code, &alipay_order["payment"]["channel"]),
        (201, &json!("alipay")),
        "{alipay_order}"
    );
    let (code, wechat_order) = server.order_via("wx", 1, "sdk@example.com", "wechat").await;
    assert_eq!(
        (code, &wechat_order["payment"]["channel"]),
        (201, &json!("wechat")),
        "{wechat_order}"
    );
    let native = wechat_requests.lock()[0].clone();

    let Some((alipay, wechat)) = run_sdks(&sdk_input(&alipay_order, &wechat_order, native)) else {
        return;
    };
    let request = &alipay["alipay_request"];
    assert_eq!(request["equal"], true, "{request}");
    let request = &wechat["wechat_request"];
    assert_eq!(request["equal"], true, "{request}");

    let alipay_notifies = alipay["alipay_notifies"].as_array().unwrap();
    assert_mixed(alipay_notifies, "alipay notifies");
    for vector in alipay_notifies {
        let panshi = alipay_verdict(&server, vector["form"].as_str().unwrap()).await;
        assert_eq!(
            panshi,
            vector["sdk_accepts"] == true,
            "alipay notify: {}",
            vector["name"]
        );
    }
    let wechat_notifies = wechat["wechat_notifies"].as_array().unwrap();
    assert_mixed(wechat_notifies, "wechat notifies");
    for vector in wechat_notifies {
        let panshi = wechat_verdict(&server, vector).await;
        assert_eq!(
            panshi,
            vector["sdk_accepts"] == true,
            "wechat notify: {}",
            vector["name"]
        );
    }
    let alipay_key = PublicKey::parse(simkeys::ALIPAY_GATEWAY_PUBLIC_PEM).unwrap();
    let answers = alipay["alipay_answers"].as_array().unwrap();
    assert_mixed(answers, "alipay answers");
    for vector in answers {
        let believed = ws_api::direct::alipay::verified_answer(
            vector["body"].as_str().unwrap().as_bytes(),
            vector["response_key"].as_str().unwrap(),
            &alipay_key,
        )
        .is_ok();
        assert_eq!(
            believed,
            vector["sdk_accepts"] == true,
            "alipay answer: {}",
            vector["name"]
        );
    }
    // The accepted notifies paid both orders, once.
    assert_eq!(server.lookup(&alipay_order).await.1["status"], "delivered");
    assert_eq!(server.lookup(&wechat_order).await.1["status"], "delivered");
    assert_eq!(server.stock("ali").await, (1, 0, 1));
    assert_eq!(server.stock("wx").await, (1, 0, 1));
}
