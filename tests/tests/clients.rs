//! What real clients mean, through the real `imip-ingest --print` (and the
//! processor and `imip-ctl freebusy` where the effect is busy time): one
//! fixture per client shape in `tests/fixtures/clients/` (README.md there
//! says what each models). Time zones (docs/semantics.md "Time zones"),
//! unreadable date-times, non-addresses, DURATION and unknown components
//! (docs/hostile-input.md "iCalendar content").

use imipflow_tests::{TestEnv, fixture, json_lines, subset_mismatch};
use serde_json::{Value, json};

const ALICE: &str = "alice@example.com";

/// The JSON lines `imip-ingest --print --sender alice` makes of a fixture.
async fn print(env: &TestEnv, name: &str) -> Vec<Value> {
    let out = env
        .ingest(
            &["--print", "--sender", ALICE],
            &fixture(&format!("clients/{name}.eml")),
        )
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out.stdout)
}

/// `expected` (a list, one entry per output line) is a subset of what
/// ingest printed for the fixture.
async fn expect(name: &str, expected: Value) {
    let env = TestEnv::unmigrated();
    let lines = Value::Array(print(&env, name).await);
    if let Some(m) = subset_mismatch(&expected, &lines, name) {
        panic!("{m}\nprinted: {lines:#}");
    }
}

fn zoned(utc: &str) -> Value {
    json!({ "utc": utc, "kind": "zoned" })
}

#[tokio::test]
async fn outlook12_display_name_zone_follows_its_vtimezone() {
    // "(UTC+02:00) Athens, Bucharest, Istanbul" is no zone name: its own
    // VTIMEZONE (EU summer time) says 1 April is at +03:00, not +02:00.
    expect(
        "outlook12-display-name-tz",
        json!([{
            "method": "REQUEST",
            "components": [
                {
                    "start": zoned("2027-03-18T14:00:00Z"),
                    "end": zoned("2027-03-18T15:00:00Z"),
                    "rrule": ["FREQ=WEEKLY;COUNT=6;BYDAY=TH"],
                    "exdate": [zoned("2027-03-25T14:00:00Z")],
                    "organizer": { "address": ALICE },
                    "attendees": [{ "address": "bob@example.org" }],
                },
                {
                    "recurrence_id": { "time": zoned("2027-04-01T13:00:00Z") },
                    "start": zoned("2027-04-01T14:00:00Z"),
                    "end": zoned("2027-04-01T15:00:00Z"),
                }
            ],
            "timezones": { "(UTC+02:00) Athens, Bucharest, Istanbul": { "type": "rules" } },
            // The meeting room Outlook writes as `invalid:nomail` is no address.
            "warnings": [
                "ATTENDEE \"invalid:nomail\" in 040000008200E00074C5B7101A82E00800000000A0B1C2D3E4F5CA01000000000000000010000000AABBCCDDEEFF is not an address: dropped"
            ],
        }]),
    )
    .await;
}

#[tokio::test]
async fn exchange_display_name_zone_follows_its_vtimezone() {
    expect(
        "exchange2010-display-name-tz",
        json!([{
            "components": [{
                "start": zoned("2027-07-06T07:00:00Z"),
                "end": zoned("2027-07-06T08:00:00Z"),
            }],
            "timezones": { "(UTC+02:00) Athens, Bucharest": { "type": "rules" } },
            "warnings": null,
        }]),
    )
    .await;
}

#[tokio::test]
async fn display_name_zones_give_the_summer_busy_time() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    for name in ["outlook12-display-name-tz", "exchange2010-display-name-tz"] {
        let out = env
            .ingest(
                &["--sender", ALICE],
                &fixture(&format!("clients/{name}.eml")),
            )
            .await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    env.wait_applied().await;
    let busy = env
        .busy_lines(ALICE, "2027-03-01T00:00:00Z", "2027-08-01T00:00:00Z")
        .await;
    assert_eq!(
        busy,
        [
            // Outlook 12's weekly series: winter at +02:00, 25 March excluded,
            // 1 April moved to 17:00 (+03:00), then summer at +03:00.
            "2027-03-18T14:00:00Z 2027-03-18T15:00:00Z BUSY",
            "2027-04-01T14:00:00Z 2027-04-01T15:00:00Z BUSY",
            "2027-04-08T13:00:00Z 2027-04-08T14:00:00Z BUSY",
            "2027-04-15T13:00:00Z 2027-04-15T14:00:00Z BUSY",
            "2027-04-22T13:00:00Z 2027-04-22T14:00:00Z BUSY",
            // Exchange's 10:00 in Athens in July.
            "2027-07-06T07:00:00Z 2027-07-06T08:00:00Z BUSY",
        ]
    );
}

#[tokio::test]
async fn outlook2003_eastern_with_pre2007_rules_uses_the_iana_zone_and_warns() {
    // 18 March 2027 is daylight time since 2007; Outlook 2003's VTIMEZONE
    // still starts it on the first Sunday of April.
    expect(
        "outlook2003-eastern-pre2007",
        json!([{
            "components": [{
                "start": zoned("2027-03-18T13:00:00Z"),
                "end": zoned("2027-03-18T14:00:00Z"),
            }],
            "timezones": { "Eastern Standard Time": { "type": "iana", "name": "America/New_York" } },
            "warnings": [
                "TZID \"Eastern Standard Time\": the message's VTIMEZONE puts 2027-03-18 09:00:00 at -05:00, America/New_York at -04:00; America/New_York is used"
            ],
        }]),
    )
    .await;
}

