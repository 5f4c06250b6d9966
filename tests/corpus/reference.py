"""An independent reading of iCalendar mail for tests/tests/corpus.rs.

Python's `email` package finds the calendar parts, `icalendar` parses them
and `zoneinfo` resolves IANA names; no code is shared with imip-ingest. For
each path given on the command line, one JSON line:

  {"path": ..., "components": [ {...}, ... ], "errors": [ {"object_index": i, "error": "..."} ]}

(`errors`: the VCALENDARs icalendar refuses; `{"path", "error"}` alone when
the file cannot be read at all)

with, per VEVENT/VTODO/VJOURNAL, its VCALENDAR's index in the mail (as
ingest's `object_index` counts them: only objects with a METHOD, or in a part
whose Content-Type gives one) and the values ingest also produces: the UID,
RECURRENCE-ID, DTSTART, DTEND/DUE (only when given; ingest derives one from
DURATION, this does not), the all-day and floating flags, RRULE parts,
RDATE/EXDATE, ORGANIZER and ATTENDEE addresses. A time is "YYYY-MM-DD" (a
date), "YYYY-MM-DDTHH:MM:SS" (floating) or "...Z" (an instant in UTC).
"""

import datetime as dt
import email
import email.policy
import json
import re
import sys

import icalendar

UTC = dt.timezone.utc


def calendar_texts(path):
    """The calendar parts of a file, each with its Content-Type `method=`."""
    raw = open(path, "rb").read()
    if not path.endswith(".eml"):
        return [(raw.decode("utf-8", "replace"), None)]
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = []
    for part in msg.walk():
        ctype = part.get_content_type()
        name = (part.get_filename() or "").lower()
        if ctype in ("text/calendar", "application/ics") or name.endswith(".ics"):
            payload = part.get_payload(decode=True)
            if payload is None:
                continue
            charset = part.get_content_charset() or "utf-8"
            method = part.get_param("method")
            try:
                out.append((payload.decode(charset, "replace"), method))
            except LookupError:
                out.append((payload.decode("utf-8", "replace"), method))
    return out


def vcalendars(text):
    """The VCALENDAR blocks of a part, each parsed on its own so that one
    broken block does not hide the others (ingest, too, judges each alone)."""
    blocks, current = [], None
    for line in text.splitlines(keepends=True):
        t = line.strip().lstrip("\ufeff").upper()
        if current is None and t == "BEGIN:VCALENDAR":
            current = [line]
        elif current is not None:
            current.append(line)
            if t == "END:VCALENDAR":
                blocks.append("".join(current))
                current = None
    if current is not None:
        blocks.append("".join(current))
    return blocks


def unfolded(text):
    return re.sub(r"\r?\n[ \t]", "", text)


def when(value):
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.strftime("%Y-%m-%dT%H:%M:%S")
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dt.date):
        return value.strftime("%Y-%m-%d")
    return None


def first(value):
    """The first of a repeated property (ingest, too, reads the first)."""
    return value[0] if isinstance(value, list) else value


def one(component, name):
    prop = component.get(name)
    if prop is None:
        return None
    if isinstance(prop, list):
        prop = prop[0]
    return when(prop.dt)


def many(component, name):
    props = component.get(name)
    if props is None:
        return []
    if not isinstance(props, list):
        props = [props]
    out = []
    for p in props:
        for d in p.dts:
            v = d.dt
            if isinstance(v, tuple):  # a PERIOD: its start
                v = v[0]
            out.append(when(v))
    return out


def address(value):
    a = str(value).strip()
    if a[:7].lower() == "mailto:":
        a = a[7:]
    return a.strip().strip("<>").strip().lower()


def component_of(c, index):
    start = first(c.get("DTSTART"))
    start_v = start.dt if start is not None else None
    end_name = "DUE" if c.name == "VTODO" else "DTEND"
    rrules = c.get("RRULE")
    if rrules is None:
        rrules = []
    elif not isinstance(rrules, list):
        rrules = [rrules]
    attendees = c.get("ATTENDEE")
    if attendees is None:
        attendees = []
    elif not isinstance(attendees, list):
        attendees = [attendees]
    organizer = first(c.get("ORGANIZER"))
    return {
        "kind": c.name,
        "object_index": index,
        "uid": str(first(c.get("UID", ""))).strip(),
        "recurrence_id": one(c, "RECURRENCE-ID"),
        "start": when(start_v) if start_v is not None else None,
        "end": one(c, end_name),
        "all_day": isinstance(start_v, dt.date) and not isinstance(start_v, dt.datetime),
        "floating": isinstance(start_v, dt.datetime) and start_v.tzinfo is None,
        "rrule": [r.to_ical().decode() for r in rrules],
        "rdate": many(c, "RDATE"),
        "exdate": many(c, "EXDATE"),
        "organizer": address(organizer) if organizer is not None else None,
        "attendees": [address(a) for a in attendees],
    }


def main():
    for path in sys.argv[1:]:
        try:
            comps, errors = [], []
            index = 0
            for text, method in calendar_texts(path):
                for block in vcalendars(text):
                    # Ingest numbers only iMIP objects: with a METHOD, or
                    # one from the part's Content-Type.
                    if not method and not re.search(r"^METHOD[;:]", unfolded(block), re.M | re.I):
                        continue
                    try:
                        for cal in icalendar.Calendar.from_ical(block, multiple=True):
                            for c in cal.walk():
                                if c.name in ("VEVENT", "VTODO", "VJOURNAL"):
                                    comps.append(component_of(c, index))
                    except Exception as e:  # refused: reported, not compared
                        errors.append({"object_index": index, "error": f"{type(e).__name__}: {e}"[:200]})
                    index += 1
            print(json.dumps({"path": path, "components": comps, "errors": errors}))
        except Exception as e:
            print(json.dumps({"path": path, "error": f"{type(e).__name__}: {e}"[:300]}))


main()
