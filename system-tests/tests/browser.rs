//! The web client in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/test-deps.sh`) driven over WebDriver, against
//! `messenger dev`, as a newcomer runs it. Two people in two independent browser sessions register, find each
//! other, become friends and chat, each seeing the other's request and messages arrive
//! without reloading; a wrong password shows the error; logging out returns to sign-in.
//!
//! Screenshots land in `<target>/test-artifacts/` (the chat on a desktop and on a phone
//! width; on a failure, both windows as they were). `docs/web-client.png` is a copy of
//! `web-client-chat.png`.
//!
//! Without chromedriver and Chromium this test fails and says so; `scripts/test.sh`
//! reports it as skipped with the reason (`BROWSER_SKIP_REASON`) instead of running it.

#[path = "support/http.rs"]
mod http;

// Only `binary` is used here; the rest serves the other system tests.
// The banner and admin addresses serve the dev test.
#[allow(dead_code)]
#[path = "support/dev.rs"]
mod dev_process;
#[allow(dead_code)]
#[path = "support/oidc.rs"]
mod oidc;
#[allow(dead_code)]
#[path = "support/process.rs"]
mod process;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dev_process::DevProcess;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use messenger_common::testing;
use serde_json::json;

const PASSWORD: &str = "correct horse battery staple";
/// Bounds every wait for something the page shows; the test does not measure speed.
const WAIT: Duration = Duration::from_secs(30);
/// Messages Bob sends while Ada is away: more than the client's first page of 30.
const FILLER: usize = 31;

/// `messenger dev`, running until dropped.
struct Messenger {
    base_url: String,
    dev: DevProcess,
}

/// Starts `messenger dev` (with `env`) and returns where the web client is served. The
/// one place that knows how the messenger is started for this test.
async fn start_messenger() -> Messenger {
    start_messenger_with(&[]).await
}

async fn start_messenger_with(env: &[(&str, String)]) -> Messenger {
    let dev = DevProcess::start_with_env(&[], env);
    Messenger {
        base_url: format!("{}/", dev.gateway_url()),
        dev,
    }
}

/// One chromedriver process; each [`Client`] from it is a separate Chromium with its
/// own profile, so two sessions share no storage or cookies.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start() -> Self {
        let binary = std::env::var("CHROMEDRIVER")
            .ok()
            .filter(|path| !path.is_empty())
            .or_else(|| which("chromedriver"))
            .unwrap_or_else(|| {
                panic!(
                    "chromedriver is not installed, so the web client cannot be tested in a \
                     browser ({}). Run scripts/test-deps.sh, which installs Debian's chromium \
                     and chromium-driver, or apt-get install them.",
                    std::env::var("BROWSER_SKIP_REASON").unwrap_or_default()
                )
            });
        let port = testing::free_port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{binary} did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A new headless browser window of `width`×`height` CSS pixels.
    async fn session(&self, width: u32, height: u32) -> Client {
        let mut options = json!({
            // Root in a container: no sandbox, no /dev/shm of size, no GPU.
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--no-first-run",
                "--lang=en-US",
                format!("--window-size={width},{height}"),
            ],
        });
        if let Some(chromium) = std::env::var("CHROMIUM")
            .ok()
            .filter(|p| !p.is_empty())
            .or_else(|| which("chromium"))
        {
            options["binary"] = json!(chromium);
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver cannot start Chromium: {e}"));
        client
            .set_window_size(width, height)
            .await
            .expect("window size");
        client
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<String> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .map(|path| path.display().to_string())
}

/// `<target>/test-artifacts/`: beside the profile directory this test binary runs from.
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<binary>");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

async fn save_screenshot(browser: &Client, name: &str) -> PathBuf {
    let png = browser.screenshot().await.expect("a screenshot");
    let path = artifacts_dir().join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    path
}

/// One person at one browser window.
struct Person<'a> {
    browser: &'a Client,
    nickname: String,
    email: String,
}

