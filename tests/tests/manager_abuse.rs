//! `imip-manager` as an attacker (and a broken proxy) sees it, through the
//! real binaries: the processor, the manager, the harness's SMTP sink, and
//! `imip-ingest` for what the sink receives (issue 16).
//!
//! Each test is one class of attack of docs/manager.md's "Attacks at a
//! glance": the pages cannot be framed and carry safe headers; the user
//! header has one defined meaning (401 or the normalized user) however the
//! proxy mangles it; the CSRF token is the user's, never in a URL, and GET
//! changes nothing; hostile invitation content (markup, header injection,
//! 100 KB, UIDs with `/`, `..`, `%2F`, `?`, `#`, spaces, Unicode, escaped
//! newlines) is escaped on the page, answerable from its form, and cannot
//! add a recipient or a header to the REPLY, which stays valid iCalendar and
//! applies; a huge body is 413 before it is read, event streams are capped
//! per user (429), malformed fields are 400; `?as=` means nothing unless
//! development mode is on.

use imipflow_tests::manager_http::{
    bob_invited, client, csrf_of, form, page, post_answer, post_form, queue,
};
use imipflow_tests::smtp_sink::{Received, Sink};
use imipflow_tests::{
    MANAGER_ADDRESS, Manager, PLANNING_UID as UID, TestEnv, deliver_invitation, free_port, vevent,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.net";

/// The per-user cap on open event streams (docs/manager.md).
const STREAMS_PER_USER: usize = 16;

/// Processor, Bob's pending "Quarterly planning", a sink and a manager.
async fn setup() -> (TestEnv, imipflow_tests::Processor, Sink, Manager) {
    bob_invited(ALICE, BOB).await
}

/// What HTML escaping made of a text (askama's escapes), undone.
fn unescape(s: &str) -> String {
    s.replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#38;", "&")
        .replace("&amp;", "&")
}

/// Every value of attribute `name` in `html`, unescaped.
fn attributes(html: &str, name: &str) -> Vec<String> {
    let at = format!(" {name}=\"");
    html.match_indices(&at)
        .map(|(i, _)| {
            let rest = &html[i + at.len()..];
            unescape(&rest[..rest.find('"').unwrap()])
        })
        .collect()
}

/// One form of a page: its action and its hidden fields.
#[derive(Debug)]
struct PageForm {
    action: String,
    fields: Vec<(String, String)>,
}

fn forms(html: &str) -> Vec<PageForm> {
    html.split("<form")
        .skip(1)
        .map(|f| {
            let f = &f[..f.find("</form>").expect("form closed")];
            let action = attributes(f, "action").remove(0);
            let fields = f
                .split("<input")
                .skip(1)
                .map(|i| {
                    (
                        attributes(i, "name").remove(0),
                        attributes(i, "value").remove(0),
                    )
                })
                .collect();
            PageForm { action, fields }
        })
        .collect()
}

/// The page-wide headers every response carries.
fn assert_safe_headers(what: &str, r: &reqwest::Response) {
    let h = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{what}: no {name} header in {:?}", r.headers()))
    };
    let csp = h("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    let script = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src"))
        .unwrap_or_else(|| panic!("{what}: no script-src in {csp}"));
    assert!(!script.contains("unsafe"), "{what}: {csp}");
    assert_eq!(h("x-frame-options"), "DENY", "{what}");
    assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
    let referrer = h("referrer-policy");
    assert!(
        ["no-referrer", "same-origin"].contains(&referrer.as_str()),
        "{what}: {referrer}"
    );
}

fn assert_no_store(what: &str, r: &reqwest::Response) {
    let cc = r
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        cc.contains("no-store") || (cc.contains("private") && cc.contains("no-cache")),
        "{what}: cache-control {cc:?}"
    );
}

