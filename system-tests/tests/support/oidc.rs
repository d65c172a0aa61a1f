//! The tests' OpenID Connect provider (`scripts/oidc-provider/server.mjs`, on
//! oauth2-mock-server from npm) as a process on loopback: installed by
//! `scripts/oidc-provider.sh` on first use (`scripts/test.sh` runs it first and passes
//! the result in `OIDC_PROVIDER_MODULES`), stopped when dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running provider.
pub struct TestProvider {
    child: Child,
    /// `http://127.0.0.1:<port>`, exactly as its discovery document and tokens say.
    pub issuer: String,
}

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

/// The installed `node_modules` directory.
fn modules() -> String {
    if let Ok(dir) = std::env::var("OIDC_PROVIDER_MODULES")
        && !dir.is_empty()
    {
        return dir;
    }
    let output = Command::new(scripts_dir().join("oidc-provider.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/oidc-provider.sh");
    assert!(
        output.status.success(),
        "scripts/oidc-provider.sh could not install the test OpenID Connect provider \
         (scripts/test.sh reports these tests as skipped then)"
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl TestProvider {
    pub fn start() -> Self {
        let mut child = Command::new("node")
            .arg(scripts_dir().join("oidc-provider/server.mjs"))
            .arg(modules())
            // Its standard input closing (this process ending) stops it.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node (Node.js 20.19+ is needed)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the provider's first line");
        let started: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the provider printed {line:?} instead of its issuer: {e}"));
        let issuer = started["issuer"].as_str().expect("issuer").to_owned();
        Self { child, issuer }
    }

    /// The auth service's variables for this provider as the OpenID Connect provider
    /// `corp`, and as the plain OAuth 2.0 provider `corp-plain` (its userinfo answers
    /// GitHub-style), with the gateway at `gateway_base`.
    pub fn auth_env(&self, gateway_base: &str) -> Vec<(&'static str, String)> {
        let issuer = &self.issuer;
        vec![
            ("AUTH_OAUTH_PROVIDERS", "corp,corp-plain".to_owned()),
            ("AUTH_OAUTH_REDIRECT_BASE_URL", gateway_base.to_owned()),
            ("AUTH_OAUTH_CORP_ISSUER", issuer.clone()),
            ("AUTH_OAUTH_CORP_CLIENT_ID", "messenger".to_owned()),
            ("AUTH_OAUTH_CORP_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
            ("AUTH_OAUTH_CORP_DISPLAY_NAME", "Test provider".to_owned()),
            (
                "AUTH_OAUTH_CORP_PLAIN_CLIENT_ID",
                "messenger-plain".to_owned(),
            ),
            (
                "AUTH_OAUTH_CORP_PLAIN_AUTHORIZE_URL",
                format!("{issuer}/authorize"),
            ),
            ("AUTH_OAUTH_CORP_PLAIN_TOKEN_URL", format!("{issuer}/token")),
            (
                "AUTH_OAUTH_CORP_PLAIN_USERINFO_URL",
                format!("{issuer}/userinfo"),
            ),
        ]
    }

    /// Makes the provider sign new tokens with a new key (the old one stays published).
    pub async fn rotate_keys(&self) {
        let response = crate::http::client()
            .build()
            .unwrap()
            .post(format!("{}/_control/rotate-keys", self.issuer))
            .send()
            .await
            .expect("rotate the provider's keys");
        assert!(response.status().is_success(), "{response:?}");
    }
}

/// The client secret the tests configure; no log may ever show it.
pub const CLIENT_SECRET: &str = "test-client-secret-never-logged";

impl Drop for TestProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