#[tokio::test]
async fn outlook2003_eastern_series_starting_in_winter_warns_about_its_march_instances() {
    // DTSTART (7 January) is standard time under both rules; the series'
    // March instances are not, and the warning says so.
    expect(
        "outlook2003-eastern-series",
        json!([{
            "components": [{
                "start": zoned("2027-01-07T14:00:00Z"),
                "rrule": ["FREQ=WEEKLY;COUNT=20;BYDAY=TH"],
            }],
            "timezones": { "Eastern Standard Time": { "type": "iana", "name": "America/New_York" } },
            "warnings": [
                "TZID \"Eastern Standard Time\": the message's VTIMEZONE puts 2027-03-15 09:00:00 at -05:00, America/New_York at -04:00; America/New_York is used"
            ],
        }]),
    )
    .await;
}

#[tokio::test]
async fn thunderbird_berlin_with_its_1893_observance_uses_the_iana_zone_and_warns() {
    expect(
        "thunderbird-berlin-1893",
        json!([{
            "components": [{
                "start": zoned("2027-07-04T12:00:00Z"),
                "end": zoned("2027-07-04T14:00:00Z"),
                "attendees": [{ "address": "bob@example.org" }],
            }],
            "timezones": { "Europe/Berlin": { "type": "iana", "name": "Europe/Berlin" } },
            "warnings": [
                "TZID \"Europe/Berlin\": the message's VTIMEZONE puts 2027-07-04 14:00:00 at +01:00, Europe/Berlin at +02:00; Europe/Berlin is used"
            ],
        }]),
    )
    .await;
}

#[tokio::test]
async fn thunderbird_unknown_tzid_is_floating_with_a_warning() {
    // `FLE` has no VTIMEZONE and is no IANA or Windows zone name (calcard
    // would guess Europe/Helsinki); an address with a space is dropped.
    expect(
        "thunderbird-unknown-tzid-fle",
        json!([{
            "components": [{
                "start": { "utc": null, "local": "2027-07-06T18:00:00", "tzid": "FLE", "kind": "floating" },
                "floating": true,
                "attendees": [{ "address": "bob@example.org" }],
            }],
            "timezones": {},
            "warnings": [
                "unknown TZID \"FLE\": DTSTART treated as floating",
                "unknown TZID \"FLE\": DTEND treated as floating",
                "ATTENDEE \"mailto:carol smith@example.org\" in 5a7f0d2e-f1e0-4b3a-8c5e-0123456789ab is not an address: dropped"
            ],
        }]),
    )
    .await;
}

#[tokio::test]
async fn zimbra_empty_x_component_is_ignored_and_its_events_pass() {
    expect(
        "zimbra-empty-x-component",
        json!([{
            "method": "REQUEST",
            "components": [
                { "uid": "zimbra-release-1@example.com", "start": zoned("2027-07-07T17:00:00Z") },
                { "uid": "zimbra-release-2@example.com", "start": zoned("2027-07-14T17:00:00Z") },
                { "uid": "zimbra-release-3@example.com", "all_day": true, "start": { "kind": "date", "local": "2027-07-21" } },
            ],
        }]),
    )
    .await;
}

#[tokio::test]
async fn evolution_five_digit_time_is_quarantined_not_guessed() {
    expect(
        "evolution-five-digit-time",
        json!([{
            "reason": "invalid_date",
            "detail": "DTSTART: unreadable value \"20270701T13000Z\"",
        }]),
    )
    .await;
}

#[tokio::test]
async fn evolution_vendor_prefixed_tzid_dtend_with_duration_and_bare_mailto() {
    // A libical vendor prefix before an IANA name is that name (its
    // VTIMEZONE agrees, so no warning about it). DTEND and DURATION both given: DTEND wins, and no
    // `duration_seconds` says otherwise. `ORGANIZER:MAILTO` is no address.
    expect(
        "evolution-vendor-tzid-duration",
        json!([{
            "components": [{
                "start": zoned("2027-07-08T15:00:00Z"),
                "end": zoned("2027-07-08T16:30:00Z"),
                "duration_seconds": null,
                "organizer": null,
                "attendees": [{ "address": "bob@example.org" }],
            }],
            "timezones": { "/freeassociation.sourceforge.net/Europe/Athens": { "type": "iana", "name": "Europe/Athens" } },
            "warnings": [
                "ORGANIZER \"MAILTO\" in 20270601T070000Z-2345-1000-1-8@workstation.example.com is not an address: dropped"
            ],
        }]),
    )
    .await;
}

#[tokio::test]
async fn apple_and_google_iana_zones_with_agreeing_vtimezones_give_no_warning() {
    expect(
        "apple-iana-with-vtimezone",
        json!([{
            "components": [{
                "start": zoned("2027-07-09T17:00:00Z"),
                "exdate": [zoned("2027-07-16T17:00:00Z")],
                "rrule": ["FREQ=WEEKLY;COUNT=3"],
            }],
            "timezones": { "Europe/Athens": { "type": "iana", "name": "Europe/Athens" } },
            "warnings": null,
        }]),
    )
    .await;
    expect(
        "google-iana-allday-and-timed",
        json!([{
            "components": [
                { "all_day": true, "floating": false, "start": { "kind": "date", "local": "2027-07-14" } },
                { "start": zoned("2027-03-18T13:00:00Z") },
            ],
            "timezones": { "America/New_York": { "type": "iana", "name": "America/New_York" } },
            "warnings": null,
        }]),
    )
    .await;
}
