//! The web console, end to end: its door over plain HTTP (sessions, CSRF,
//! roles, escaping, the audit trail), and its pages driven in real headless
//! Chromium through ChromeDriver (WebDriver, by `fantoccini`) during a live
//! run on the simulator, RabbitMQ and Redis. Screenshots of the main pages go
//! to `target/console-screenshots/` (CI keeps them as artifacts).

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::auth::{AuthSettings, TokensFile};
use fantoccini::{Client, ClientBuilder, Locator};
use scheduler::auth::Role;
use support::{Stack, add_token};

/// A scheduler API with a viewer, an operator and an admin.
async fn serve_with_roles(stack: &mut Stack) -> (u16, [String; 3], tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let path = secrets.path().join("tokens");
    let tokens = [
        add_token(&path, "vera", Role::Viewer, None),
        add_token(&path, "otto", Role::Operator, None),
        add_token(&path, "ada", Role::Admin, None),
    ];
    stack.api_config_mut().auth = AuthSettings {
        tokens_file: Some(TokensFile::open(path).unwrap()),
        metrics_open: true,
        ..AuthSettings::default()
    };
    let port = stack.serve_api().await;
    (port, tokens, secrets)
}

use support::console::{exchange, get, login_post, post_form, sign_in};

async fn kill_reason(stack: &Stack) -> Option<String> {
    store::Store::kill_reason(&stack.store, "").await.unwrap()
}

