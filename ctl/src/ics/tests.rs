//! `object --ics` round trips: mails parsed by ingest's own parser, applied by
//! the semantics, printed, and the print parsed again by the same parser; the
//! components that come back must be the stored ones.

use super::calendar;
use chrono::{DateTime, Duration, Utc};
use imipflow_ingest::Limits;
use imipflow_ingest::ical::{Parsed, parse_object};
use imipflow_processor::model::{Ctx, StoredObject, UidState};
use imipflow_processor::semantics;
use imipflow_schema::{Component, Direction, Payload, Zone};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";

fn z(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn ctx() -> Ctx {
    Ctx {
        default_tz: chrono_tz::UTC,
        now: z("2027-03-01T00:00:00Z"),
        horizon: Duration::days(366),
        max_instances: 1000,
        managers: vec![],
    }
}

fn parse(text: &str, method: Option<&str>) -> Parsed {
    parse_object(text, method, &Limits::default())
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"))
        .expect("a scheduling object")
}

/// `body` (VTIMEZONEs and components, CRLF lines) as a `method` object.
fn object(method: &str, body: &[&str]) -> String {
    let mut s = format!(
        "BEGIN:VCALENDAR\r\nPRODID:-//Mozilla.org/NONSGML Mozilla Calendar V1.1//EN\r\nVERSION:2.0\r\nMETHOD:{method}\r\n"
    );
    for l in body {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("END:VCALENDAR\r\n");
    s
}

/// Applies `text` to `state` as Alice's mail (`from` Alice: outgoing).
fn apply(state: &UidState, text: &str, from: &str) -> UidState {
    let p = parse(text, None);
    let payload = Payload {
        version: imipflow_schema::PAYLOAD_VERSION,
        method: p.method,
        user: ALICE.into(),
        direction: if from == ALICE {
            Direction::Outgoing
        } else {
            Direction::Incoming
        },
        sender: from.into(),
        recipients: vec![ALICE.into()],
        message_id: None,
        dedupe_id: "d".into(),
        object_index: 0,
        object_count: 1,
        ingested_at: z("2027-03-01T00:00:00Z"),
        components: p.components,
        timezones: p.timezones,
        warnings: p.warnings,
        raw: text.into(),
    };
    let out = semantics::apply(state, &payload, "weekly@example.com", &ctx());
    assert_eq!(
        out.disposition,
        imipflow_schema::Disposition::Applied,
        "{text}"
    );
    out.state
}

/// The print, unfolded (calcard folds at 75 octets, anywhere in a value), for
/// substring checks; [`assert_round_trip`] parses the folded text itself.
fn printed(state: &UidState) -> String {
    unfold(&calendar(
        &state.objects.iter().collect::<Vec<&StoredObject>>(),
    ))
}

fn unfold(text: &str) -> String {
    text.replace("\r\n ", "").replace("\r\n\t", "")
}

/// The name and parameters of a content line (`NAME;P=V;P="V:W"`), up to
/// the first colon outside quotes.
fn head_of(line: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            ':' if !quoted => break,
            ';' if !quoted => parts.push(String::new()),
            _ => parts.last_mut().unwrap().push(ch),
        }
    }
    parts
}