#[tokio::test]
async fn pages_cannot_be_framed_and_are_not_cached() {
    let (_env, _p, _sink, m) = setup().await;
    let c = client();
    let mut script_src = Vec::new();
    for path in ["/", "/week", "/week?start=2027-03-16"] {
        let r = c
            .get(m.url(path))
            .header("X-Remote-User", BOB)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert_safe_headers(path, &r);
        assert_no_store(path, &r);
        let html = r.text().await.unwrap();
        // The policy allows no inline script, so the page has none: every
        // <script> loads its code from the manager itself.
        for s in html.split("<script").skip(1) {
            let tag = &s[..s.find('>').unwrap()];
            assert!(tag.contains(" src=\"/"), "{path}: inline script {tag}");
            assert!(s[s.find('>').unwrap() + 1..].starts_with("</script>"));
        }
        script_src.extend(attributes(&html, "src"));
        // Nor any inline style attribute or element for a style-src 'self'.
        assert!(!html.contains("<style"), "{path}");
        assert!(!html.contains(" style=\""), "{path}");
    }
    assert!(!script_src.is_empty(), "the page's live updates are gone");
    // The script and style the page loads are served, with a type nosniff
    // accepts.
    let html = page(&m, "/", BOB).await.1;
    for (url, kind) in script_src.iter().map(|s| (s.clone(), "javascript")).chain(
        attributes(&html, "href")
            .into_iter()
            .filter(|h| h.ends_with(".css"))
            .map(|h| (h, "css")),
    ) {
        let r = c.get(m.url(&url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{url}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(&format!("text/{kind}")), "{url}: {ct}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{url}");
    }

    // The event stream: personal too.
    let r = c
        .get(m.url("/events"))
        .header("X-Remote-User", BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_safe_headers("/events", &r);
    assert_no_store("/events", &r);
    drop(r);

    // Refusals and answers carry them as well.
    let r = c.get(m.url("/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_safe_headers("401", &r);
    let r = post_form(
        &m,
        &format!("/requests/{UID}/answer"),
        Some(BOB),
        "partstat=ACCEPTED",
    )
    .await;
    assert_eq!(r.status().as_u16(), 403);
    assert_safe_headers("403", &r);
    assert_no_store("403", &r);
}

#[tokio::test]
async fn the_user_header_means_one_user_or_401() {
    let (env, _p, sink, m) = setup().await;
    let c = client();
    let status_of = |headers: Vec<reqwest::header::HeaderValue>| {
        let c = c.clone();
        let url = m.url("/");
        async move {
            let mut req = c.get(url);
            for v in headers {
                req = req.header("X-Remote-User", v);
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let value = |s: &[u8]| reqwest::header::HeaderValue::from_bytes(s).unwrap();

    // A proxy that appends its header to the client's: two users, believe
    // neither (the first would be the client's own choice).
    let (status, body) = status_of(vec![value(CAROL.as_bytes()), value(BOB.as_bytes())]).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = status_of(vec![value(BOB.as_bytes()), value(BOB.as_bytes())]).await;
    assert_eq!(status, 401, "{body}");
    let bads: Vec<Vec<u8>> = vec![
        format!("{CAROL}, {BOB}").into(),
        format!("{CAROL},{BOB}").into(),
        format!("{CAROL};{BOB}").into(),
        format!("Carol <{CAROL}>").into(),
        format!("{CAROL} {BOB}").into(),
        b"".to_vec(),
        b"   ".to_vec(),
        b"\t".to_vec(),
        b"bob".to_vec(),
        b"@example.org".to_vec(),
        b"bob@".to_vec(),
        b"bob@@example.org".to_vec(),
        b"not an address".to_vec(),
        b"bob\xff@example.org".to_vec(),
        "b\u{f6}b@example.org".into(),
        b"\xc3\x28@example.org".to_vec(),
    ];
    for bad in &bads {
        let (status, body) = status_of(vec![value(bad)]).await;
        assert_eq!(status, 401, "{:?}: {body}", String::from_utf8_lossy(bad));
    }

    // Case and a mailto: or <> form name the same user as the store does
    // (imipflow_schema::normalize_address): Bob, with his request and his
    // token.
    let bobs = csrf_of(&page(&m, "/", BOB).await.1);
    for same in [
        "Bob@Example.ORG",
        "BOB@EXAMPLE.ORG",
        "mailto:bob@example.org",
        "<bob@example.org>",
        "  bob@example.org  ",
    ] {
        let (status, html) = status_of(vec![value(same.as_bytes())]).await;
        assert_eq!(status, 200, "{same}: {html}");
        assert!(
            html.contains("signed in as bob@example.org"),
            "{same}: {html}"
        );
        assert!(html.contains("Quarterly planning"), "{same}: {html}");
        assert_eq!(csrf_of(&html), bobs, "{same}");
    }
    // A user of another name has another token, and Bob's is refused for her.
    let carols = csrf_of(&page(&m, "/", "Carol@Example.NET").await.1);
    assert_ne!(carols, bobs);
    assert_eq!(
        post_answer(
            &m,
            UID,
            Some(CAROL),
            &[("partstat", "ACCEPTED"), ("csrf", &bobs)]
        )
        .await,
        403
    );
    // A refused header answers nothing either.
    let r = c
        .post(m.url(&format!("/requests/{UID}/answer")))
        .header("X-Remote-User", CAROL)
        .header("X-Remote-User", BOB)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&[("partstat", "ACCEPTED"), ("csrf", &bobs)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    sink.assert_nothing_sent().await;

    // Bob in capitals answers as bob@example.org.
    assert_eq!(
        post_answer(
            &m,
            UID,
            Some("BOB@Example.Org"),
            &[("partstat", "ACCEPTED"), ("csrf", &bobs)]
        )
        .await,
        303
    );
    let got = sink.wait_for(2).await;
    let mut envelopes: Vec<_> = got
        .iter()
        .map(|r| (r.sender.clone(), r.recipients.clone()))
        .collect();
    envelopes.sort();
    assert_eq!(
        envelopes,
        vec![
            (BOB.to_owned(), vec![ALICE.to_owned()]),
            (MANAGER_ADDRESS.to_owned(), vec![BOB.to_owned()]),
        ]
    );
    assert_eq!(
        queue(&env, BOB).await.len(),
        1,
        "applied only when ingested"
    );
}

#[tokio::test]
async fn the_token_is_never_in_a_url_and_get_changes_nothing() {
    let (env, _p, sink, m) = setup().await;
    let c = client();
    let (_, html) = page(&m, "/", BOB).await;
    let token = csrf_of(&html);
    let (_, week) = page(&m, "/week", BOB).await;
    for url in ["href", "action", "src"]
        .iter()
        .flat_map(|a| attributes(&html, a).into_iter().chain(attributes(&week, a)))
    {
        assert!(!url.contains(&token), "the token in {url}");
        assert!(!url.contains("csrf"), "{url}");
    }
    // GET, HEAD and other methods on the answer URL, with the token in the
    // query string, change nothing.
    let url = m.url(&format!(
        "/requests/{UID}/answer?partstat=ACCEPTED&csrf={token}"
    ));
    for method in [
        reqwest::Method::GET,
        reqwest::Method::HEAD,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let r = c
            .request(method.clone(), &url)
            .header("X-Remote-User", BOB)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405, "{method}");
    }
    // A POST whose token is in the URL only is refused: the token is taken
    // from the body, so it never has to be in a URL.
    let r = c
        .post(&url)
        .header("X-Remote-User", BOB)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("partstat=ACCEPTED")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // Nor does the answer's redirect carry it.
    let r = post_form(
        &m,
        &format!("/requests/{UID}/answer"),
        Some(BOB),
        form(&[("partstat", "TENTATIVE"), ("csrf", &token)]),
    )
    .await;
    assert_eq!(r.status().as_u16(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(!location.contains(&token), "{location}");
    let got = sink.wait_for(2).await;
    assert!(got.iter().all(|r| r.data.contains("PARTSTAT=TENTATIVE")));
    assert_eq!(got.len(), 2, "only the POST sent anything: {got:?}");
    assert_eq!(queue(&env, BOB).await.len(), 1);
}

/// Hostile invitations Alice sends Bob: (UID as stored, VEVENT lines).
fn hostile() -> Vec<(&'static str, String, Vec<String>)> {
    let big = "A".repeat(50_000) + &"é".repeat(25_000);
    let base = |uid_line: &str, summary: &str, more: &[&str]| {
        let mut lines = vec![
            uid_line.to_owned(),
            "SEQUENCE:0".to_owned(),
            "DTSTAMP:20270101T000000Z".to_owned(),
            "DTSTART:20270420T090000Z".to_owned(),
            "DTEND:20270420T100000Z".to_owned(),
            format!("SUMMARY:{summary}"),
            format!("ATTENDEE;PARTSTAT=ACCEPTED:mailto:{ALICE}"),
        ];
        lines.extend(more.iter().map(|s| s.to_string()));
        vevent(&lines.iter().map(String::as_str).collect::<Vec<_>>())
    };
    vec![
        (
            "markup",
            "path/../x?y=1#z %2F ü☃ end".to_owned(),
            base(
                "UID:path/../x?y=1#z %2F ü☃ end",
                "<script>alert(1)</script>\"><img src=x onerror=alert(2)>",
                &[
                    "LOCATION:<iframe src=//evil.example>",
                    "ORGANIZER;CN=\"<b onmouseover=alert(3)>Alice</b>\":mailto:alice@example.com",
                    "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=\"<i>Bob</i>\":mailto:bob@example.org",
                ],
            ),
        ),
        (
            "dot-dot",
            "..".to_owned(),
            base(
                "UID:..",
                "Hi\\nBcc: victim@evil.example\\r\\nX-Injected: yes",
                &[
                    "ORGANIZER;CN=\"Alice^nBcc: victim@evil.example\":mailto:alice@example.com",
                    "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=\"Bob^nX-Injected: yes\":mailto:bob@example.org",
                ],
            ),
        ),
        (
            "escaped",
            "inj\nX-INJECTED:1, ;\\x".to_owned(),
            base(
                "UID:inj\\nX-INJECTED:1\\, \\;\\\\x",
                "Newline\\nATTENDEE;PARTSTAT=ACCEPTED:mailto:carol@example.net",
                &[
                    "ORGANIZER;CN=Alice:mailto:alice@example.com",
                    "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.org",
                ],
            ),
        ),
        (
            "big",
            "big@example.com".to_owned(),
            base(
                "UID:big@example.com",
                &big,
                &[
                    "ORGANIZER;CN=Alice:mailto:alice@example.com",
                    "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.org",
                ],
            ),
        ),
    ]
}

/// The decoded text/calendar body of a received message, and its header
/// names (what a mail client would see).
fn parsed(r: &Received) -> (Vec<String>, String) {
    let msg = mail_parser::MessageParser::default()
        .parse(r.data.as_bytes())
        .unwrap_or_else(|| panic!("unparsable message:\n{}", r.data));
    let names = msg
        .headers()
        .iter()
        .map(|h| h.name().to_ascii_lowercase())
        .collect();
    let body = msg
        .body_text(0)
        .map(|b| b.into_owned())
        .or_else(|| {
            msg.part(0)
                .and_then(|p| p.text_contents())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (names, body)
}

#[tokio::test]
async fn hostile_invitation_content_is_escaped_answerable_and_injects_nothing() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[("IMIP_MANAGER_ADDRESSES", MANAGER_ADDRESS)]);
    let cases = hostile();
    for (i, (_, _, lines)) in cases.iter().enumerate() {
        deliver_invitation(&env, ALICE, BOB, &format!("hostile-{i}@x"), lines.clone()).await;
    }
    let pending: Vec<String> = queue(&env, BOB)
        .await
        .iter()
        .map(|e| e["uid"].as_str().unwrap().to_owned())
        .collect();
    for (name, uid, _) in &cases {
        assert!(
            pending.contains(uid),
            "{name}: {uid:?} not pending: {pending:?}"
        );
    }
    let sink = Sink::start().await;
    let m = env
        .start_manager_with(free_port(), |c| {
            c.env("IMIP_MANAGER_SMTP_URL", sink.url());
        })
        .await;
    let (status, html) = page(&m, "/", BOB).await;
    assert_eq!(status, 200);
    // The markup is shown as text, never as markup.
    for raw in [
        "<script>alert",
        "<img",
        "<iframe",
        "<b onmouseover",
        "<i>Bob",
        "onerror=alert(2)>",
    ] {
        assert!(!html.contains(raw), "{raw} unescaped");
    }
    // ... but as the text it is.
    let text = unescape(&html);
    let shown = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";
    assert!(text.contains(shown), "{shown} not shown in {html}");
    assert!(
        html.contains(&"A".repeat(50_000)),
        "the long summary is shown"
    );

    // Each request's Accept form, as a browser submits it (the URL
    // normalised as browsers do), answers that request.
    let accept: Vec<PageForm> = forms(&html)
        .into_iter()
        .filter(|f| {
            f.fields
                .iter()
                .any(|(k, v)| k == "partstat" && v == "ACCEPTED")
        })
        .collect();
    assert_eq!(accept.len(), cases.len(), "{accept:?}");
    for f in &accept {
        let fields: Vec<(&str, &str)> = f
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = post_form(&m, &f.action, Some(BOB), form(&fields)).await;
        assert_eq!(
            r.status().as_u16(),
            303,
            "{f:?}: {}",
            r.text().await.unwrap()
        );
    }
    let got = sink.wait_for(2 * cases.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = {
        let again = sink.received();
        assert_eq!(again.len(), got.len(), "{again:?}");
        again
    };
    assert_eq!(got.len(), 2 * cases.len());
    let allowed = [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    ];
    let mut uids_replied = Vec::new();
    for r in &got {
        // Exactly the two intended envelopes, one recipient each.
        assert!(
            (r.sender == BOB && r.recipients == [ALICE])
                || (r.sender == MANAGER_ADDRESS && r.recipients == [BOB]),
            "{} -> {:?}",
            r.sender,
            r.recipients
        );
        // No line of the message is longer than RFC 5322 allows.
        for line in r.data.split("\r\n") {
            assert!(line.len() <= 998, "a {}-octet line", line.len());
        }
        let (names, ics) = parsed(r);
        for n in &names {
            assert!(
                allowed.contains(&n.as_str()),
                "header {n} in\n{}",
                r.headers()
            );
        }
        assert_eq!(names.iter().filter(|n| *n == "to").count(), 1);
        assert!(
            !r.headers().to_ascii_lowercase().contains("\nbcc"),
            "{}",
            r.headers()
        );
        // The REPLY: CRLF lines of at most 75 octets, one UID and one
        // ATTENDEE (Bob's), nothing injected.
        assert!(ics.ends_with("\r\n"), "{ics:?}");
        for line in ics.trim_end_matches("\r\n").split("\r\n") {
            assert!(line.len() <= 75, "{line:?}");
            assert!(!line.contains(['\r', '\n']), "{line:?}");
        }
        let unfolded = ics.replace("\r\n ", "");
        let lines: Vec<&str> = unfolded.split("\r\n").collect();
        let uid_lines: Vec<&&str> = lines.iter().filter(|l| l.starts_with("UID")).collect();
        assert_eq!(uid_lines.len(), 1, "{unfolded}");
        let attendees: Vec<&&str> = lines.iter().filter(|l| l.starts_with("ATTENDEE")).collect();
        assert_eq!(attendees.len(), 1, "{unfolded}");
        assert!(
            attendees[0].ends_with(":mailto:bob@example.org"),
            "{unfolded}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.to_ascii_uppercase().starts_with("X-INJECTED")),
            "{unfolded}"
        );
        assert!(!unfolded.contains("carol"), "{unfolded}");
        uids_replied.push(uid_lines[0].to_string());
    }
    uids_replied.sort();
    uids_replied.dedup();
    assert_eq!(uids_replied.len(), cases.len(), "{uids_replied:?}");

    // The REPLYs are valid iCalendar that say the right UID: ingested as the
    // MTA would deliver them, they apply, and each request is answered.
    for r in &got {
        let out = env
            .ingest(
                &[
                    "--direction",
                    "incoming",
                    "--sender",
                    &r.sender,
                    "--recipient",
                    &r.recipients[0],
                ],
                r.data.as_bytes(),
            )
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    env.wait_applied().await;
    assert!(
        queue(&env, BOB).await.is_empty(),
        "{:?}",
        queue(&env, BOB).await
    );
    for (name, uid, _) in &cases {
        let object = env.ctl_json(&["object", ALICE, uid]).await;
        let bob = object["attendees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["address"] == BOB)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {object:#}"));
        assert_eq!(bob["partstat"], "ACCEPTED", "{name}: {object:#}");
    }
}

/// Sends `head` and then (if any) a body of `body_len` bytes in chunks by
/// `chunked` framing or raw, stopping when the server answers; returns the
/// status line, how long it took, and how much of the body went out.
async fn raw_post(
    port: u16,
    head: String,
    body_len: usize,
    chunked: bool,
) -> (String, Duration, usize) {
    let sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut r, mut w) = sock.into_split();
    let started = Instant::now();
    w.write_all(head.as_bytes()).await.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        while counter.load(Ordering::SeqCst) < body_len {
            let ok = if chunked {
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(&chunk);
                framed.extend_from_slice(b"\r\n");
                w.write_all(&framed).await
            } else {
                w.write_all(&chunk).await
            };
            if ok.is_err() {
                return;
            }
            counter.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        // The rest of the body is never sent: the server must not wait for it.
        std::future::pending::<()>().await;
    });
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), r.read(&mut buf))
        .await
        .expect("no answer within 20 s")
        .unwrap();
    let took = started.elapsed();
    writer.abort();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let status = text.lines().next().unwrap_or("").to_owned();
    (status, took, sent.load(Ordering::SeqCst))
}

#[tokio::test]
async fn huge_bodies_many_streams_and_malformed_fields_are_refused() {
    let (env, _p, sink, m) = setup().await;
    let token = csrf_of(&page(&m, "/", BOB).await.1);
    let path = format!("/requests/{UID}/answer");
    let ten_mb = 10 * 1024 * 1024;

    // A declared 10 MB: 413 at once, of which only a little is ever sent.
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nX-Remote-User: {BOB}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {ten_mb}\r\n\r\n\
         csrf={token}&partstat=ACCEPTED&x="
    );
    let (status, took, _) = raw_post(m.port, head, 0, false).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A chunked body of no declared length: 413 once it passes the limit,
    // long before 10 MB went out.
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nX-Remote-User: {BOB}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let (status, _, sent) = raw_post(m.port, head, ten_mb, true).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert!(sent < ten_mb, "{sent} bytes read before refusing");

    // Malformed fields: 400, nothing sent.
    for (rid, partstat) in [
        ("2027-13-45T99:00:00Z", "ACCEPTED"),
        ("tomorrow", "ACCEPTED"),
        ("20270316T090000Z", "ACCEPTED"),
        ("", "accepted"),
        ("", "NEEDS-ACTION"),
        ("", "DELEGATED"),
        ("", ""),
        ("", "ACCEPTED\r\nBcc: victim@evil.example"),
    ] {
        let mut fields = vec![("csrf", token.as_str()), ("partstat", partstat)];
        if !rid.is_empty() {
            fields.push(("recurrence_id", rid));
        }
        assert_eq!(
            post_answer(&m, UID, Some(BOB), &fields).await,
            400,
            "{rid:?} {partstat:?}"
        );
    }

    // A field twice (which one would count?), and a UID that is no UTF-8
    // once decoded: refused, nothing sent.
    for body in [
        format!("csrf={token}&partstat=DECLINED&partstat=ACCEPTED"),
        format!("csrf={token}&csrf={token}&partstat=ACCEPTED"),
    ] {
        let r = post_form(&m, &path, Some(BOB), body.clone()).await;
        assert_eq!(r.status().as_u16(), 400, "{body}");
    }
    assert_eq!(
        post_answer(
            &m,
            "%FF%FE",
            Some(BOB),
            &[("csrf", &token), ("partstat", "ACCEPTED")]
        )
        .await,
        400
    );

    // Event streams: at most STREAMS_PER_USER open per user, then 429; other
    // users are not affected, and a closed stream frees its place.
    let open = |user: &'static str| {
        let url = m.url("/events");
        async move {
            client()
                .get(url)
                .header("X-Remote-User", user)
                .send()
                .await
                .unwrap()
        }
    };
    let mut streams = Vec::new();
    for i in 0..STREAMS_PER_USER {
        let r = open(BOB).await;
        assert_eq!(r.status().as_u16(), 200, "stream {i}");
        streams.push(r);
    }
    let r = open("Bob@Example.ORG").await;
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.text().await.unwrap().contains("16"), "the limit is said");
    let carols = open(CAROL).await;
    assert_eq!(carols.status().as_u16(), 200);
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let r = open(BOB).await;
        if r.status().as_u16() == 200 {
            streams.push(r);
            break;
        }
        assert_eq!(r.status().as_u16(), 429);
        assert!(
            Instant::now() < deadline,
            "a closed stream still counts after 40 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(streams);

    sink.assert_nothing_sent().await;
    assert_eq!(queue(&env, BOB).await.len(), 1);
}

#[tokio::test]
async fn without_development_mode_as_is_ignored() {
    let (env, _p, sink, m) = setup().await;
    let c = client();
    for path in [
        "/?as=bob@example.org",
        "/week?as=bob@example.org",
        "/events?as=bob@example.org",
    ] {
        let r = c.get(m.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    // Signed in as Carol, ?as=bob is still Carol.
    let (status, html) = page(&m, "/?as=bob@example.org", CAROL).await;
    assert_eq!(status, 200);
    assert!(html.contains("signed in as carol@example.net"), "{html}");
    assert!(!html.contains("Quarterly planning"), "{html}");
    let carols = csrf_of(&html);
    let r = post_form(
        &m,
        &format!("/requests/{UID}/answer?as=bob@example.org"),
        Some(CAROL),
        form(&[("partstat", "ACCEPTED"), ("csrf", &carols)]),
    )
    .await;
    assert_eq!(
        r.status().as_u16(),
        404,
        "Bob's request is unknown to Carol"
    );
    let r = post_form(
        &m,
        &format!("/requests/{UID}/answer?as=bob@example.org"),
        None,
        form(&[("partstat", "ACCEPTED"), ("csrf", &carols)]),
    )
    .await;
    assert_eq!(r.status().as_u16(), 401);
    sink.assert_nothing_sent().await;
    assert_eq!(queue(&env, BOB).await.len(), 1);
}

#[tokio::test]
async fn a_week_at_the_edge_of_the_calendar_is_an_answer_not_a_crash() {
    let (_env, _p, _sink, m) = setup().await;
    for start in [
        "262143-12-31",
        "%2B262143-12-31",
        "%2B262143-12-27",
        "-262144-01-01",
        "0000-01-01",
        "9999-12-31",
        "2027-02-30",
        "%00",
        "2027-03-16%0d%0aSet-Cookie:%20x=1",
    ] {
        let r = client()
            .get(m.url(&format!("/week?start={start}")))
            .header("X-Remote-User", BOB)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{start}: no answer ({e})"));
        let status = r.status().as_u16();
        assert!(status == 200 || status == 400, "{start}: {status}");
        assert!(r.headers().get("set-cookie").is_none(), "{start}");
    }
    // And the manager still serves.
    assert_eq!(page(&m, "/", BOB).await.0, 200);
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or similar before the close is fine; keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Reaching the port directly (no proxy in between): a half-sent request is
/// closed after `IMIP_MANAGER_HEADER_TIMEOUT_MS` (slowloris), and a flood of
/// idle connections beyond `IMIP_MANAGER_MAX_CONNECTIONS` displaces the
/// oldest idle ones instead of keeping every descriptor, while a real request
/// still gets its answer.
#[tokio::test]
async fn half_sent_requests_time_out_and_idle_connections_are_capped() {
    let env = TestEnv::new().await;
    let sink = Sink::start().await;
    let port = free_port();
    let m = env
        .start_manager_with(port, |c| {
            c.env("IMIP_MANAGER_SMTP_URL", sink.url())
                .env("IMIP_MANAGER_HEADER_TIMEOUT_MS", "3000")
                .env("IMIP_MANAGER_MAX_CONNECTIONS", "4");
        })
        .await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Remote-")
        .await
        .unwrap();
    let sent = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(8)).await,
        "a half-sent request was kept open past the header timeout"
    );
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "closed before its time"
    );

    // Displaced connections are closed as the newcomers arrive, long before
    // the header timeout would close them.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = reqwest::get(m.url("/healthz")).await.expect("healthz");
    assert_eq!(r.status(), 200);
    let mut closed = 0;
    for s in &mut idle {
        if closed_within(s, Duration::from_millis(100)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 6,
        "only {closed} of 10 idle connections closed at a cap of 4"
    );
    drop(sink);
}
