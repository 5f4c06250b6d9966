//! Sharing free/busy in `imip-manager` (issue 16's optional page), through
//! the real binaries: Alice has a busy meeting; Bob cannot see her week
//! (`/week?user=alice@…`) until she turns sharing on, and gets the same 404
//! for it as for an address nobody uses; a POST without her CSRF token, or
//! with someone else's, changes nothing; once she shares, Bob sees her busy
//! period and nothing of the event (no summary, no UID); when she stops, the
//! 404 is back. The shared page is escaped and carries the headers of every
//! page; with `IMIP_DB_LAYOUT=list` the sharing row lands in her partition's
//! child table; in development mode the colleague form and the week links
//! keep the picked user (`?as=`).

use imipflow_tests::manager_http::{bob_invited, client, csrf_of, form, page, post_form};
use imipflow_tests::smtp_sink::Sink;
use imipflow_tests::{Manager, PLANNING_UID, TestEnv, free_port};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
/// An address no message ever named.
const NOBODY: &str = "nobody@example.com";
/// Alice's week (her meeting is Tuesday 16 March 2027, 09:00–10:00 UTC).
const START: &str = "start=2027-03-16";

/// `POST /sharing` as `user` with `fields`: the status and the `Location`.
async fn post_sharing(m: &Manager, user: &str, fields: &[(&str, &str)]) -> (u16, String) {
    let r = post_form(m, "/sharing", Some(user), form(fields)).await;
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), location)
}

/// Bob's view of `whose` week: status and body.
async fn bobs_view_of(m: &Manager, whose: &str) -> (u16, String) {
    let q: String = form(&[("user", whose)]);
    page(m, &format!("/week?{q}&{START}"), BOB).await
}

