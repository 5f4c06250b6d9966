//! `imip-ctl status`: the deployment's status (`imipflow_processor::status`,
//! the read `/readyz` and the gauges share) as a table or `--json`.

use crate::output::json_line;
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
    for p in &st.partitions {
        println!("{}", partition_line(p));
    }
    for i in &st.instances {
        println!("instance {} owns {} partition(s)", i.instance, i.partitions);
    }
    println!(
        "lag {}, dead letters {}, quarantined {}, refused {}, unpublished events {}",
        st.lag, st.dead_letters, st.quarantined, st.refused, st.unpublished_events
    );
    print_stalls(&st);
    print_routing(&st, s.partitions);
    Ok(())
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

fn partition_line(p: &PartitionStatus) -> String {
    let owner = match (&p.owner, p.leased) {
        (Some(o), true) => o.clone(),
        (Some(o), false) => format!("none (lease of {o} expired)"),
        (None, _) => "none".to_owned(),
    };
    let waiting = if p.stalled_for_secs > 0 {
        format!("  not advanced for {} s", p.stalled_for_secs)
    } else {
        String::new()
    };
    format!(
        "partition {:>3}  applied {:>8}  newest {:>8}  lag {:>6}  owner {} (epoch {}){waiting}",
        p.partition, p.applied, p.newest, p.lag, owner, p.epoch
    )
}

fn print_stalls(st: &Status) {
    for reason in st.partitions.iter().filter_map(|p| p.stall_reason()) {
        println!(
            "WARNING: {reason}; stalled after {} s (IMIP_STALL_AFTER_SECS)",
            st.stall_after_secs
        );
    }
}