/// What RFC 5545 asks of the print as a file: CRLF lines of at most 75
/// octets, BEGIN/END nested in one VCALENDAR, no METHOD, `components`
/// VEVENTs/VTODOs in it, and a VTIMEZONE (one) for every TZID a line uses.
fn assert_valid(ics: &str, components: usize) {
    assert!(ics.ends_with("\r\n"), "{ics}");
    for l in ics[..ics.len() - 2].split("\r\n") {
        assert!(!l.contains(['\r', '\n']), "bare CR or LF: {l:?}");
        assert!(l.len() <= 75, "{} octets: {l:?}", l.len());
    }
    let flat = unfold(ics);
    let lines: Vec<&str> = flat[..flat.len() - 2].split("\r\n").collect();
    let (mut stack, mut defined, mut used, mut count) = (vec![], vec![], vec![], 0);
    for l in &lines {
        if let Some(c) = l.strip_prefix("BEGIN:") {
            if stack.len() == 1 && (c == "VEVENT" || c == "VTODO") {
                count += 1;
            }
            stack.push(c);
            continue;
        }
        if let Some(c) = l.strip_prefix("END:") {
            assert_eq!(stack.pop(), Some(c), "{ics}");
            continue;
        }
        let head = head_of(l);
        assert_ne!(head[0], "METHOD", "no iTIP method: {ics}");
        if head[0] == "TZID" && stack.last() == Some(&"VTIMEZONE") {
            defined.push(l["TZID:".len()..].to_owned());
        }
        used.extend(
            head[1..]
                .iter()
                .filter_map(|p| p.strip_prefix("TZID="))
                .map(str::to_owned),
        );
    }
    assert!(stack.is_empty(), "{ics}");
    assert_eq!(lines.first(), Some(&"BEGIN:VCALENDAR"), "{ics}");
    assert_eq!(lines.last(), Some(&"END:VCALENDAR"), "{ics}");
    assert_eq!(count, components, "{ics}");
    let mut unique = defined.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), defined.len(), "one VTIMEZONE per TZID: {ics}");
    for tzid in used {
        assert!(defined.contains(&tzid), "no VTIMEZONE for {tzid}: {ics}");
    }
}

/// What a stored component and its re-parsed print must agree on.
fn key(c: &Component, zones: &std::collections::BTreeMap<String, Zone>) -> String {
    let at = |t: &imipflow_schema::Time| {
        t.utc
            .or_else(|| {
                let id = t.tzid.as_deref()?;
                zones.get(id)?.to_utc(t.naive_local()?)
            })
            .map_or(t.local.clone(), |u| u.to_rfc3339())
    };
    let attendees: Vec<String> = c
        .attendees
        .iter()
        .map(|a| format!("{}={}", a.address, a.partstat))
        .collect();
    format!(
        "uid={} rid={:?} seq={} start={:?} end={:?} rrule={:?} exdate={:?} status={:?} \
         summary={:?} organizer={:?} attendees={attendees:?}",
        c.uid,
        c.recurrence_id.as_ref().map(|r| at(&r.time)),
        c.sequence,
        c.start.as_ref().map(at),
        c.end.as_ref().map(at),
        c.rrule,
        c.exdate.iter().map(at).collect::<Vec<_>>(),
        c.status,
        c.summary,
        c.organizer.as_ref().map(|o| &o.address),
    )
}

/// The folded print parses to the stored components, and has no METHOD.
fn assert_round_trip(state: &UidState) {
    let ics = calendar(&state.objects.iter().collect::<Vec<&StoredObject>>());
    assert_valid(&ics, state.objects.len());
    let back = parse(&ics, Some("PUBLISH"));
    let stored: Vec<String> = state
        .objects
        .iter()
        .map(|o| key(&o.component, &o.timezones))
        .collect();
    let again: Vec<String> = back
        .components
        .iter()
        .map(|c| key(c, &back.timezones))
        .collect();
    assert_eq!(again, stored, "{ics}");
    assert!(back.warnings.is_empty(), "{:?}\n{ics}", back.warnings);
}

