//! `imip-ctl freebusy`, `object` and `objects`: the per-user reads of
//! [`crate::query`], printed as text, JSON or iCalendar ([`crate::ics`]).

use crate::ics;
use crate::output::{Format, json_line, json_pretty};
use crate::query::{self, FreeBusy};
use anyhow::bail;
use chrono::{DateTime, Utc};
use imipflow_processor::model::StoredObject;
use imipflow_processor::{Settings, connect::connect};
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
    let mut db = connect(s).await?;
    let user = known_user(&db, user).await?;
    let answer = query::freebusy(&mut db, s, &user, from, to).await?;
    let FreeBusy { periods, truncated } = &answer;
    if *truncated {
        eprintln!(
            "imip-ctl: answer truncated to the first {} periods (IMIP_MAX_QUERY_PERIODS); \
             complete only before {}",
            periods.len(),
            periods.last().map_or(from, |p| p.start)
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
    println!("free/busy of {user} from {from} to {to}:");
    for p in &answer.periods {
        println!(
            "  {} – {}  {:<16} {}",
            p.start,
            p.end,
            p.fbtype.as_str(),
            p.uid
        );
    }
    if answer.periods.is_empty() {
        println!("  (free)");
    }
    if answer.truncated {
        println!("  (truncated: more periods follow)");
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
    let doc = json!({
        "user": user, "uid": uid, "recurrence_id": o.recurrence_id,
        "sequence": c.sequence, "dtstamp": c.dtstamp, "status": c.status,
        "summary": c.summary, "start": c.start, "end": c.end, "rrule": c.rrule,
        "exdate": c.exdate, "transp": c.transp,
        "organizer": c.organizer.as_ref().map(|p| p.address.clone()),
        "attendees": c.attendees.iter().map(|a| json!({"address": a.address, "partstat": a.partstat})).collect::<Vec<_>>(),
    });
    match format {
        Format::Json => json_line(&doc),
        _ => json_pretty(&doc),
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
    for d in docs {
        println!(
            "{} {} seq={} {} {}",
            d["uid"], d["recurrence_id"], d["sequence"], d["start"], d["summary"]
        );
    }
    Ok(())
}
