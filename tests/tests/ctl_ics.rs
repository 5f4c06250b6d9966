//! `imip-ctl object --ics` through the real binaries (issue 14): it prints the
//! object as the user's calendar holds it, not the last mail. A series, a
//! CANCEL of one instance, an override's update and an attendee's REPLY are
//! applied; the print must carry the EXDATE, the overrides, the merged PARTSTATs
//! and no METHOD, re-parse with calcard and with ingest's own parser, and say
//! what `imip-ctl object --json` says. An Outlook (Exchange Online) series in
//! a Windows-named zone keeps its VTIMEZONE and the properties the semantics
//! do not model.

use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarEntry, ICalendarProperty,
};
use imipflow_ingest::Limits;
use imipflow_ingest::ical::parse_object;
use imipflow_tests::{TestEnv, fixture, imip_mail, vevent};
use serde_json::{Value, json};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
const UID: &str = "weekly-ics@example.com";

/// Thunderbird's VTIMEZONE for Europe/Berlin, as its invitations carry it.
const BERLIN: &[&str] = &[
    "BEGIN:VTIMEZONE",
    "TZID:Europe/Berlin",
    "BEGIN:DAYLIGHT",
    "TZOFFSETFROM:+0100",
    "TZOFFSETTO:+0200",
    "TZNAME:CEST",
    "DTSTART:19700329T020000",
    "RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU",
    "END:DAYLIGHT",
    "BEGIN:STANDARD",
    "TZOFFSETFROM:+0200",
    "TZOFFSETTO:+0100",
    "TZNAME:CET",
    "DTSTART:19701025T030000",
    "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU",
    "END:STANDARD",
    "END:VTIMEZONE",
];

fn with_zone(event: &[&str]) -> Vec<Vec<String>> {
    let zone: Vec<String> = BERLIN.iter().map(|l| l.to_string()).collect();
    vec![zone, vevent(event)]
}

const ORG: &str = "ORGANIZER;CN=Alice:mailto:alice@example.com";
const ME: &str = "ATTENDEE;CN=Alice;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:alice@example.com";
const BOB_INVITED: &str =
    "ATTENDEE;CN=Bob;CUTYPE=INDIVIDUAL;RSVP=TRUE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org";