impl Person<'_> {
    async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        self.browser
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{}: no {selector}: {e}", self.nickname))
    }

    /// Waits until `selector` is displayed and its visible text contains `expected`.
    async fn sees(&self, selector: &str, expected: &str) -> fantoccini::elements::Element {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            if let Ok(element) = self.browser.find(Locator::Css(selector)).await {
                let shown = element.is_displayed().await.unwrap_or(false);
                last = element.text().await.unwrap_or_default();
                if shown && last.contains(expected) {
                    return element;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} does not see {expected:?} in {selector} (it shows {last:?})",
                self.nickname
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, selector: &str) {
        let element = self.css(selector).await;
        let deadline = Instant::now() + WAIT;
        // A button may be briefly disabled while its previous action runs.
        while !element.is_enabled().await.unwrap_or(false) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("{} cannot click {selector}: {e}", self.nickname));
    }

    async fn type_into(&self, selector: &str, text: &str) {
        let field = self.css(selector).await;
        field.clear().await.expect("clear the field");
        field.send_keys(text).await.expect("type");
    }

    /// The texts of the open chat's messages, oldest first.
    async fn message_texts(&self) -> Vec<String> {
        let messages = self
            .browser
            .find_all(Locator::Css("#messages li.message .content"))
            .await
            .expect("messages");
        let mut texts = Vec::new();
        for message in messages {
            texts.push(message.text().await.expect("text"));
        }
        texts
    }

    async fn open(&self, url: &str) {
        self.browser.goto(url).await.expect("load the web client");
        self.sees("#signin-title", "Sign in").await;
    }

    async fn register(&self) {
        self.type_into("#register-email", &self.email).await;
        self.type_into("#register-nickname", &self.nickname).await;
        self.type_into("#register-password", PASSWORD).await;
        self.click("#register-submit").await;
        // Signed in, with the profile the users service made from the registration, and
        // the live stream open.
        self.sees("#me-nickname", &self.nickname).await;
        self.sees("#live-state", "live").await;
    }

    /// Types `text` and sends it with the Send button, or with Enter from the keyboard.
    async fn send_message(&self, text: &str, with_enter: bool) {
        if with_enter {
            self.type_into(
                "#message-input",
                &format!("{text}{}", char::from(Key::Enter)),
            )
            .await;
        } else {
            self.type_into("#message-input", text).await;
            self.click("#send").await;
        }
        // Stored (no longer "sending…"): the answer or the stream confirmed it.
        self.sees("#messages li.message.mine:not(.pending):last-child", text)
            .await;
    }
}

