//! `imip-ctl status`: the deployment's status (`imipflow_processor::status`,
//! the read `/readyz` and the gauges share) as a table or `--json`.

use crate::output::{json_line, table_aligned};
use imipflow_processor::status::{self, PartitionStatus, Status};
use imipflow_processor::{Settings, connect::connect};

use super::jetstream;

/// `imip-ctl status [--json]`.
pub async fn run(s: &Settings, json: bool) -> anyhow::Result<()> {
    let db = connect(s).await?;
    let js = jetstream(s).await?;
    let st = status::status(&db, &js, s).await?;
    if json {
        return json_line(&st);
    }
    print_partitions(&st.partitions);
    println!();
    for i in &st.instances {
        println!("instance {} owns {} partition(s)", i.instance, i.partitions);
    }
    println!(
        "lag {}, dead letters {}, quarantined {}, refused {}, unpublished events {}",
        st.lag, st.dead_letters, st.quarantined, st.refused, st.unpublished_events
    );
    print_unowned(&st);
    print_stalls(&st);
    print_routing(&st, s.partitions);
    Ok(())
}

/// Partitions no live processor owns: nothing applies their mail.
fn print_unowned(st: &Status) {
    if let Some(w) = unowned_warning(&st.unowned, st.partitions.len()) {
        println!("{w}");
    }
}

/// The warning for `unowned` partitions out of `of`, naming them unless
/// it is all of them.
fn unowned_warning(unowned: &[u32], of: usize) -> Option<String> {
    let n = unowned.len();
    if n == 0 {
        return None;
    }
    let which = if n == of {
        String::new()
    } else {
        let list: Vec<String> = unowned.iter().map(u32::to_string).collect();
        format!(" ({})", list.join(", "))
    };
    Some(format!(
        "WARNING: {n} of {of} partitions{which} have no live owner (no imip-processor holds \
         their lease), so their mail waits: start imip-processor run"
    ))
}

/// Messages no lane will read, and a stream that would still store them.
fn print_routing(st: &Status, partitions: u32) {
    if st.unread > 0 {
        println!(
            "WARNING: {} message(s) in the messages stream are on partitions no lane reads \
             (published with an IMIP_PARTITIONS other than {partitions}); re-pipe those \
             mails (docs/operations.md, \"Partition count\")",
            st.unread
        );
    }
    if st.stream_subjects_stale {
        println!(
            "WARNING: the messages stream takes subjects beyond partitions 0..{partitions}, \
             so an ingest with another IMIP_PARTITIONS is stored for no lane: \
             run imip-processor migrate"
        );
    }
}

fn print_partitions(partitions: &[PartitionStatus]) {
    let rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|p| {
            let owner = match (&p.owner, p.leased) {
                (Some(o), true) => o.clone(),
                (Some(o), false) => format!("none (lease of {o} expired)"),
                (None, _) => "none".to_owned(),
            };
            let waiting = if p.stalled_for_secs > 0 {
                format!("{} s", p.stalled_for_secs)
            } else {
                "-".to_owned()
            };
            vec![
                p.partition.to_string(),
                p.applied.to_string(),
                p.newest.to_string(),
                p.lag.to_string(),
                p.epoch.to_string(),
                waiting,
                owner,
            ]
        })
        .collect();
    table_aligned(
        &[
            "PARTITION",
            "APPLIED",
            "NEWEST",
            "LAG",
            "EPOCH",
            "NOT ADVANCED",
            "OWNER",
        ],
        &rows,
        &[0, 1, 2, 3, 4, 5],
    );
}

fn print_stalls(st: &Status) {
    for reason in st.partitions.iter().filter_map(|p| p.stall_reason()) {
        println!(
            "WARNING: {reason}; stalled after {} s (IMIP_STALL_AFTER_SECS)",
            st.stall_after_secs
        );
    }
}

#[cfg(test)]
mod tests {
    use super::unowned_warning;

    #[test]
    fn the_warning_names_the_unowned_partitions_unless_it_is_all_of_them() {
        assert_eq!(unowned_warning(&[], 16), None);
        assert_eq!(
            unowned_warning(&(0..16).collect::<Vec<_>>(), 16).unwrap(),
            "WARNING: 16 of 16 partitions have no live owner (no imip-processor holds \
             their lease), so their mail waits: start imip-processor run"
        );
        let some = unowned_warning(&[3, 7], 16).unwrap();
        assert!(
            some.starts_with("WARNING: 2 of 16 partitions (3, 7) have no live owner"),
            "{some}"
        );
    }
}
