//! Driving `imip-manager` over HTTP as its tests do (tests/tests/manager.rs,
//! manager_abuse.rs): a client that shows redirects instead of following
//! them, a page as a user, an answer's POST, a page's CSRF token, and the
//! user's queue as `imip-ctl` reports it.

use crate::{Manager, TestEnv};

/// A client that does not follow redirects (the answer's 303 is checked).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `GET path` as `user` (the proxy's `X-Remote-User`): status and body.
pub async fn page(m: &Manager, path: &str, user: &str) -> (u16, String) {
    let r = client()
        .get(m.url(path))
        .header("X-Remote-User", user)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A form `body` POSTed to `path` as `user` (none: no user header), not
/// following redirects.
pub async fn post_form(
    m: &Manager,
    path: &str,
    user: Option<&str>,
    body: impl Into<String>,
) -> reqwest::Response {
    let mut req = client()
        .post(m.url(path))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.into());
    if let Some(u) = user {
        req = req.header("X-Remote-User", u);
    }
    req.send().await.unwrap()
}

/// `POST /requests/{uid}/answer` with `fields` as `user` (none: no header);
/// the status.
pub async fn post_answer(
    m: &Manager,
    uid: &str,
    user: Option<&str>,
    fields: &[(&str, &str)],
) -> u16 {
    post_form(m, &format!("/requests/{uid}/answer"), user, form(fields))
        .await
        .status()
        .as_u16()
}

/// `user`'s pending requests (`imip-ctl queue USER --json`).
pub async fn queue(env: &TestEnv, user: &str) -> Vec<serde_json::Value> {
    env.ctl_json(&["queue", user])
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// The CSRF token of a manager page (its `<meta name="csrf-token">`, which
/// every page has, forms or not).
pub fn csrf_of(html: &str) -> String {
    const AT: &str = "name=\"csrf-token\" content=\"";
    let at = html
        .find(AT)
        .unwrap_or_else(|| panic!("no CSRF token in:\n{html}"));
    let rest = &html[at + AT.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// `application/x-www-form-urlencoded` of `fields`.
pub fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A processor, Alice's pending "Quarterly planning" for Bob
/// ([`crate::invite_to_planning`]), an SMTP sink and a manager submitting to
/// it: where most manager tests start.
pub async fn bob_invited(
    alice: &str,
    bob: &str,
) -> (TestEnv, crate::Processor, crate::smtp_sink::Sink, Manager) {
    let env = TestEnv::new().await;
    let p = env.start_processor(&[("IMIP_MANAGER_ADDRESSES", crate::MANAGER_ADDRESS)]);
    crate::invite_to_planning(&env, alice, bob).await;
    let sink = crate::smtp_sink::Sink::start().await;
    let m = env
        .start_manager_with(crate::free_port(), |c| {
            c.env("IMIP_MANAGER_SMTP_URL", sink.url());
        })
        .await;
    (env, p, sink, m)
}