/// The `freebusy_shares` rows: (partition, user).
async fn shares(env: &TestEnv) -> Vec<(i32, String)> {
    env.pg()
        .await
        .query(
            "SELECT partition, user_addr FROM freebusy_shares ORDER BY 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The headers every page carries: no frames, no caching, declared type.
async fn assert_page_headers(m: &Manager, path: &str, user: &str, status: u16) {
    let r = client()
        .get(m.url(path))
        .header("X-Remote-User", user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), status, "{path}");
    let h = r.headers();
    let get = |name: &str| {
        h.get(name)
            .unwrap_or_else(|| panic!("{path}: no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(get("x-frame-options"), "DENY", "{path}");
    assert!(
        get("content-security-policy").contains("frame-ancestors 'none'"),
        "{path}"
    );
    assert_eq!(get("cache-control"), "no-store", "{path}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{path}");
    assert!(get("content-type").starts_with("text/html"), "{path}");
}

#[tokio::test]
async fn a_colleague_sees_only_what_is_shared_and_only_while_it_is() {
    let (env, _p, sink, m) = bob_invited(ALICE, BOB).await;

    // Alice's own week: her meeting, sharing off, the two forms.
    let (status, own) = page(&m, &format!("/week?{START}"), ALICE).await;
    assert_eq!(status, 200);
    assert!(own.contains("09:00 – 10:00 Quarterly planning"), "{own}");
    assert!(
        own.contains(
            "Share my free/busy with other users of this calendar: \
             <strong id=\"sharing-state\">off</strong>"
        ),
        "{own}"
    );
    assert!(own.contains("<form id=\"colleague\" method=\"get\" action=\"/week\">"));
    assert!(own.contains("name=\"user\""), "{own}");

    // Not shared yet: the same 404 as for nobody's address and for no address.
    let (status, not_shared) = bobs_view_of(&m, ALICE).await;
    assert_eq!(status, 404, "{not_shared}");
    assert!(not_shared.contains("Not shared"), "{not_shared}");
    assert!(!not_shared.contains("Quarterly planning"), "{not_shared}");
    assert!(!not_shared.contains("09:00"), "{not_shared}");
    let (status, unknown) = bobs_view_of(&m, NOBODY).await;
    assert_eq!((status, &unknown), (404, &not_shared));
    let (status, garbage) = bobs_view_of(&m, "<script>alert(1)</script>").await;
    assert_eq!((status, &garbage), (404, &not_shared));
    assert!(!garbage.contains("<script>alert"), "{garbage}");

    // Turning it on needs Alice's own token, in the body.
    let alices = csrf_of(&own);
    let bobs = csrf_of(&page(&m, "/week", BOB).await.1);
    assert_ne!(alices, bobs);
    let wrong = "0".repeat(alices.len());
    for fields in [
        vec![("share", "on")],
        vec![("share", "on"), ("csrf", wrong.as_str())],
        vec![("share", "on"), ("csrf", bobs.as_str())],
    ] {
        assert_eq!(post_sharing(&m, ALICE, &fields).await.0, 403, "{fields:?}");
    }
    // Neither does a GET, nor a value other than on/off.
    let r = client()
        .get(m.url(&format!("/sharing?share=on&csrf={alices}")))
        .header("X-Remote-User", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        post_sharing(&m, ALICE, &[("share", "yes"), ("csrf", &alices)])
            .await
            .0,
        400
    );
    assert_eq!(shares(&env).await, vec![], "nothing changed");
    assert_eq!(bobs_view_of(&m, ALICE).await, (404, not_shared.clone()));

    assert_eq!(
        post_sharing(&m, ALICE, &[("share", "on"), ("csrf", &alices)]).await,
        (303, "/week".to_owned())
    );
    assert_eq!(
        shares(&env).await,
        vec![(env.partition_of(ALICE), ALICE.to_owned())]
    );
    let (_, own) = page(&m, "/week", ALICE).await;
    assert!(
        own.contains("<strong id=\"sharing-state\">on</strong>"),
        "{own}"
    );

    // Bob sees her busy period, and nothing of the meeting.
    let (status, shared) = bobs_view_of(&m, ALICE).await;
    assert_eq!(status, 200, "{shared}");
    assert!(
        shared.contains("Free/busy of alice@example.com, week of Mon 15 Mar 2027"),
        "{shared}"
    );
    assert!(shared.contains("09:00 – 10:00 BUSY"), "{shared}");
    for secret in ["Quarterly planning", PLANNING_UID, "invite@x"] {
        assert!(!shared.contains(secret), "{secret} in {shared}");
    }
    // Her address in any case and form is her week; the weeks around it
    // stay hers.
    assert_eq!(
        bobs_view_of(&m, "mailto:Alice@EXAMPLE.com").await,
        (200, shared.clone())
    );
    assert!(
        shared.contains("href=\"/week?user=alice%40example.com&#38;start=2027-03-08\""),
        "{shared}"
    );
    // Bob's own week is still his own (the invitation is pending, not busy).
    let (_, bobs_week) = page(&m, &format!("/week?{START}"), BOB).await;
    assert!(!bobs_week.contains("Free/busy of"), "{bobs_week}");
    assert!(!bobs_week.contains("09:00 – 10:00"), "{bobs_week}");
    // Headers as for every page, on the shared week and on the 404.
    let alice_q = form(&[("user", ALICE)]);
    let nobody_q = form(&[("user", NOBODY)]);
    assert_page_headers(&m, &format!("/week?{alice_q}&{START}"), BOB, 200).await;
    assert_page_headers(&m, &format!("/week?{nobody_q}"), BOB, 404).await;

    // Off again: the same 404 as before.
    assert_eq!(
        post_sharing(&m, ALICE, &[("share", "off"), ("csrf", &alices)]).await,
        (303, "/week".to_owned())
    );
    assert_eq!(shares(&env).await, vec![]);
    assert_eq!(bobs_view_of(&m, ALICE).await, (404, not_shared));
    assert!(sink.received().is_empty(), "sharing sends no mail");
}

#[tokio::test]
async fn a_shared_week_is_escaped() {
    let env = TestEnv::new().await;
    let sink = Sink::start().await;
    let m = env
        .start_manager_with(free_port(), |c| {
            c.env("IMIP_MANAGER_SMTP_URL", sink.url());
        })
        .await;
    // A valid address with HTML's special characters in its local part.
    let odd = "o'neil&co@example.com";
    let (_, own) = page(&m, "/week", odd).await;
    let token = csrf_of(&own);
    assert_eq!(
        post_sharing(&m, odd, &[("share", "on"), ("csrf", &token)])
            .await
            .0,
        303
    );
    let (status, shared) = bobs_view_of(&m, odd).await;
    assert_eq!(status, 200, "{shared}");
    assert!(!shared.contains("neil&co"), "{shared}");
    assert!(
        shared.contains("Free/busy of o&#39;neil&#38;co@example.com"),
        "{shared}"
    );
    assert!(
        shared.contains("href=\"/week?user=o%27neil%26co%40example.com&#38;start="),
        "{shared}"
    );
    assert!(shared.contains("<td>free</td>"), "{shared}");
}

#[tokio::test]
async fn with_the_list_layout_a_share_is_a_row_of_its_users_partition() {
    let env = TestEnv::with_layout("list", 4).await;
    let db = env.pg().await;
    let partitioned: bool = db
        .query_one(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = 'freebusy_shares'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(partitioned, "freebusy_shares is LIST-partitioned");
    let sink = Sink::start().await;
    let m = env
        .start_manager_with(free_port(), |c| {
            c.env("IMIP_MANAGER_SMTP_URL", sink.url());
        })
        .await;
    let token = csrf_of(&page(&m, "/week", ALICE).await.1);
    assert_eq!(
        post_sharing(&m, ALICE, &[("share", "on"), ("csrf", &token)])
            .await
            .0,
        303
    );
    let child: String = db
        .query_one(
            "SELECT tableoid::regclass::text FROM freebusy_shares WHERE user_addr = $1",
            &[&ALICE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        child,
        format!("freebusy_shares_p{}", env.partition_of(ALICE))
    );
    let (status, shared) = bobs_view_of(&m, ALICE).await;
    assert_eq!(status, 200, "{shared}");
}

#[tokio::test]
async fn in_development_mode_the_colleague_form_keeps_the_picked_user() {
    let env = TestEnv::new().await;
    let sink = Sink::start().await;
    let m = env
        .start_manager_with(free_port(), |c| {
            c.env("IMIP_MANAGER_SMTP_URL", sink.url())
                .env("IMIP_MANAGER_DEV_PICK_USER", "1");
        })
        .await;
    let get = async |path: &str| {
        let r = client().get(m.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (_, alices) = get("/week?as=alice%40example.com").await;
    let r = post_form(
        &m,
        "/sharing?as=alice%40example.com",
        None,
        form(&[("share", "on"), ("csrf", &csrf_of(&alices))]),
    )
    .await;
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/week?as=alice%40example.com");

    // Bob's form carries his `as`, as the GET of a form replaces the query.
    let (_, bobs) = get("/week?as=bob%40example.org").await;
    assert!(
        bobs.contains("<input type=\"hidden\" name=\"as\" value=\"bob@example.org\">"),
        "{bobs}"
    );
    let (status, shared) = get("/week?as=bob%40example.org&user=alice%40example.com").await;
    assert_eq!(status, 200, "{shared}");
    assert!(shared.contains("signed in as bob@example.org"), "{shared}");
    assert!(
        shared.contains("Free/busy of alice@example.com"),
        "{shared}"
    );
    assert!(
        shared
            .contains("href=\"/week?as=bob%40example.org&#38;user=alice%40example.com&#38;start="),
        "{shared}"
    );
}
