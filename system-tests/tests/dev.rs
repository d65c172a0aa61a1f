//! `messenger dev` as a newcomer runs it: a separate process that prints where the web
//! client and the API are and a curl walkthrough, which runs verbatim against it; every
//! component is ready; Ctrl-C stops it cleanly. Start-up problems end with one line.

#[path = "support/http.rs"]
mod http;

// Only `binary` is used here; the rest serves the other system tests.
#[path = "support/dev.rs"]
mod dev_process;
#[allow(dead_code)]
#[path = "support/process.rs"]
mod process;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use dev_process::DevProcess;

fn http() -> reqwest::Client {
    http::client()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get_json(url: &str, token: &str) -> serde_json::Value {
    let response = http().get(url).bearer_auth(token).send().await.unwrap();
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_printed_walkthrough_runs_verbatim_and_ctrl_c_stops_everything() {
    let mut dev = DevProcess::start(&[]);
    let gateway = dev.gateway_url();
    assert!(
        dev.banner.contains(&format!("Web client   {gateway}/")),
        "{}",
        dev.banner
    );
    assert!(dev.banner.contains("in memory"), "{}", dev.banner);

    for (name, admin) in dev.admin_urls() {
        let ready = http().get(format!("{admin}/readyz")).send().await.unwrap();
        assert!(ready.status().is_success(), "{name} is not ready");
    }

    let walkthrough: String = dev
        .banner
        .split("Try it with curl:")
        .nth(1)
        .and_then(|rest| rest.split("Stop with Ctrl-C.").next())
        .expect("the banner has a walkthrough")
        .to_owned();
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &walkthrough])
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the walkthrough failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("\"user_id\""),
        "register answered: {stdout}"
    );
    assert!(
        stdout.contains("\"nickname\":\"ann\""),
        "the walkthrough ends with ann's own profile: {stdout}"
    );

    let status = dev
        .interrupt(Duration::from_secs(30))
        .expect("messenger dev exits after Ctrl-C");
    assert!(status.success(), "{status}; stderr: {}", dev.stderr());
    // Everything stopped: the gateway's port is free again.
    TcpListener::bind(("127.0.0.1", 8080 + dev.port_offset))
        .expect("the gateway's port is released after Ctrl-C");
}

#[tokio::test]
async fn seeded_demo_users_can_sign_in_and_find_their_chat() {
    let dev = DevProcess::start(&["--seed-demo"]);
    assert!(
        dev.banner
            .contains("alice@example.com / alice-demo-password"),
        "{}",
        dev.banner
    );
    let api = dev.gateway_url();
    let login: serde_json::Value = http()
        .post(format!("{api}/v1/auth/login"))
        .json(&serde_json::json!({"email": "bob@example.com", "password": "bob-demo-password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().expect("bob signs in");
    let chats = get_json(&format!("{api}/v1/chats"), token).await;
    let chats = chats["chats"].as_array().expect("a chat list");
    assert_eq!(chats.len(), 1, "{chats:?}");
    let last = chats[0]["last_message"]["content"].as_str().unwrap_or("");
    assert!(last.contains("second window"), "last message: {last:?}");
    let friends = get_json(&format!("{api}/v1/friends"), token).await;
    assert_eq!(friends["friends"][0]["nickname"], "alice", "{friends}");
}

#[test]
fn a_busy_port_ends_start_up_with_one_line_and_nothing_left_running() {
    let offset = dev_process::port_offset();
    let busy = TcpListener::bind(("127.0.0.1", 8080 + offset)).expect("take the gateway's port");
    let output = DevProcess::start_with_offset(&[], offset)
        .err()
        .expect("messenger dev must not start on a busy port");
    let expected = format!("cannot listen on 127.0.0.1:{} (HTTP_ADDR)", 8080 + offset);
    assert!(output.contains(&expected), "{output}");
    assert_eq!(
        output
            .lines()
            .filter(|l| l.starts_with("messenger dev:"))
            .count(),
        1,
        "one line names the problem: {output}"
    );
    drop(busy);
    // The sockets bound before the busy one were closed: nothing keeps running.
    for port in [8001, 8002, 8003, 8004, 9001, 9002, 9003, 9004] {
        TcpListener::bind(("127.0.0.1", port + offset))
            .unwrap_or_else(|e| panic!("port {} still taken: {e}", port + offset));
    }
}

#[test]
fn unusable_stores_are_refused_before_anything_starts() {
    for (args, expected) in [
        (
            vec!["--postgres", "postgres://127.0.0.1/x"],
            "--postgres, --redis and --kafka go together",
        ),
        (
            vec!["--mongodb", "http://example.com"],
            "--mongodb: expected a mongodb",
        ),
    ] {
        let output = DevProcess::start_with_offset(&args, dev_process::port_offset())
            .err()
            .expect("refused");
        assert!(output.contains(expected), "{output}");
        assert!(output.contains("exited with exit status: 1"), "{output}");
    }
}

#[test]
fn an_unreachable_store_ends_start_up_with_one_line_naming_it() {
    let dead = messenger_common::testing::free_port();
    let output = DevProcess::start_with_offset(
        &[
            "--postgres",
            &format!("postgres://postgres:postgres@127.0.0.1:{dead}/postgres"),
            "--redis",
            "redis://127.0.0.1:6379",
            "--kafka",
            "127.0.0.1:9092",
        ],
        dev_process::port_offset(),
    )
    .err()
    .expect("messenger dev must not start without its database");
    let line = output
        .lines()
        .find(|l| l.starts_with("messenger dev:"))
        .unwrap_or_else(|| panic!("no messenger dev line: {output}"));
    assert!(line.contains("stopped"), "{line}");
    assert!(
        line.contains("Connection refused") || line.contains("connect"),
        "the line names the connection problem: {line}"
    );
}
