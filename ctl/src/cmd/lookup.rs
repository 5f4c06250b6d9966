//! `imip-ctl freebusy`, `object` and `objects`: the per-user reads of
//! [`crate::query`], printed as text, JSON or iCalendar ([`crate::ics`]).

use crate::error::CtlError;
use crate::ics;
use crate::output::{Format, cal_time, dash, json_line, table, table_aligned, time, uid};
use crate::query::{self, FreeBusy};
use anyhow::bail;
use chrono::{DateTime, SecondsFormat, Utc};
use imipflow_processor::model::StoredObject;
use imipflow_processor::{Settings, connect::connect};
use imipflow_schema::Transparency;
use serde_json::json;

use super::known_user;

/// `imip-ctl freebusy USER --from --to [--json | --ics]`.
pub async fn freebusy(
    s: &Settings,
    user: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    format: Format,
) -> anyhow::Result<()> {
    if from > to {
        return Err(CtlError::Usage(format!(
            "--from ({}) is after --to ({}): give a start before the end",
            from.to_rfc3339_opts(SecondsFormat::Secs, true),
            to.to_rfc3339_opts(SecondsFormat::Secs, true)
        ))
        .into());
    }
    let mut db = connect(s).await?;
    let user = known_user(&db, user).await?;
    let answer = query::freebusy(&mut db, s, &user, from, to).await?;
    let FreeBusy { periods, truncated } = &answer;
    if *truncated {
        eprintln!(
            "imip-ctl: answer truncated to the first {} periods (IMIP_MAX_QUERY_PERIODS); \
             complete only before {}",
            periods.len(),
            time(periods.last().map_or(from, |p| p.start))
        );
    }
    match format {
        Format::Json => json_line(
            &json!({"user": user, "from": from, "to": to, "periods": periods, "truncated": truncated}),
        )?,
        Format::Ics => {
            let doc = imipflow_schema::VFreeBusy {
                prodid: "-//imipflow//imip-ctl//EN",
                user: &user,
                from,
                to,
                dtstamp: Utc::now(),
                periods,
            };
            print!("{}", doc.to_ics());
        }
        Format::Text => print_freebusy(&user, from, to, &answer),
    }
    Ok(())
}

fn print_freebusy(user: &str, from: DateTime<Utc>, to: DateTime<Utc>, answer: &FreeBusy) {
    if answer.periods.is_empty() {
        println!(
            "{user} is free from {} to {} (no busy periods)",
            time(from),
            time(to)
        );
        return;
    }
    let rows: Vec<Vec<String>> = answer
        .periods
        .iter()
        .map(|p| {
            vec![
                time(p.start),
                time(p.end),
                p.fbtype.as_str().to_owned(),
                uid(&p.uid),
            ]
        })
        .collect();
    table(&["START", "END", "TYPE", "UID"], &rows);
    if answer.truncated {
        println!(
            "(truncated: more periods follow; the answer is complete only before the last one)"
        );
    }
}

/// `imip-ctl object USER UID [--recurrence-id] [--json | --ics]`.
pub async fn object(
    s: &Settings,
    user: &str,
    uid: &str,
    recurrence_id: Option<DateTime<Utc>>,
    format: Format,
) -> anyhow::Result<()> {
    let db = connect(s).await?;
    let user = known_user(&db, user).await?;
    let mut objs: Vec<StoredObject> = query::objects(&db, &user, Some(uid))
        .await?
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    if format == Format::Ics && recurrence_id.is_none() {
        // The whole UID as the calendar holds it: master first, then overrides.
        objs.sort_by_key(|o| o.recurrence_id);
        if objs.is_empty() {
            bail!("no object {uid} for {user}");
        }
        print!("{}", ics::calendar(&objs.iter().collect::<Vec<_>>()));
        return Ok(());
    }
    let Some(o) = objs.into_iter().find(|o| o.recurrence_id == recurrence_id) else {
        bail!("no object {uid} for {user}");
    };
    if format == Format::Ics {
        print!("{}", ics::calendar(&[&o]));
        return Ok(());
    }
    let c = &o.component;
    if format == Format::Json {
        let doc = json!({
            "user": user, "uid": uid, "recurrence_id": o.recurrence_id,
            "sequence": c.sequence, "dtstamp": c.dtstamp, "status": c.status,
            "summary": c.summary, "start": c.start, "end": c.end, "rrule": c.rrule,
            "exdate": c.exdate, "transp": c.transp,
            "organizer": c.organizer.as_ref().map(|p| p.address.clone()),
            "attendees": c.attendees.iter().map(|a| json!({"address": a.address, "partstat": a.partstat})).collect::<Vec<_>>(),
        });
        return json_line(&doc);
    }
    print_object(&user, &o);
    Ok(())
}