/// Runs `scenario`; if it fails, keeps both windows as screenshots and the messenger's log.
async fn with_evidence(
    browsers: [(&Client, &str); 2],
    messenger: &DevProcess,
    scenario: impl Future<Output = ()>,
) {
    if let Err(panic) = std::panic::AssertUnwindSafe(scenario).catch_unwind().await {
        for (browser, name) in browsers {
            let path = save_screenshot(browser, &format!("failed-{name}.png")).await;
            eprintln!("{name}'s window when the test failed: {}", path.display());
        }
        eprintln!("messenger dev log:\n{}", messenger.stderr());
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_befriend_and_chat_live_in_two_browsers() {
    let driver = ChromeDriver::start();
    let messenger = start_messenger().await;
    // Ada on a desktop, Bob on a phone-width screen.
    let ada_browser = driver.session(1200, 800).await;
    let bob_browser = driver.session(390, 760).await;
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..4];
    let ada = Person {
        browser: &ada_browser,
        nickname: format!("ada_{tag}"),
        email: format!("ada_{tag}@example.org"),
    };
    let bob = Person {
        browser: &bob_browser,
        nickname: format!("bob_{tag}"),
        email: format!("bob_{tag}@example.org"),
    };
    let url = messenger.base_url.clone();

    with_evidence(
        [(&ada_browser, "ada"), (&bob_browser, "bob")],
        &messenger.dev,
        async {
            // --- both register (and are signed in by it) ---
            ada.open(&url).await;
            bob.open(&url).await;
            ada.register().await;
            bob.register().await;

            // --- Ada says who she is; Bob finds her by nickname, sees it, and asks her ---
            ada.click("#tab-profile").await;
            ada.type_into("#profile-bio", "Writes the first programs.")
                .await;
            ada.click("#profile-save").await;
            ada.sees("#notice", "Profile saved.").await;
            bob.click("#tab-people").await;
            bob.type_into("#search-input", &ada.nickname).await;
            bob.click("#search-submit").await;
            bob.sees(
                &format!("#search-results li[data-nickname='{}']", ada.nickname),
                "Writes the first programs.",
            )
            .await;
            let add = format!(
                "#search-results li[data-nickname='{}'] button[data-action='add']",
                ada.nickname
            );
            bob.click(&add).await;
            bob.sees(
                "#notice",
                &format!("Friend request sent to {}", ada.nickname),
            )
            .await;

            // --- Ada sees it arrive without reloading, and accepts ---
            ada.sees("#requests-badge", "1").await;
            ada.sees(
                "#notice",
                &format!("{} wants to be your friend", bob.nickname),
            )
            .await;
            ada.click("#tab-requests").await;
            ada.click(&format!(
                "#incoming-requests li[data-nickname='{}'] button[data-action='accept']",
                bob.nickname
            ))
            .await;
            ada.sees(
                "#notice",
                &format!("You and {} are friends now", bob.nickname),
            )
            .await;
            assert!(
                !ada.css("#requests-badge")
                    .await
                    .is_displayed()
                    .await
                    .unwrap(),
                "the answered request is still counted"
            );
            // Bob learns live that she accepted.
            bob.sees(
                "#notice",
                &format!("{} accepted your friend request", ada.nickname),
            )
            .await;
            bob.sees("#friend-list", &ada.nickname).await;

            // --- Ada starts the chat; Bob sees it and her message arrive live ---
            ada.click("#tab-people").await;
            ada.click(&format!(
                "#friend-list li[data-nickname='{}'] button[data-action='chat']",
                bob.nickname
            ))
            .await;
            ada.sees("#chat-title", &bob.nickname).await;
            ada.send_message("Hi Bob! Did the request come through?", true)
                .await;
            bob.click("#tab-chats").await;
            bob.sees("#chat-list", "Hi Bob! Did the request come through?")
                .await;
            bob.sees("#chat-list", "new").await;
            bob.click("#chat-list li[data-testid='chat-item'] button")
                .await;
            bob.sees("#chat-title", &ada.nickname).await;
            bob.sees("#messages", "Hi Bob! Did the request come through?")
                .await;

            // --- each sees the other's message appear in the open chat ---
            bob.send_message("It did, live, without a reload.", false)
                .await;
            ada.sees(
                "#messages li.message.theirs",
                "It did, live, without a reload.",
            )
            .await;
            ada.send_message(
                "Great. This is a real browser talking to the real services.",
                false,
            )
            .await;
            bob.sees(
                "#messages li.message.theirs:last-child",
                "This is a real browser talking to the real services.",
            )
            .await;
            // Each message once, in order, on both sides.
            for person in [&ada, &bob] {
                assert_eq!(
                    person.message_texts().await,
                    [
                        "Hi Bob! Did the request come through?",
                        "It did, live, without a reload.",
                        "Great. This is a real browser talking to the real services.",
                    ],
                    "{}'s chat",
                    person.nickname
                );
            }
            let desktop = save_screenshot(ada.browser, "web-client-chat.png").await;
            let phone = save_screenshot(bob.browser, "web-client-chat-phone.png").await;
            eprintln!("screenshots: {} {}", desktop.display(), phone.display());

            // --- a reload keeps Bob signed in (the token is in sessionStorage, not the URL) ---
            bob.browser.refresh().await.expect("reload");
            bob.sees("#me-nickname", &bob.nickname).await;
            let current = bob.browser.current_url().await.expect("url");
            assert_eq!(
                current.as_str(),
                url,
                "the address must carry no credential"
            );

            // --- logout returns to sign-in; a wrong password shows why it failed ---
            ada.click("#logout").await;
            ada.sees("#signin-title", "Sign in").await;
            ada.sees("#notice", "You are signed out.").await;
            assert!(
                !ada.css("#app-view").await.is_displayed().await.unwrap(),
                "the signed-in view is still shown after logout"
            );
            ada.type_into("#login-email", &ada.email).await;
            ada.type_into("#login-password", "not my password").await;
            ada.click("#login-submit").await;
            ada.sees("#error", "Invalid email or password.").await;
            let error = ada.css("#error").await.text().await.unwrap();
            assert!(!error.contains('{'), "raw JSON shown: {error}");

            // --- while she is away Bob writes a lot (straight through the API) ---
            let chat_id = bob
                .css("#chat-list li[data-chat-id]")
                .await
                .attr("data-chat-id")
                .await
                .expect("attribute")
                .expect("the chat's id");
            let token = bob
                .browser
                .execute(
                    "return JSON.parse(sessionStorage.getItem('messenger.session')).token",
                    vec![],
                )
                .await
                .expect("Bob's session");
            let token = token.as_str().expect("a token");
            let http = http::client().build().unwrap();
            for n in 1..=FILLER {
                let sent = http
                    .post(format!("{url}v1/chats/{chat_id}/messages"))
                    .bearer_auth(token)
                    .json(&json!({ "content": format!("filler {n}") }))
                    .send()
                    .await
                    .expect("the gateway answers");
                assert_eq!(sent.status(), 201, "{}", sent.text().await.unwrap());
            }

            // --- the right password brings the chat back, newest message in the list ---
            ada.type_into("#login-password", PASSWORD).await;
            ada.click("#login-submit").await;
            ada.sees("#me-nickname", &ada.nickname).await;
            assert!(
                !ada.css("#error").await.is_displayed().await.unwrap(),
                "the old error is still shown after signing in"
            );
            ada.sees("#chat-list", &format!("filler {FILLER}")).await;

            // --- the newest page first; older ones on request, in order ---
            ada.click("#chat-list li[data-testid='chat-item'] button")
                .await;
            ada.sees(
                "#messages li.message:last-child",
                &format!("filler {FILLER}"),
            )
            .await;
            ada.sees("#load-older", "Load older messages").await;
            let first_page = ada.message_texts().await;
            assert!(
                !first_page.iter().any(|text| text.starts_with("Hi Bob!")),
                "the first page should hold only the newest messages: {first_page:?}"
            );
            ada.click("#load-older").await;
            ada.sees(
                "#messages li.message:first-child",
                "Hi Bob! Did the request come through?",
            )
            .await;
            let all = ada.message_texts().await;
            assert_eq!(all.len(), 3 + FILLER, "{all:?}");
            assert_eq!(all[3], "filler 1");
            assert_eq!(all[2 + FILLER], format!("filler {FILLER}"));
            assert!(
                !ada.css("#load-older").await.is_displayed().await.unwrap(),
                "nothing older is left to load"
            );
        },
    )
    .await;

    // Bob's event stream is still open: it must not hold Ctrl-C up.
    let mut dev = messenger.dev;
    let stopped = dev
        .interrupt(Duration::from_secs(30))
        .expect("messenger dev exits after Ctrl-C with a browser connected");
    assert!(
        stopped.success(),
        "messenger dev exit with a browser connected: {stopped}; {}",
        dev.stderr()
    );
    for browser in [ada_browser, bob_browser] {
        browser.close().await.expect("close the browser");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_signs_in_through_the_oidc_provider() {
    let provider = oidc::TestProvider::start();
    // messenger dev's own gateway is the callback (no AUTH_OAUTH_REDIRECT_BASE_URL).
    let mut env = provider.auth_env("");
    env.retain(|(key, _)| *key != "AUTH_OAUTH_REDIRECT_BASE_URL");
    let driver = ChromeDriver::start();
    let messenger = start_messenger_with(&env).await;
    let browser = driver.session(1200, 800).await;
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..4];
    let octavia = Person {
        browser: &browser,
        nickname: format!("octavia_{tag}"),
        email: format!("octavia_{tag}@example.com"),
    };
    let url = messenger.base_url.clone();
    with_evidence(
        [(&browser, "octavia"), (&browser, "octavia-again")],
        &messenger.dev,
        async {
            octavia.open(&url).await;
            octavia
                .sees("[data-testid=oauth-corp]", "Sign in with Test provider")
                .await;
            save_screenshot(&browser, "web-client-sign-in-providers.png").await;
            octavia.click("[data-testid=oauth-corp]").await;
            // The provider's own login page.
            octavia.type_into("#login", &octavia.nickname).await;
            octavia.click("#sign-in").await;
            // Back in the messenger, signed in as the user the provider named, live.
            octavia.sees("#me-nickname", &octavia.nickname).await;
            octavia.sees("#live-state", "live").await;
            let address = browser.current_url().await.expect("the page's URL");
            assert_eq!(
                address.as_str(),
                url,
                "no token or code left in the address"
            );
        },
    )
    .await;
}