async fn audit_actions(port: u16, admin: &str, action: &str) -> Vec<serde_json::Value> {
    let (status, body) = support::http_as(
        port,
        Some(admin),
        "GET",
        &format!("/audit?action={action}"),
        "",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_are_bound_to_their_token_role_and_csrf_and_every_act_is_audited() {
    let mut stack = Stack::start(support::single_location(4, false)).await;
    let (port, [viewer, operator, admin], secrets) = serve_with_roles(&mut stack).await;

    // No session: to the sign-in page, and back after it.
    let (status, head, _) = exchange(port, get("/ui/runs", None)).await;
    assert_eq!(status, 303, "{head}");
    assert!(
        head.contains("location: /ui/login?next=%2Fui%2Fruns"),
        "{head}"
    );
    // A bearer token does not open the console, a cookie not the API.
    let bearer = format!("GET /ui/runs HTTP/1.0\r\nAuthorization: Bearer {operator}\r\n\r\n");
    assert_eq!(exchange(port, bearer).await.0, 303);
    let (operator_cookie, operator_csrf) = sign_in(port, &operator).await;
    let (status, _, _) = exchange(port, get("/runs", Some(&operator_cookie))).await;
    assert_eq!(
        status, 401,
        "a session cookie must not authenticate the JSON API"
    );

    // A wrong token is refused on the page and audited.
    let login = login_post(port, &[("token", "flt_nope")]).await;
    let (status, _, page) = exchange(port, login).await;
    assert_eq!(status, 401);
    assert!(page.contains("unknown or revoked token"), "{page}");
    assert!(!audit_actions(port, &admin, "auth:refused").await.is_empty());
    // Only console pages after signing in: never another site.
    let login = login_post(port, &[("token", &viewer), ("next", "//evil.example/")]).await;
    let (_, head, _) = exchange(port, login).await;
    assert!(head.contains("location: /ui/runs"), "{head}");
    // A sign-in posted from another site (no form cookie, or a value not
    // its own) makes no session: login CSRF.
    for forged in [
        post_form("/ui/login", None, &[("token", &viewer)]),
        post_form(
            "/ui/login",
            None,
            &[("token", &viewer), ("login_csrf", "x")],
        ),
    ] {
        let (status, head, page) = exchange(port, forged).await;
        assert_eq!(status, 403, "{head}\n{page}");
        assert!(!head.contains("flotilla_session="), "{head}");
        assert!(page.contains("did not come from this console"), "{page}");
    }
    // Nor one whose cookie was planted (a sibling host can set cookies):
    // the browser says where the post came from.
    for from in ["Origin: https://evil.example", "Sec-Fetch-Site: cross-site"] {
        let genuine = login_post(port, &[("token", &viewer)]).await;
        let forged = genuine.replacen("\r\n", &format!("\r\n{from}\r\n"), 1);
        let (status, head, _) = exchange(port, forged).await;
        assert_eq!(status, 403, "{from}: {head}");
        assert!(!head.contains("flotilla_session="), "{head}");
    }

    // The kill switch: a form without this session's CSRF token does nothing.
    for csrf in ["", "0123456789abcdef"] {
        let form = [("csrf", csrf), ("reason", "csrf test"), ("confirm", "yes")];
        let (status, _, page) =
            exchange(port, post_form("/ui/kill", Some(&operator_cookie), &form)).await;
        assert_eq!(status, 403, "{page}");
        assert!(page.contains("CSRF"), "{page}");
    }
    // Nor without the confirmation, nor with an empty reason.
    let (status, _, page) = exchange(
        port,
        post_form(
            "/ui/kill",
            Some(&operator_cookie),
            &[("csrf", &operator_csrf), ("reason", "x")],
        ),
    )
    .await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("confirm"), "{page}");
    let (status, _, _) = exchange(
        port,
        post_form(
            "/ui/kill",
            Some(&operator_cookie),
            &[("csrf", &operator_csrf), ("confirm", "yes")],
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(kill_reason(&stack).await, None);
    // A viewer may look but not act.
    let (viewer_cookie, viewer_csrf) = sign_in(port, &viewer).await;
    let form = [
        ("csrf", viewer_csrf.as_str()),
        ("reason", "viewer"),
        ("confirm", "yes"),
    ];
    let (status, _, page) =
        exchange(port, post_form("/ui/kill", Some(&viewer_cookie), &form)).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("lacks the permission"), "{page}");
    // The operator's engage works, audited with the reason and principal.
    let form = [
        ("csrf", operator_csrf.as_str()),
        ("reason", "console drill"),
        ("confirm", "yes"),
    ];
    let (status, head, _) =
        exchange(port, post_form("/ui/kill", Some(&operator_cookie), &form)).await;
    assert_eq!(status, 303, "{head}");
    assert_eq!(kill_reason(&stack).await.as_deref(), Some("console drill"));
    let engaged = audit_actions(port, &admin, "kill:engage").await;
    assert!(
        engaged.iter().any(|record| record["principal"] == "otto"
            && record["reason"] == "console drill"
            && record["object"] == "/ui/kill"
            && record["outcome"] == "ok"),
        "{engaged:?}"
    );
    let denied: Vec<_> = engaged
        .iter()
        .filter(|record| record["outcome"] == "denied")
        .collect();
    assert_eq!(
        denied.len(),
        3,
        "two CSRF refusals and the viewer: {engaged:?}"
    );
    let (status, _, page) = exchange(port, get("/ui/runs", Some(&viewer_cookie))).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("KILL SWITCH ENGAGED") && page.contains("console drill"),
        "the state on every page"
    );
    let form = [
        ("csrf", operator_csrf.as_str()),
        ("reason", "drill over"),
        ("confirm", "yes"),
    ];
    let (status, _, _) = exchange(
        port,
        post_form("/ui/kill/release", Some(&operator_cookie), &form),
    )
    .await;
    assert_eq!(status, 403, "an operator may engage but not release");
    let (admin_cookie, admin_csrf) = sign_in(port, &admin).await;
    let form = [
        ("csrf", admin_csrf.as_str()),
        ("reason", "drill over"),
        ("confirm", "yes"),
    ];
    let (status, _, _) = exchange(
        port,
        post_form("/ui/kill/release", Some(&admin_cookie), &form),
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(kill_reason(&stack).await, None);

    // What hosts and authors wrote is text, never markup; the CSP forbids
    // inline script anyway. Two versions show as YAML with a diff.
    let hostile = |max_errors: u32| {
        let step = "steps:\n  - name: configure\n    document: AWS-RunShellScript\n    parameters:\n      commands: [\"<script>alert(1)</script>\"]\n";
        stack.campaign(
            "hostile",
            format!("{step}rate_control:\n  max_errors: {max_errors}\n"),
        )
    };
    for version in [hostile(1), hostile(2)] {
        stack
            .scheduler
            .apply_campaign_by(&version, "otto")
            .await
            .unwrap();
    }
    let (status, head, page) =
        exchange(port, get("/ui/campaigns/hostile", Some(&viewer_cookie))).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !page.contains("<script>alert"),
        "{page}"
    );
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    let (status, _, page) = exchange(
        port,
        get(
            "/ui/campaigns/hostile?version=2&against=1",
            Some(&viewer_cookie),
        ),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<span class=\"del\">- max_errors: &#39;1&#39;")
            || page.contains("<span class=\"del\">-"),
        "{page}"
    );
    assert!(page.contains("<span class=\"add\">+"), "{page}");
    let (status, _, page) = exchange(
        port,
        get("/ui/campaigns/hostile?version=9", Some(&viewer_cookie)),
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("version: a number from 1 to 2"), "{page}");

    // Revoking the token ends its sessions at once; signing out ends one.
    let revoked = api::auth::revoke_in_tokens_file(&secrets.path().join("tokens"), "vera").unwrap();
    assert_eq!(revoked, 1);
    assert_eq!(
        exchange(port, get("/ui/runs", Some(&viewer_cookie)))
            .await
            .0,
        303
    );
    let (status, _, _) = exchange(
        port,
        post_form(
            "/ui/logout",
            Some(&operator_cookie),
            &[("csrf", &operator_csrf)],
        ),
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(
        exchange(port, get("/ui/runs", Some(&operator_cookie)))
            .await
            .0,
        303
    );
    assert!(
        !audit_actions(port, &admin, "console:login")
            .await
            .is_empty()
    );
    stack.teardown().await;
}

/// ChromeDriver and its headless Chromium, killed (the whole process group)
/// when dropped, also when the test fails.
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the browser may take for a page or a change to show.
const WAIT: Duration = Duration::from_secs(10);
const CHROMIUM: &str = "/usr/bin/chromium";

impl Browser {
    async fn start() -> Self {
        let driver_path =
            std::env::var("FLOTILLA_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.into());
        let chromium = std::env::var("FLOTILLA_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into());
        for (path, what) in [(&driver_path, "chromedriver"), (&chromium, "chromium")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{what} not found at {path}: the browser tests need Debian's chromium and chromium-driver \
                 (`apt-get install chromium chromium-driver`; scripts/test installs them), or set \
                 FLOTILLA_CHROMIUM / FLOTILLA_CHROMEDRIVER"
            );
        }
        let port = support::free_port();
        // In the test's process group: a test runner that kills a hung
        // test's group takes ChromeDriver and Chromium with it.
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Self {
            driver,
            client: None,
            _profile: profile,
        };
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1000", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-proxy-server",
                    // Loopback only: any other host resolves to nothing.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ]
            }
        });
        let capabilities = match capabilities {
            serde_json::Value::Object(map) => map,
            _ => unreachable!(),
        };
        let began = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(error) if began.elapsed() < Duration::from_secs(20) => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("ChromeDriver on port {port} did not start Chromium: {error}"),
            }
        };
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// The text of the first element `css` matches. The live regions are
    /// re-rendered every 2 s, so an element found may be replaced before its
    /// text is read (a stale element): then it is found again.
    async fn text(&self, css: &str) -> String {
        let mut last_error = None;
        for _ in 0..10 {
            let read = async {
                let element = self.client().find(Locator::Css(css)).await?;
                element.text().await
            };
            match read.await {
                Ok(text) => return text,
                Err(error) => last_error = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no text at {css}: {last_error:?}");
    }

    /// Clicks the first element `css` matches, found again if a live
    /// refresh replaced it in between.
    async fn click(&self, css: &str) {
        let mut last_error = None;
        for _ in 0..10 {
            let clicked = async {
                let element = self.client().find(Locator::Css(css)).await?;
                element.click().await
            };
            match clicked.await {
                Ok(_) => return,
                Err(error) => last_error = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not click {css}: {last_error:?}");
    }

    /// Waits until the page shown is at `path` (a click returns before the
    /// page it leads to is loaded).
    async fn wait_for_path(&self, path: &str) {
        self.wait_for(&format!("the browser at {path}"), WAIT, || async {
            self.client()
                .current_url()
                .await
                .is_ok_and(|url| url.path() == path)
                && self.client().find(Locator::Css("main")).await.is_ok()
        })
        .await;
    }

    /// Waits up to `limit` for `what` to hold of the page.
    async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let began = Instant::now();
        while !check().await {
            assert!(began.elapsed() < limit, "not within {limit:?}: {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client().screenshot().await.unwrap();
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // ChromeDriver, and every Chromium process of this browser's own
        // profile directory (no other browser has it).
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let profile = self._profile.path().display().to_string();
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &profile])
            .status();
    }
}

/// A fleet of 4 accounts × 2 regions, 12 instances each, commands that take
/// a few seconds (15% of them fail): a run that is still going while the
/// browser watches.
fn watched_fleet() -> sim::FleetProfile {
    let mut profile = support::single_location(12, false);
    profile.accounts = 4;
    profile.regions = vec!["us-east-1".into(), "eu-west-1".into()];
    profile.time_scale = 10.0;
    // Some failures, so the grid and the top failures have something to show.
    profile.outcomes = sim::profile::OutcomeMix {
        success: 85,
        failed: 15,
        timed_out: 0,
        undeliverable: 0,
    };
    profile
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_the_console_follows_a_live_run_pauses_it_and_stops_every_worker() {
    let mut stack = Stack::start(watched_fleet()).await;
    let (port, [_viewer, operator, admin], _secrets) = serve_with_roles(&mut stack).await;
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "nightly-scan",
        "steps:\n  - name: scan\n    document: AWS-RunPatchBaseline\n    parameters: { Operation: Scan }\nrate_control:\n  max_concurrency: 8\n  max_errors: 100%\n",
    );
    stack
        .scheduler
        .apply_campaign_by(&campaign, "otto")
        .await
        .unwrap();
    let run_id = stack.start_run(&campaign).await;
    let browser = Browser::start().await;
    let base = format!("http://127.0.0.1:{port}");
    let client = browser.client();

    // Sign in: the console sends a browser without a session to the form.
    client.goto(&format!("{base}/ui/runs")).await.unwrap();
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/ui/login")
    );
    client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(&operator)
        .await
        .unwrap();
    client
        .find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_path("/ui/runs").await;

    // The runs page: the counts rise by themselves (no reload).
    let row = format!("tr[data-run='{run_id}'] .done");
    let first: u64 = browser.text(&row).await.parse().unwrap();
    browser
        .wait_for(
            "the run's finished count rises on the page",
            Duration::from_secs(40),
            || async { browser.text(&row).await.parse::<u64>().unwrap_or(0) > first },
        )
        .await;
    let refreshed = client
        .find(Locator::Css("#runs"))
        .await
        .unwrap()
        .attr("data-refreshed")
        .await
        .unwrap();
    assert!(refreshed.is_some(), "the table was refreshed in place");
    browser.screenshot("runs.png").await;

    // The run page: the grid has a cell per location; pause with a reason.
    browser
        .click(&format!("tr[data-run='{run_id}'] a.run-link"))
        .await;
    browser.wait_for_path(&format!("/ui/runs/{run_id}")).await;
    browser
        .wait_for(
            "a grid cell per location: 4 accounts × 2 regions",
            WAIT,
            || async {
                client
                    .find_all(Locator::Css("#grid a.cell"))
                    .await
                    .is_ok_and(|cells| cells.len() == 8)
            },
        )
        .await;
    browser.screenshot("run.png").await;
    // A cell opens its location's detail (which the live refresh keeps).
    browser.click("#grid a.cell").await;
    browser
        .wait_for("the detail of the clicked location", WAIT, || async {
            client.find(Locator::Css("#detail h2")).await.is_ok()
                && browser
                    .text("#detail h2")
                    .await
                    .starts_with("Location 1000000000")
        })
        .await;
    let pause = client.find(Locator::Css("#run-pause")).await.unwrap();
    client
        .find(Locator::XPath(
            "//button[@id='run-pause']/preceding-sibling::input[@name='reason']",
        ))
        .await
        .unwrap()
        .send_keys("browser says stop")
        .await
        .unwrap();
    pause.click().await.unwrap();
    browser
        .wait_for(
            "the run page shows Paused",
            Duration::from_secs(10),
            || async { browser.text("#run-state").await == "Paused" },
        )
        .await;
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    assert_eq!(progress.state, protocol::run::RunState::Paused);
    assert_eq!(progress.reason, "browser says stop");
    let paused = audit_actions(port, &admin, "runs:pause").await;
    assert!(
        paused
            .iter()
            .any(|r| r["principal"] == "otto" && r["reason"] == "browser says stop"),
        "{paused:?}"
    );
    client
        .find(Locator::Css("#run-resume"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for("the run runs again", WAIT, || async {
            browser.text("#run-state").await != "Paused"
        })
        .await;

    // The kill switch from the page: every worker stops sending.
    client
        .find(Locator::Css("#kill summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .find(Locator::Css("#kill-reason-input"))
        .await
        .unwrap()
        .send_keys("browser drill")
        .await
        .unwrap();
    client
        .find(Locator::Css("#kill-confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .find(Locator::Css("#kill-engage"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for(
            "the banner says the kill switch is engaged",
            WAIT,
            || async { browser.text("#kill").await.contains("KILL SWITCH ENGAGED") },
        )
        .await;
    assert_eq!(kill_reason(&stack).await.as_deref(), Some("browser drill"));
    // Within a second every worker has seen it; no SendCommand after that.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = stack.commands().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stack.commands().len(),
        sent,
        "commands sent under the kill switch"
    );
    // The run page, opened while the switch holds the run: it offers
    // steering...
    client
        .goto(&format!("{base}/ui/runs/{run_id}"))
        .await
        .unwrap();
    assert!(client.find(Locator::Css("#run-pause")).await.is_ok());
    store::Store::release_kill_switch(&stack.store, &store::KillScope::Global)
        .await
        .unwrap();
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(120))
        .await;
    assert_eq!(progress.state, protocol::run::RunState::Completed);
    // ... and stops once the run is over, without a reload (the actions are
    // part of the live fragment).
    browser
        .wait_for("no steering for a finished run", WAIT, || async {
            client.find(Locator::Css("#run-actions")).await.is_err()
                && browser.text("#run-state").await == "Completed"
        })
        .await;
    client
        .goto(&format!("{base}/ui/runs/{run_id}"))
        .await
        .unwrap();
    assert_eq!(browser.text("#run-state").await, "Completed");
    // The failures, grouped by cause: one cause on many hosts is one row.
    let failed = progress.results[&0]["Failed"];
    assert!(failed > 0, "15% of the fleet fails");
    assert_eq!(
        progress.top_failures.len(),
        1,
        "{:?}",
        progress.top_failures
    );
    assert_eq!(progress.top_failures[0].targets, failed);
    assert_eq!(
        browser.text("#failures td.cause").await,
        "AWS-RunPatchBaseline failed on <instance>: exit status <n>"
    );
    browser.screenshot("run-final.png").await;
    // Issue 33: steps by name, when it was made and its pace, a legend of
    // every colour in use.
    let live = browser.text("#run-live").await;
    assert!(live.contains("1. scan"), "the step by its name: {live}");
    assert!(browser.text("#run-created").await.ends_with("UTC"));
    assert!(browser.text("#run-ended").await.ends_with("UTC"));
    let pace = browser.text("#run-pace").await;
    assert!(
        pace.starts_with("took ") && pace.contains("ended"),
        "{pace}"
    );
    let legend = browser.text("#legend").await;
    for colour in [
        "queued or waiting",
        "discovering",
        "active",
        "none failed",
        "location failed",
    ] {
        assert!(legend.contains(colour), "{colour} missing from {legend}");
    }
    // A location's page lists its instances, failures first, each with
    // what its command printed.
    browser.click("#grid a.cell").await;
    browser
        .wait_for("the location's instances", WAIT, || async {
            client
                .find_all(Locator::Css("#instance-table tr[data-instance]"))
                .await
                .is_ok_and(|rows| !rows.is_empty())
        })
        .await;
    let first = browser
        .text("#instance-table tr[data-instance] td:nth-child(3)")
        .await;
    assert!(!first.is_empty(), "each instance has its status");
    client
        .find(Locator::Css("#instance-table details.output summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        !browser
            .text("#instance-table details[open] pre")
            .await
            .is_empty(),
        "the command's output opens in place"
    );
    // Its own top failures, when it has failed targets.
    let heading = browser.text("#detail h2").await;
    let key = heading.trim_start_matches("Location ").to_string();
    let failed_here = stack
        .records(run_id)
        .iter()
        .filter(|r| format!("{}/{}", r.account_id, r.region) == key && r.status == "Failed")
        .count();
    if failed_here > 0 {
        let failures = browser.text("#location-failures").await;
        assert!(
            failures.contains("1. scan") && failures.contains(&failed_here.to_string()),
            "{key}: {failed_here} failed; {failures}"
        );
    }
    browser.screenshot("location.png").await;

    // The compliance page finds an instance the scan found non-compliant.
    let non_compliant = stack
        .records(run_id)
        .into_iter()
        .find(|record| record.compliance.is_some_and(|c| !c.is_compliant()))
        .expect("the simulated fleet misses patches somewhere")
        .instance_id;
    client.goto(&format!("{base}/ui/compliance")).await.unwrap();
    let row = client
        .find(Locator::Css(&format!(
            "#attention tr[data-instance='{non_compliant}']"
        )))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(row.contains(&non_compliant), "{row}");
    // Severities worst first, not alphabetically.
    let severities: Vec<String> = browser
        .text("#by-severity")
        .await
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect();
    let order = ["critical", "security", "other", "compliant"];
    let ranks: Vec<usize> = severities
        .iter()
        .filter_map(|s| order.iter().position(|o| o == s))
        .collect();
    assert!(
        !ranks.is_empty() && ranks.windows(2).all(|w| w[0] < w[1]),
        "by severity: {severities:?}"
    );
    browser.screenshot("compliance.png").await;
    client
        .goto(&format!("{base}/ui/campaigns/nightly-scan"))
        .await
        .unwrap();
    assert!(browser.text("#yaml").await.contains("AWS-RunPatchBaseline"));
    browser.screenshot("campaign.png").await;
    browser.close().await;
    stack.teardown().await;
}