/// One object for a person: its fields as a two-column table, then its
/// attendees as one.
fn print_object(user: &str, o: &StoredObject) {
    let c = &o.component;
    let join = |v: Vec<String>| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let fields: Vec<(&str, String)> = vec![
        ("user", user.to_owned()),
        ("uid", c.uid.clone()),
        (
            "recurrence",
            o.recurrence_id
                .map_or_else(|| "- (the series)".to_owned(), time),
        ),
        ("summary", dash(c.summary.as_deref())),
        ("status", dash(c.status.as_ref().map(|s| s.as_str()))),
        ("sequence", c.sequence.to_string()),
        (
            "start",
            c.start.as_ref().map_or_else(|| "-".to_owned(), cal_time),
        ),
        (
            "end",
            c.end.as_ref().map_or_else(|| "-".to_owned(), cal_time),
        ),
        ("rrule", join(c.rrule.clone())),
        ("exdate", join(c.exdate.iter().map(cal_time).collect())),
        (
            "transparency",
            match c.transp {
                Transparency::Opaque => "OPAQUE",
                Transparency::Transparent => "TRANSPARENT",
            }
            .to_owned(),
        ),
        (
            "organizer",
            dash(c.organizer.as_ref().map(|p| p.address.as_str())),
        ),
        ("dtstamp", c.dtstamp.map_or_else(|| "-".to_owned(), time)),
    ];
    let rows: Vec<Vec<String>> = fields
        .into_iter()
        .map(|(k, v)| vec![k.to_owned(), v])
        .collect();
    table(&["FIELD", "VALUE"], &rows);
    if !c.attendees.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = c
            .attendees
            .iter()
            .map(|a| {
                vec![
                    a.address.clone(),
                    a.partstat.as_str().to_owned(),
                    dash(a.cn.as_deref()),
                ]
            })
            .collect();
        table(&["ATTENDEE", "ANSWER", "NAME"], &rows);
    }
}

/// `imip-ctl objects USER [--json]`.
pub async fn objects(s: &Settings, user: &str, json: bool) -> anyhow::Result<()> {
    let db = connect(s).await?;
    let user = known_user(&db, user).await?;
    let objs = query::objects(&db, &user, None).await?;
    let docs: Vec<_> = objs
        .iter()
        .map(|(uid, o)| {
            json!({"uid": uid, "recurrence_id": o.recurrence_id, "sequence": o.component.sequence,
                   "summary": o.component.summary, "start": o.component.start.as_ref().and_then(|t| t.utc),
                   "status": o.component.status})
        })
        .collect();
    if json {
        return json_line(&docs);
    }
    if objs.is_empty() {
        println!("no objects for {user}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = objs
        .iter()
        .map(|(id, o)| {
            let c = &o.component;
            vec![
                uid(id),
                o.recurrence_id.map_or_else(|| "-".to_owned(), time),
                c.sequence.to_string(),
                c.start.as_ref().map_or_else(|| "-".to_owned(), cal_time),
                dash(c.status.as_ref().map(|s| s.as_str())),
                dash(c.summary.as_deref()),
            ]
        })
        .collect();
    table_aligned(
        &["UID", "RECURRENCE", "SEQ", "START", "STATUS", "SUMMARY"],
        &rows,
        &[2],
    );
    Ok(())
}