async fn ingest(env: &TestEnv, args: &[&str], mail: &[u8]) {
    let out = env.ingest(args, mail).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn ics(env: &TestEnv, args: &[&str]) -> String {
    let mut all = vec!["object"];
    all.extend_from_slice(args);
    all.push("--ics");
    let out = env.run("imip-ctl", &all, b"").await;
    assert!(
        out.status.success(),
        "imip-ctl {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `text` unfolded (calcard folds at 75 octets, anywhere in a value), for
/// substring checks; the parsers read the folded text.
fn unfold(text: &str) -> String {
    text.replace("\r\n ", "").replace("\r\n\t", "")
}

/// The print as a file, the way RFC 5545 §3.1 asks: CRLF line ends, no
/// physical line over 75 octets, and every TZID a property names defined by
/// a VTIMEZONE (the parsers below would not notice a missing one: ingest
/// resolves IANA names without it).
fn assert_file_shape(text: &str) {
    assert!(text.ends_with("\r\n"), "{text}");
    for l in text[..text.len() - 2].split("\r\n") {
        assert!(!l.contains(['\r', '\n']), "bare CR or LF: {l:?}");
        assert!(l.len() <= 75, "{} octets: {l:?}", l.len());
    }
    let flat = unfold(text);
    let defined: Vec<&str> = flat
        .split("BEGIN:VTIMEZONE\r\n")
        .skip(1)
        .map(|z| {
            let at = z.find("TZID:").expect("TZID") + "TZID:".len();
            z[at..].split("\r\n").next().unwrap()
        })
        .collect();
    for (i, _) in flat.match_indices(";TZID=") {
        let v = &flat[i + ";TZID=".len()..];
        let v = match v.strip_prefix('"') {
            Some(q) => &q[..q.find('"').unwrap()],
            None => &v[..v.find([':', ';']).unwrap()],
        };
        assert!(defined.contains(&v), "no VTIMEZONE for {v}: {text}");
    }
}

/// Alice's series (Thunderbird's shape), her CANCEL of 9 March, her update
/// moving 16 March, Bob's acceptance of the series delivered to her, and his
/// answers to the instances of 16 and 23 March.
async fn history(env: &TestEnv) {
    let series = [
        &format!("UID:{UID}"),
        "SEQUENCE:0",
        "DTSTAMP:20270301T100000Z",
        "CREATED:20270301T100000Z",
        "DTSTART;TZID=Europe/Berlin:20270302T100000",
        "DTEND;TZID=Europe/Berlin:20270302T110000",
        "RRULE:FREQ=WEEKLY;COUNT=6",
        "SUMMARY:Weekly sync",
        "LOCATION:Room 4\\, second floor",
        "DESCRIPTION:Agenda:\\n1. status\\n2. plans",
        "X-MOZ-SEND-INVITATIONS:TRUE",
        ORG,
        ME,
        BOB_INVITED,
    ];
    let mail = imip_mail("REQUEST", ALICE, "s@t", &with_zone(&series));
    ingest(env, &["--sender", ALICE], &mail).await;
    let instance = |rid: &'static str, extra: &[&'static str]| {
        let mut v = vec![
            format!("UID:{UID}"),
            format!("RECURRENCE-ID;TZID=Europe/Berlin:{rid}"),
            ORG.to_owned(),
            ME.to_owned(),
            BOB_INVITED.to_owned(),
        ];
        v.extend(extra.iter().map(|l| l.to_string()));
        v
    };
    let cancel = instance(
        "20270309T100000",
        &["SEQUENCE:1", "DTSTAMP:20270302T100000Z", "STATUS:CANCELLED"],
    );
    let refs: Vec<&str> = cancel.iter().map(String::as_str).collect();
    let mail = imip_mail("CANCEL", ALICE, "c@t", &with_zone(&refs));
    ingest(env, &["--sender", ALICE], &mail).await;
    let moved = instance(
        "20270316T100000",
        &[
            "SEQUENCE:1",
            "DTSTAMP:20270303T100000Z",
            "DTSTART;TZID=Europe/Berlin:20270316T140000",
            "DTEND;TZID=Europe/Berlin:20270316T150000",
            "SUMMARY:Weekly sync (moved)",
            "LOCATION:Room 7",
        ],
    );
    let refs: Vec<&str> = moved.iter().map(String::as_str).collect();
    let mail = imip_mail("REQUEST", ALICE, "m@t", &with_zone(&refs));
    ingest(env, &["--sender", ALICE], &mail).await;
    let reply = [
        &format!("UID:{UID}"),
        "SEQUENCE:0",
        "DTSTAMP:20270304T100000Z",
        "DTSTART;TZID=Europe/Berlin:20270302T100000",
        "ORGANIZER:mailto:alice@example.com",
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.org",
    ];
    let mail = imip_mail("REPLY", BOB, "r@t", &with_zone(&reply));
    let args = [
        "--direction",
        "incoming",
        "--sender",
        BOB,
        "--recipient",
        ALICE,
    ];
    ingest(env, &args, &mail).await;
    // Then his own answers to two instances: he declines the moved one, and
    // is tentative for 23 March, which has no override yet (the semantics
    // make one from the master's instance). His client sends no VTIMEZONE
    // and writes the RECURRENCE-ID in UTC.
    for (rid, seq, stamp, partstat) in [
        ("20270316T090000Z", "1", "20270305T100000Z", "DECLINED"),
        ("20270323T090000Z", "0", "20270306T100000Z", "TENTATIVE"),
    ] {
        let answer = [
            format!("UID:{UID}"),
            format!("RECURRENCE-ID:{rid}"),
            format!("SEQUENCE:{seq}"),
            format!("DTSTAMP:{stamp}"),
            "ORGANIZER:mailto:alice@example.com".to_owned(),
            format!("ATTENDEE;PARTSTAT={partstat}:mailto:bob@example.org"),
        ];
        let refs: Vec<&str> = answer.iter().map(String::as_str).collect();
        let mail = imip_mail("REPLY", BOB, &format!("r{rid}@t"), &[vevent(&refs)]);
        ingest(env, &args, &mail).await;
    }
    env.wait_applied().await;
}

/// The calendar's top-level components by type, checked for what RFC 5545
/// requires of the VCALENDAR itself.
fn parsed(text: &str) -> (ICalendar, Vec<ICalendarComponent>, Vec<ICalendarComponent>) {
    let cal = ICalendar::parse(text).unwrap_or_else(|e| panic!("{e:?}: {text}"));
    let root = &cal.components[0];
    assert_eq!(root.component_type, ICalendarComponentType::VCalendar);
    assert!(
        root.property(&ICalendarProperty::Method).is_none(),
        "{text}"
    );
    assert!(
        root.property(&ICalendarProperty::Prodid).is_some(),
        "{text}"
    );
    assert_eq!(
        root.property(&ICalendarProperty::Version)
            .and_then(|e| e.values.first())
            .and_then(|v| v.as_text()),
        Some("2.0")
    );
    let of = |t: ICalendarComponentType| -> Vec<ICalendarComponent> {
        root.component_ids
            .iter()
            .map(|i| cal.components[*i as usize].clone())
            .filter(|c| c.component_type == t)
            .collect()
    };
    let zones = of(ICalendarComponentType::VTimezone);
    let events = of(ICalendarComponentType::VEvent);
    (cal, zones, events)
}

fn text_of(c: &ICalendarComponent, p: ICalendarProperty) -> Option<&str> {
    c.property(&p)
        .and_then(|e| e.values.first())
        .and_then(|v| v.as_text())
}

fn entries<'a>(c: &'a ICalendarComponent, p: &ICalendarProperty) -> Vec<&'a ICalendarEntry> {
    c.entries.iter().filter(|e| e.name == *p).collect()
}