const BERLIN: &[&str] = &[
    "BEGIN:VTIMEZONE",
    "TZID:Europe/Berlin",
    "X-LIC-LOCATION:Europe/Berlin",
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

/// Thunderbird's weekly series: zone, notes, place, an X- property and an alarm.
fn series() -> String {
    let event = [
        "BEGIN:VEVENT",
        "CREATED:20270301T100000Z",
        "LAST-MODIFIED:20270301T100000Z",
        "DTSTAMP:20270301T100000Z",
        "UID:weekly@example.com",
        "SUMMARY:Weekly sync",
        "ORGANIZER;CN=Alice:mailto:alice@example.com",
        "ATTENDEE;CN=Alice;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:alice@example.com",
        "ATTENDEE;CN=Bob;CUTYPE=INDIVIDUAL;RSVP=TRUE;PARTSTAT=NEEDS-ACTION;ROLE=REQ-PA",
        " RTICIPANT;X-NUM-GUESTS=0:mailto:bob@example.org",
        "RRULE:FREQ=WEEKLY;COUNT=6",
        "DTSTART;TZID=Europe/Berlin:20270302T100000",
        "DTEND;TZID=Europe/Berlin:20270302T110000",
        "LOCATION:Room 4\\, second floor",
        "DESCRIPTION:Agenda:\\n1. status\\n2. plans; more",
        "SEQUENCE:0",
        "X-MOZ-SEND-INVITATIONS:TRUE",
        "BEGIN:VALARM",
        "ACTION:DISPLAY",
        "TRIGGER;VALUE=DURATION:-PT15M",
        "DESCRIPTION:Reminder",
        "END:VALARM",
        "END:VEVENT",
    ];
    object("REQUEST", &[BERLIN, &event].concat())
}

fn instance(method: &str, rid: &str, extra: &[&str]) -> String {
    let rid_line = format!("RECURRENCE-ID;TZID=Europe/Berlin:{rid}");
    let mut event = vec![
        "BEGIN:VEVENT",
        "UID:weekly@example.com",
        &rid_line,
        "ORGANIZER;CN=Alice:mailto:alice@example.com",
        "ATTENDEE;CN=Alice;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:alice@example.com",
        "ATTENDEE;CN=Bob;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org",
    ];
    event.extend_from_slice(extra);
    event.push("END:VEVENT");
    object(method, &[BERLIN, &event].concat())
}

/// The sequence: a series, one instance cancelled, one moved, and
/// Bob's acceptance of the series.
fn history() -> UidState {
    let s = apply(&UidState::default(), &series(), ALICE);
    let s = apply(
        &s,
        &instance(
            "CANCEL",
            "20270309T100000",
            &["SEQUENCE:1", "DTSTAMP:20270302T100000Z", "STATUS:CANCELLED"],
        ),
        ALICE,
    );
    let s = apply(
        &s,
        &instance(
            "REQUEST",
            "20270316T100000",
            &[
                "SEQUENCE:1",
                "DTSTAMP:20270303T100000Z",
                "DTSTART;TZID=Europe/Berlin:20270316T140000",
                "DTEND;TZID=Europe/Berlin:20270316T150000",
                "SUMMARY:Weekly sync (moved)",
                "LOCATION:Room 7",
            ],
        ),
        ALICE,
    );
    let reply = object(
        "REPLY",
        &[
            "BEGIN:VEVENT",
            "UID:weekly@example.com",
            "DTSTAMP:20270304T100000Z",
            "SEQUENCE:0",
            "DTSTART;TZID=Europe/Berlin:20270302T100000",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.org",
            "END:VEVENT",
        ],
    );
    // Bob's client (as many do) sends no VTIMEZONE; only his answer is merged.
    apply(&s, &reply, BOB)
}

#[test]
fn the_calendars_copy_has_the_exdate_the_override_and_the_answer() {
    let state = history();
    assert_eq!(state.objects.len(), 2, "{state:#?}");
    let ics = printed(&state);
    assert_round_trip(&state);
    let master = &ics[..ics.find("RECURRENCE-ID").unwrap()];
    assert!(master.contains("EXDATE:20270309T090000Z"), "{ics}");
    assert!(
        ics.matches("ATTENDEE").count() == 4 && ics.matches("PARTSTAT=ACCEPTED").count() == 4,
        "Bob's answer in the master and the override: {ics}"
    );
    assert!(ics.contains("RECURRENCE-ID;TZID=Europe/Berlin:20270316T100000"));
    assert_eq!(ics.matches("BEGIN:VTIMEZONE").count(), 1, "{ics}");
    assert!(
        ics.starts_with("BEGIN:VCALENDAR\r\nPRODID:-//imipflow//imip-ctl//EN\r\nVERSION:2.0\r\n")
    );
}

#[test]
fn what_the_semantics_do_not_model_is_kept_from_the_stored_mail() {
    let ics = printed(&history());
    let master = &ics[..ics.find("RECURRENCE-ID").unwrap()];
    let over = &ics[ics.find("RECURRENCE-ID").unwrap()..];
    for kept in [
        "LOCATION:Room 4\\, second floor",
        "DESCRIPTION:Agenda:\\n1. status\\n2. plans\\; more",
        "X-MOZ-SEND-INVITATIONS:TRUE",
        "BEGIN:VALARM",
        "CREATED:20270301T100000Z",
        "CUTYPE=INDIVIDUAL",
        "X-NUM-GUESTS=0",
    ] {
        assert!(master.contains(kept), "{kept} in\n{master}");
    }
    // The override came by its own mail: its own place, not the master's notes.
    assert!(over.contains("LOCATION:Room 7"), "{over}");
    assert!(!over.contains("Agenda"), "{over}");
    assert!(
        !ics.contains("CANCELLED"),
        "the cancelled instance is an EXDATE: {ics}"
    );
}

#[test]
fn an_override_made_from_the_master_takes_the_masters_properties() {
    let s = apply(&UidState::default(), &series(), ALICE);
    let reply = object(
        "REPLY",
        &[
            "BEGIN:VEVENT",
            "UID:weekly@example.com",
            "RECURRENCE-ID:20270323T090000Z",
            "DTSTAMP:20270304T100000Z",
            "SEQUENCE:0",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=DECLINED:mailto:bob@example.org",
            "END:VEVENT",
        ],
    );
    let s = apply(&s, &reply, BOB);
    assert_eq!(s.objects.len(), 2);
    let ics = printed(&s);
    assert_round_trip(&s);
    let over = &ics[ics.find("RECURRENCE-ID").unwrap()..];
    assert!(over.contains("PARTSTAT=DECLINED"), "{over}");
    assert!(over.contains("LOCATION:Room 4\\, second floor"), "{over}");
    assert!(!over.contains("RRULE"), "{over}");
}

#[test]
fn one_recurrence_alone_is_a_valid_calendar() {
    let state = history();
    let over = state
        .objects
        .iter()
        .find(|o| o.recurrence_id.is_some())
        .unwrap();
    let ics = calendar(&[over]);
    assert_valid(&ics, 1);
    assert_eq!(ics.matches("BEGIN:VTIMEZONE").count(), 1);
    let back = parse(&ics, Some("PUBLISH"));
    assert_eq!(
        key(&back.components[0], &back.timezones),
        key(&over.component, &over.timezones)
    );
}

/// A sender that relied on the TZID's name (no VTIMEZONE), as some web
/// calendars do: a VTIMEZONE is made, and the instants survive DST.
#[test]
fn a_zone_known_only_by_name_gets_a_vtimezone() {
    let text = object(
        "REQUEST",
        &[
            "BEGIN:VEVENT",
            "UID:weekly@example.com",
            "DTSTAMP:20270301T100000Z",
            "DTSTART;TZID=America/New_York:20270308T090000",
            "DTEND;TZID=America/New_York:20270308T100000",
            "RRULE:FREQ=WEEKLY",
            "EXDATE;TZID=America/New_York:20270322T090000",
            "ORGANIZER:mailto:alice@example.com",
            "END:VEVENT",
        ],
    );
    let s = apply(&UidState::default(), &text, ALICE);
    let ics = printed(&s);
    assert!(
        ics.contains("BEGIN:VTIMEZONE\r\nTZID:America/New_York"),
        "{ics}"
    );
    assert!(ics.contains("BEGIN:DAYLIGHT"), "{ics}");
    assert_round_trip(&s);
}

/// Zones that no raw text carries, from what they resolved to: a Windows
/// name for an IANA zone, a fixed offset, and a VTIMEZONE's rules.
#[test]
fn zones_are_made_from_what_they_resolved_to() {
    let mut s = apply(&UidState::default(), &series(), ALICE);
    let o = &mut s.objects[0];
    o.raw = Default::default();
    let berlin = o.timezones["Europe/Berlin"].clone();
    for (tzid, zone) in [
        ("W. Europe Standard Time", berlin),
        ("Customized Time Zone", rules_of_berlin()),
        (
            "Imported zone",
            Zone::Fixed {
                offset_seconds: 3600,
            },
        ),
    ] {
        let mut o = s.objects[0].clone();
        for t in [o.component.start.as_mut(), o.component.end.as_mut()]
            .into_iter()
            .flatten()
        {
            t.tzid = Some(tzid.into());
        }
        o.timezones = [(tzid.to_owned(), zone.clone())].into();
        let ics = calendar(&[&o]);
        assert_valid(&ics, 1);
        assert!(unfold(&ics).contains(&format!("TZID:{tzid}\r\n")), "{ics}");
        let back = parse(&ics, Some("PUBLISH"));
        let c = &back.components[0];
        assert_eq!(
            c.start.as_ref().and_then(|t| t.utc),
            o.component.start.as_ref().and_then(|t| t.utc),
            "{tzid}: {ics}"
        );
    }
}

/// Berlin's rules as Outlook writes them under a custom name.
fn rules_of_berlin() -> Zone {
    let text = object(
        "REQUEST",
        &[
            "BEGIN:VTIMEZONE",
            "TZID:Customized Time Zone",
            "BEGIN:STANDARD",
            "DTSTART:16011028T030000",
            "RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10",
            "TZOFFSETFROM:+0200",
            "TZOFFSETTO:+0100",
            "END:STANDARD",
            "BEGIN:DAYLIGHT",
            "DTSTART:16010325T020000",
            "RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3",
            "TZOFFSETFROM:+0100",
            "TZOFFSETTO:+0200",
            "END:DAYLIGHT",
            "END:VTIMEZONE",
            "BEGIN:VEVENT",
            "UID:x",
            "DTSTAMP:20270301T100000Z",
            "DTSTART;TZID=Customized Time Zone:20270302T100000",
            "END:VEVENT",
        ],
    );
    let z = parse(&text, None)
        .timezones
        .remove("Customized Time Zone")
        .unwrap();
    assert!(matches!(z, Zone::Rules(_)), "{z:?}");
    z
}

/// Thunderbird's `FLE` (no VTIMEZONE, no standard meaning): ingest floats
/// it, and so does the print, without a TZID that names no VTIMEZONE.
#[test]
fn a_floating_time_is_written_without_its_unresolved_tzid() {
    let text = object(
        "REQUEST",
        &[
            "BEGIN:VEVENT",
            "UID:weekly@example.com",
            "DTSTAMP:20270301T100000Z",
            "DTSTART;TZID=FLE:20270308T090000",
            "DTEND;TZID=FLE:20270308T100000",
            "ORGANIZER:mailto:alice@example.com",
            "END:VEVENT",
        ],
    );
    let s = apply(&UidState::default(), &text, ALICE);
    assert_valid(&calendar(&[&s.objects[0]]), 1);
    let ics = printed(&s);
    assert!(ics.contains("DTSTART:20270308T090000\r\n"), "{ics}");
    assert!(!ics.contains("FLE"), "{ics}");
    assert!(!ics.contains("VTIMEZONE"), "{ics}");
}

/// A zone the print cannot write a VTIMEZONE for (an IANA name calcard does
/// not know): its times are printed as their instants in UTC rather than
/// with a TZID that names no VTIMEZONE.
#[test]
fn a_zone_without_a_vtimezone_to_print_is_written_in_utc() {
    let mut s = apply(&UidState::default(), &series(), ALICE);
    let o = &mut s.objects[0];
    o.raw = Default::default();
    for t in [o.component.start.as_mut(), o.component.end.as_mut()]
        .into_iter()
        .flatten()
    {
        t.tzid = Some("Mars/Olympus_Mons".into());
    }
    o.timezones = [(
        "Mars/Olympus_Mons".to_owned(),
        Zone::Iana {
            name: "Mars/Olympus_Mons".into(),
        },
    )]
    .into();
    let ics = calendar(&[&s.objects[0]]);
    assert_valid(&ics, 1);
    assert!(!ics.contains("Mars"), "{ics}");
    assert!(!ics.contains("VTIMEZONE"), "{ics}");
    // 10:00 in Berlin on 2 March.
    assert!(
        unfold(&ics).contains("DTSTART:20270302T090000Z\r\n"),
        "{ics}"
    );
}

/// The issue's own case, looked at component by component: the cancelled
/// instance is an EXDATE of the master (and no VEVENT of its own), and an
/// instance Bob answered on its own is a VEVENT with its RECURRENCE-ID and
/// his answer there, while the master keeps his answer to the series.
#[test]
fn a_cancelled_instance_is_an_exdate_and_an_answered_one_its_own_vevent() {
    let s = history();
    let decline = object(
        "REPLY",
        &[
            "BEGIN:VEVENT",
            "UID:weekly@example.com",
            "RECURRENCE-ID;TZID=Europe/Berlin:20270330T100000",
            "DTSTAMP:20270305T100000Z",
            "SEQUENCE:0",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=DECLINED:mailto:bob@example.org",
            "END:VEVENT",
        ],
    );
    let s = apply(&s, &decline, BOB);
    assert_eq!(s.objects.len(), 3, "{s:#?}");
    assert_round_trip(&s);
    let ics = printed(&s);
    let events: Vec<&str> = ics
        .split("BEGIN:VEVENT\r\n")
        .skip(1)
        .map(|e| &e[..e.find("END:VEVENT").unwrap()])
        .collect();
    assert_eq!(events.len(), 3, "{ics}");
    let bob = |e: &str| {
        e.split("\r\n")
            .find(|l| l.starts_with("ATTENDEE") && l.ends_with(":mailto:bob@example.org"))
            .map(|l| {
                head_of(l)
                    .into_iter()
                    .find_map(|p| p.strip_prefix("PARTSTAT=").map(str::to_owned))
            })
            .unwrap_or_else(|| panic!("Bob in {e}"))
    };
    let (master, moved, declined) = (events[0], events[1], events[2]);
    assert!(!master.contains("RECURRENCE-ID"), "{master}");
    assert!(master.contains("RRULE:FREQ=WEEKLY;COUNT=6\r\n"), "{master}");
    assert!(
        master.contains("\r\nEXDATE:20270309T090000Z\r\n"),
        "{master}"
    );
    assert_eq!(bob(master).as_deref(), Some("ACCEPTED"));
    // No VEVENT for 9 March: the EXDATE is all that is left of it.
    assert!(!ics.contains("20270309T100000"), "{ics}");
    assert!(
        moved.contains("\r\nRECURRENCE-ID;TZID=Europe/Berlin:20270316T100000\r\n"),
        "{moved}"
    );
    assert_eq!(bob(moved).as_deref(), Some("ACCEPTED"));
    assert!(
        declined.contains("\r\nRECURRENCE-ID;TZID=Europe/Berlin:20270330T100000\r\n"),
        "{declined}"
    );
    assert!(
        declined.contains("\r\nDTSTART;TZID=Europe/Berlin:20270330T100000\r\n"),
        "{declined}"
    );
    assert_eq!(bob(declined).as_deref(), Some("DECLINED"));
    assert!(
        !declined.contains("RRULE") && !declined.contains("EXDATE"),
        "{declined}"
    );
}

/// DURATION is stored as seconds with a day as 86,400; the print writes the
/// form that gives the stored end: `P1D` across the March change is 23
/// hours, `PT24H` is 24.
#[test]
fn a_duration_is_written_in_the_form_that_gives_the_stored_end() {
    for (given, printed_as) in [
        ("P1D", "DURATION:P1D\r\n"),
        ("PT24H", "DURATION:PT24H\r\n"),
        ("PT1H30M", "DURATION:PT1H30M\r\n"),
    ] {
        let dur = format!("DURATION:{given}");
        let event = [
            "BEGIN:VEVENT",
            "UID:weekly@example.com",
            "DTSTAMP:20270301T100000Z",
            "DTSTART;TZID=Europe/Berlin:20270327T120000",
            &dur,
            "ORGANIZER:mailto:alice@example.com",
            "END:VEVENT",
        ];
        let s = apply(
            &UidState::default(),
            &object("REQUEST", &[BERLIN, &event].concat()),
            ALICE,
        );
        let ics = printed(&s);
        assert!(ics.contains(printed_as), "{given}: {ics}");
        assert!(!ics.contains("DTEND"), "{ics}");
        assert_round_trip(&s);
    }
    let event = [
        "BEGIN:VEVENT",
        "UID:weekly@example.com",
        "DTSTAMP:20270301T100000Z",
        "DTSTART;VALUE=DATE:20270327",
        "DURATION:P2D",
        "ORGANIZER:mailto:alice@example.com",
        "END:VEVENT",
    ];
    let s = apply(&UidState::default(), &object("REQUEST", &event), ALICE);
    let ics = printed(&s);
    assert!(
        ics.contains("DURATION:P2D\r\n"),
        "an all-day start takes days: {ics}"
    );
    assert_round_trip(&s);
}
