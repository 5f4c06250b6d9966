//! The command line of `imip-publisher` (clap), in the library so that
//! `imip-ctl man` can write its manual page.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "imip-publisher",
    version,
    about = "Serve each user's free/busy over HTTP (/freebusy/<user>.ifb and .json), kept current from imipflow's change events",
    after_help = "Connection and settings come from flags, IMIP_* variables or the --config file \
(docs/configuration.md).\n\n\
Examples:\n  imip-publisher\n  \
imip-publisher --listen 0.0.0.0:8080 --config /etc/imipflow/imipflow.toml\n  \
curl http://127.0.0.1:8080/freebusy/alice@example.com.ifb"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: crate::Settings,
}