/// The fields `imip-ctl object --json` shows, from the print re-parsed by
/// ingest's own parser: both must say the same of every stored object.
fn as_json_view(text: &str) -> Vec<Value> {
    let p = parse_object(text, Some("PUBLISH"), &Limits::default())
        .unwrap_or_else(|e| panic!("{e:?}: {text}"))
        .expect("components");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    p.components
        .iter()
        .map(|c| {
            let c = serde_json::to_value(c).unwrap();
            json!({
                "sequence": c["sequence"], "dtstamp": c["dtstamp"], "status": c["status"],
                "summary": c["summary"], "start": c["start"], "end": c["end"],
                "rrule": c["rrule"], "exdate": c["exdate"], "transp": c["transp"],
                "organizer": c["organizer"]["address"],
                "attendees": c["attendees"].as_array().unwrap().iter()
                    .map(|a| json!({"address": a["address"], "partstat": a["partstat"]}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// `--json`'s document without the keys the print does not repeat.
fn view(mut doc: Value) -> Value {
    for k in ["user", "uid", "recurrence_id"] {
        doc.as_object_mut().unwrap().remove(k);
    }
    doc
}

#[tokio::test]
async fn the_ics_view_is_the_stored_object_not_the_last_mail() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    history(&env).await;

    let text = ics(&env, &[ALICE, UID]).await;
    assert_file_shape(&text);
    let (_, zones, events) = parsed(&text);
    assert_eq!(zones.len(), 1, "{text}");
    assert_eq!(
        text_of(&zones[0], ICalendarProperty::Tzid),
        Some("Europe/Berlin")
    );
    assert_eq!(events.len(), 3, "the master and two overrides: {text}");
    let (master, moved, tentative) = (&events[0], &events[1], &events[2]);
    assert!(master.property(&ICalendarProperty::RecurrenceId).is_none());
    // The overrides' RECURRENCE-IDs as the master's instances have them.
    let flat = unfold(&text);
    for rid in ["20270316T100000", "20270323T100000"] {
        assert!(
            flat.contains(&format!("\r\nRECURRENCE-ID;TZID=Europe/Berlin:{rid}\r\n")),
            "{rid}: {text}"
        );
    }
    assert!(moved.property(&ICalendarProperty::RecurrenceId).is_some());
    assert!(
        tentative
            .property(&ICalendarProperty::RecurrenceId)
            .is_some()
    );
    assert!(
        tentative.property(&ICalendarProperty::Rrule).is_none(),
        "{text}"
    );

    // The cancelled instance (09:00Z on 9 March) is excluded by EXDATE, as
    // --json lists it; the raw text of the last REQUEST had no EXDATE.
    let exdates = entries(master, &ICalendarProperty::Exdate);
    assert_eq!(exdates.len(), 1, "{text}");
    assert!(unfold(&text).contains("EXDATE:20270309T090000Z"), "{text}");
    // Bob's answers as stored: the series' in the master, each instance's own
    // in its override.
    for (e, answer) in events.iter().zip(["ACCEPTED", "DECLINED", "TENTATIVE"]) {
        let bob = entries(e, &ICalendarProperty::Attendee)
            .into_iter()
            .find(|a| a.values.first().and_then(|v| v.as_text()) == Some("mailto:bob@example.org"))
            .unwrap_or_else(|| panic!("Bob in {text}"));
        let partstat = bob
            .params
            .iter()
            .find(|p| p.name == calcard::icalendar::ICalendarParameterName::Partstat)
            .and_then(|p| p.value.as_text());
        assert_eq!(partstat, Some(answer), "{text}");
    }
    // What the semantics do not model comes from the stored mail.
    assert_eq!(
        text_of(master, ICalendarProperty::Location),
        Some("Room 4, second floor")
    );
    assert_eq!(text_of(moved, ICalendarProperty::Location), Some("Room 7"));
    // The override made from the master's instance has the master's notes.
    assert_eq!(
        text_of(tentative, ICalendarProperty::Location),
        Some("Room 4, second floor")
    );
    assert!(
        unfold(&text).contains("X-MOZ-SEND-INVITATIONS:TRUE"),
        "{text}"
    );

    // Every stored object, printed and re-parsed, says what --json says.
    let master_json = view(env.ctl_json(&["object", ALICE, UID]).await);
    let moved_json = view(
        env.ctl_json(&[
            "object",
            ALICE,
            UID,
            "--recurrence-id",
            "2027-03-16T09:00:00Z",
        ])
        .await,
    );
    let tentative_json = view(
        env.ctl_json(&[
            "object",
            ALICE,
            UID,
            "--recurrence-id",
            "2027-03-23T09:00:00Z",
        ])
        .await,
    );
    assert_eq!(master_json["exdate"][0]["utc"], "2027-03-09T09:00:00Z");
    assert_eq!(
        as_json_view(&text),
        vec![master_json, moved_json.clone(), tentative_json]
    );

    // --recurrence-id prints that instance alone, with the zone it uses.
    let one = ics(
        &env,
        &[ALICE, UID, "--recurrence-id", "2027-03-16T09:00:00Z"],
    )
    .await;
    assert_file_shape(&one);
    let (_, zones, events) = parsed(&one);
    assert_eq!((zones.len(), events.len()), (1, 1), "{one}");
    assert_eq!(as_json_view(&one), vec![moved_json]);

    let missing = env
        .run(
            "imip-ctl",
            &[
                "object",
                ALICE,
                UID,
                "--recurrence-id",
                "2027-03-09T09:00:00Z",
                "--ics",
            ],
            b"",
        )
        .await;
    assert!(
        !missing.status.success(),
        "the cancelled instance has no object"
    );
}

/// Exchange Online's invitation (Outlook 365): a weekly series in `W. Europe
/// Standard Time` with its own VTIMEZONE, an override in the same mail,
/// X-MICROSOFT-* properties, a VALARM. The print keeps the zone as Outlook
/// wrote it and says what --json says.
#[tokio::test]
async fn an_outlook_series_keeps_its_windows_zone_and_properties() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let mail = fixture("clients/outlook365-windows-zone-series.eml");
    ingest(&env, &["--sender", ALICE], &mail).await;
    env.wait_applied().await;
    let objects = env.ctl_json(&["objects", ALICE]).await;
    let uid = objects[0]["uid"].as_str().unwrap().to_owned();

    let text = ics(&env, &[ALICE, &uid]).await;
    assert_file_shape(&text);
    let (_, zones, events) = parsed(&text);
    assert_eq!(zones.len(), 1, "{text}");
    assert_eq!(
        text_of(&zones[0], ICalendarProperty::Tzid),
        Some("W. Europe Standard Time")
    );
    // The received observances, not a zone made up from the name.
    let flat = unfold(&text);
    assert!(flat.contains("DTSTART:16010101T030000"), "{text}");
    assert_eq!(events.len(), 2, "{text}");
    assert!(
        flat.contains("DTSTART;TZID=\"W. Europe Standard Time\":20270309T140000"),
        "{text}"
    );
    for kept in [
        "X-MICROSOFT-CDO-BUSYSTATUS:TENTATIVE",
        "X-MICROSOFT-CDO-OWNERAPPTID:2117788449",
        "LOCATION;LANGUAGE=en-US:Room Amsterdam",
        "LOCATION;LANGUAGE=en-US:Room Rotterdam",
        "BEGIN:VALARM",
        "PRIORITY:5",
    ] {
        assert!(flat.contains(kept), "{kept} in {text}");
    }
    assert!(
        text_of(&events[0], ICalendarProperty::Description)
            .is_some_and(|d| d.starts_with("Quarterly planning, part 1.\n\nJoin")),
        "{text}"
    );

    let master = view(env.ctl_json(&["object", ALICE, &uid]).await);
    // 30 March 14:00 in Amsterdam is after the change to summer time: 12:00Z.
    let moved = view(
        env.ctl_json(&[
            "object",
            ALICE,
            &uid,
            "--recurrence-id",
            "2027-03-30T12:00:00Z",
        ])
        .await,
    );
    assert_eq!(moved["start"]["utc"], "2027-03-30T14:00:00Z");
    assert_eq!(as_json_view(&text), vec![master, moved]);
}
