//! `imip-manager` in a real browser, end to end through real parts: headless
//! Chromium (Debian's, driven over WebDriver by chromedriver) opens the
//! manager as Bob behind an authenticating reverse proxy (written here, on
//! 127.0.0.1, adding `X-Remote-User` as the deployments in docs/manager.md
//! do), sees Alice's invitation and clicks Accept. The manager submits both
//! messages to the real Postfix of the MTA tests with its SASL login
//! `calendar-manager`; Postfix delivers the REPLY to Alice's incoming pipe and
//! the copy from the calendar address to Bob's, `imip-ingest` and the
//! processor apply them, and the open page turns from "sent, waiting to
//! apply" to applied over Server-Sent Events, without a reload. Then Bob is
//! busy and Alice's record says he accepted.
//!
//! Postfix holds the imip copies (`defer_transports`) until the test has seen
//! the waiting state and marked the page, so the applied state can only
//! arrive by the event stream, not by a race with the answer's redirect.
//!
//! With `IMIP_SCREENSHOTS=1` the screenshots are written to
//! `docs/screenshots/manager-*.png` (the README and docs/manager.md show
//! them); they are always taken and checked to be PNGs.
//!
//! Skips (with a message) only when Chromium or Postfix cannot be installed.

use fantoccini::{Client, ClientBuilder, Locator};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use imipflow_tests::browser::{CHROMIUM, Chromedriver, chromium_args, chromium_unavailable};
use imipflow_tests::mta::{Postfix, SASL_PASSWORD, postfix_unavailable};
use imipflow_tests::{PLANNING_UID, TestEnv, free_port, invite_to_planning, repo_root};
use std::time::{Duration, Instant};

/// Both local to the Postfix test instance's domain: it delivers to both.
const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
/// The calendar address and its SASL login, as in `deploy/postfix/imip-manager-*`.
const MANAGER: &str = "calendar@example.org";
const MANAGER_LOGIN: &str = "calendar-manager";
const SLOT: &str = "2027-03-16T09:00:00Z 2027-03-16T10:00:00Z BUSY";

fn skip() -> bool {
    match chromium_unavailable().or_else(postfix_unavailable) {
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            true
        }
        None => false,
    }
}

/// The authenticating reverse proxy: every request it receives goes on to
/// the manager with `X-Remote-User: <user>` (whatever the client sent in that
/// header is dropped), from 127.0.0.1, which the manager trusts. Responses
/// stream through frame by frame (hyper's body is passed on, not collected),
/// so the event stream stays live. Stops when dropped.
struct AuthProxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl AuthProxy {
    async fn start(upstream: u16, user: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client: hyper_util::client::legacy::Client<HttpConnector, Incoming> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let client = client.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |mut req| {
                        let client = client.clone();
                        async move {
                            let path = req
                                .uri()
                                .path_and_query()
                                .map_or("/", |p| p.as_str())
                                .to_owned();
                            *req.uri_mut() = format!("http://127.0.0.1:{upstream}{path}")
                                .parse()
                                .expect("upstream URI");
                            let headers = req.headers_mut();
                            headers.remove("x-remote-user");
                            headers.insert("x-remote-user", HeaderValue::from_static(user));
                            client.request(req).await
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), service)
                        .await;
                });
            }
        });
        AuthProxy { port, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for AuthProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A WebDriver session with headless Chromium.
async fn browser(driver: &Chromedriver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({ "binary": CHROMIUM, "args": chromium_args(&driver.profile) }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no WebDriver session: {e}\nchromedriver log:\n{}",
                driver.log()
            )
        })
}

/// The text of the first element matching `css`, or `None` if there is
/// none. One script, so that the page's live update cannot swap the element
/// out between finding it and reading it.
async fn text_of(c: &Client, css: &str) -> Option<String> {
    c.execute(
        "var e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
        vec![css.into()],
    )
    .await
    .expect("script")
    .as_str()
    .map(str::to_owned)
}

/// A real click on `css` (WebDriver's element click: the browser's own
/// pointer events, and the form's submission). Tried again while the live
/// update swaps the element for its fresh copy (a stale reference).
async fn click(c: &Client, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let result = match c.find(Locator::Css(css)).await {
            Ok(e) => e.click().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("click on {css}: {e}; again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot click {css}: {e}"),
        }
    }
}

/// Polls the DOM until `css` has a text containing `want`; returns it.
async fn wait_text(c: &Client, css: &str, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let got = text_of(c, css).await;
        if let Some(t) = &got
            && t.contains(want)
        {
            return t.clone();
        }
        if Instant::now() >= deadline {
            let html = c.source().await.unwrap_or_default();
            panic!("{css} did not say {want:?} within {within:?} (last: {got:?}); page:\n{html}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A screenshot of the browser's viewport, checked to be a PNG; written to
/// `docs/screenshots/<name>` when `IMIP_SCREENSHOTS=1`.
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(!png.is_empty(), "{name}: empty screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{name}: not a PNG ({} bytes)",
        png.len()
    );
    if std::env::var("IMIP_SCREENSHOTS").as_deref() == Ok("1") {
        let dir = repo_root().join("docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), &png).unwrap();
        eprintln!("wrote docs/screenshots/{name} ({} bytes)", png.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_accepts_in_the_browser_and_the_page_updates_once_postfix_delivered_it() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let env = TestEnv::new().await;
    let _processor = env.start_processor(&[("IMIP_MANAGER_ADDRESSES", MANAGER)]);
    // The imip copies wait in the queue until `flush` (see the header).
    let pf = Postfix::start_with_main_cf(&env, "defer_transports = imip-in, imip-out");
    invite_to_planning(&env, ALICE, BOB).await;
    let manager = env
        .start_manager_with(free_port(), |c| {
            c.env("IMIP_MANAGER_ADDRESSES", MANAGER)
                .env("IMIP_MANAGER_FROM", MANAGER)
                .env(
                    "IMIP_MANAGER_SMTP_URL",
                    format!(
                        "smtp://{MANAGER_LOGIN}:{SASL_PASSWORD}@127.0.0.1:{}",
                        pf.submission_port
                    ),
                )
                // The meeting is months ahead: in the agenda all the same.
                .env("IMIP_MANAGER_AGENDA_WEEKS", "26");
        })
        .await;
    let proxy = AuthProxy::start(manager.port, BOB).await;
    let driver = Chromedriver::start();
    let c = browser(&driver).await;

    // Bob's page: the invitation.
    c.goto(&proxy.url("/")).await.unwrap();
    let row = format!("#requests tr[data-uid=\"{PLANNING_UID}\"]");
    let text = wait_text(&c, &row, "Quarterly planning", Duration::from_secs(10)).await;
    for want in [ALICE, "Tue 16 Mar 2027 09:00 – 10:00", "new invitation"] {
        assert!(text.contains(want), "{want:?} in {text:?}");
    }
    let nav = text_of(&c, "nav").await.unwrap();
    assert!(nav.contains(&format!("signed in as {BOB}")), "{nav}");
    screenshot(&c, "manager-requests.png").await;

    // A real click on the form's Accept button: POST, 303, the page again.
    click(&c, &format!("{row} button[value=\"ACCEPTED\"]")).await;
    let status = format!("div.status[data-uid=\"{PLANNING_UID}\"]");
    let waiting = wait_text(
        &c,
        &status,
        "sent, waiting to apply",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        waiting.contains("Quarterly planning (ACCEPTED)"),
        "{waiting}"
    );

    // Postfix took both messages from the manager's login and holds the
    // copies for the pipes: Alice's (the REPLY), Bob's (the calendar
    // address's copy) and Bob's outgoing copy of his REPLY.
    for to in [
        "alice+imip-in@example.org",
        "bob+imip-in@example.org",
        "bob+imip-out@example.org",
    ] {
        pf.wait_log(&[&format!("to=<{to}>"), "status=deferred"], 1)
            .await;
    }
    assert!(
        pf.log_lines(&["sasl_username=calendar-manager"]).len() >= 2,
        "both messages submitted with the manager's login:\n{}",
        pf.maillog()
    );
    // Marks this document: a reload would make a new one without the mark.
    let live = c
        .execute(
            "window.__marker = 1; return document.body.getAttribute('data-live-events');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(live, serde_json::Value::Null, "no event yet");
    let url_before = c.current_url().await.unwrap();
    screenshot(&c, "manager-waiting.png").await;

    // Delivery: the pipes run imip-ingest, the processor applies, the change
    // event reaches the page over SSE and it swaps in the applied state.
    pf.flush();
    let applied = wait_text(
        &c,
        &status,
        "Quarterly planning (ACCEPTED): applied",
        Duration::from_secs(60),
    )
    .await;
    assert!(!applied.contains("waiting"), "{applied}");
    wait_text(
        &c,
        "#no-requests",
        "No pending requests.",
        Duration::from_secs(10),
    )
    .await;
    let page = c
        .execute(
            "return [window.__marker === 1, Number(document.body.getAttribute('data-live-events') || 0)];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(page[0], true, "the page was reloaded (its mark is gone)");
    assert!(
        page[1].as_u64().unwrap() >= 1,
        "no event arrived over SSE: {page}"
    );
    assert_eq!(c.current_url().await.unwrap(), url_before);

    // What Postfix did: each copy through its pipe, nothing left queued.
    for to in ["alice+imip-in@example.org", "bob+imip-in@example.org"] {
        let line = pf
            .wait_log(&[&format!("to=<{to}>"), "status=sent"], 1)
            .await;
        assert!(line.contains("relay=imip-in"), "{line}");
    }
    pf.wait_queue_empty().await;
    env.wait_applied().await;

    // Bob is busy; Alice's record says he accepted.
    assert_eq!(
        env.busy_lines(BOB, "2027-03-01T00:00:00Z", "2027-04-01T00:00:00Z")
            .await,
        vec![SLOT]
    );
    assert_eq!(
        imipflow_tests::partstat_of(&env, ALICE, PLANNING_UID, BOB).await,
        "ACCEPTED"
    );
    assert!(
        env.message_log_of(ALICE)
            .await
            .contains(&("REPLY".to_owned(), "applied".to_owned())),
        "{:?}",
        env.message_log_of(ALICE).await
    );
    // The agenda on the swapped-in page has the meeting.
    let agenda = wait_text(&c, "#agenda", "Quarterly planning", Duration::from_secs(10)).await;
    assert!(agenda.contains("BUSY"), "{agenda}");
    screenshot(&c, "manager-applied.png").await;

    // The week view.
    c.goto(&proxy.url("/week?start=2027-03-15")).await.unwrap();
    wait_text(
        &c,
        "#week",
        "09:00 – 10:00 Quarterly planning",
        Duration::from_secs(10),
    )
    .await;
    screenshot(&c, "manager-week.png").await;

    c.close().await.unwrap();
    drop(driver);
    eprintln!("browser test took {:?}", started.elapsed());
}
