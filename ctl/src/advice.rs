//! Errors that say what to do: a failed PostgreSQL connection or query,
//! whichever command met it, explained once here in the operator's terms
//! (which server, which database, and the fix) before [`crate::output::fail`]
//! prints it. The server's own message stays as the cause; no password is
//! ever part of the explanation (it names host, port, database and user only).

use imipflow_processor::Settings;

/// An error's explanation: the sentence to lead with and a machine name of
/// it (the `--json` error's `"kind"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    pub kind: &'static str,
    pub message: String,
}

/// Where the command's PostgreSQL is, as the explanations name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// `host:port`, comma-separated when the URL lists several; a socket
    /// directory for a Unix socket.
    pub hosts: String,
    pub database: String,
    pub user: String,
}

impl PgTarget {
    /// From the settings' `IMIP_DATABASE_URL` (none when it does not parse:
    /// that is an error of its own, already explicit).
    pub fn of(settings: &Settings) -> Option<Self> {
        let db = imipflow_processor::connect::database(settings).ok()?;
        let c = db.config();
        let ports = c.get_ports();
        let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let hosts: Vec<String> = c
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{}", port(i)),
                tokio_postgres::config::Host::Unix(dir) => {
                    format!("{} (socket)", dir.display())
                }
            })
            .collect();
        let user = c.get_user().unwrap_or("postgres").to_owned();
        Some(PgTarget {
            hosts: if hosts.is_empty() {
                format!("localhost:{}", port(0))
            } else {
                hosts.join(",")
            },
            database: c.get_dbname().unwrap_or(&user).to_owned(),
            user,
        })
    }
}

/// The explanation of `e` if a PostgreSQL error is part of it and one is
/// known for its kind; `None` leaves the error as it is.
pub fn advice(e: &anyhow::Error, target: Option<&PgTarget>) -> Option<Advice> {
    let pg = e
        .chain()
        .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())?;
    let (at, no_database, user) = match target {
        Some(t) => (
            format!("PostgreSQL at {} (database {})", t.hosts, t.database),
            format!("PostgreSQL at {} has no database {}", t.hosts, t.database),
            t.user.as_str(),
        ),
        None => (
            "PostgreSQL".to_owned(),
            "PostgreSQL has no such database".to_owned(),
            "the user",
        ),
    };
    let Some(db) = pg.as_db_error() else {
        // tokio-postgres says which step failed only in its message.
        let text = pg.to_string();
        return if text.starts_with("error connecting to server") {
            Some(Advice {
                kind: "postgres_unreachable",
                message: format!(
                    "cannot connect to {at}: is it running, and is that the right address? \
                     (IMIP_DATABASE_URL)"
                ),
            })
        } else if text.starts_with("error performing TLS handshake") {
            Some(Advice {
                kind: "postgres_tls",
                message: format!(
                    "the TLS handshake with {at} failed: check IMIP_DATABASE_SSLMODE and \
                     IMIP_DATABASE_SSLROOTCERT (docs/configuration.md)"
                ),
            })
        } else {
            None
        };
    };
    let code = db.code().code();
    let (kind, message) = match code {
        // undefined_table, undefined_function, undefined_column,
        // undefined_object, invalid_schema_name.
        "42P01" | "42883" | "42703" | "42704" | "3F000" => (
            "schema_missing",
            format!(
                "{at}: the schema is missing or old ({}): run `imip-processor migrate`",
                db.message()
            ),
        ),
        // invalid_catalog_name.
        "3D000" => (
            "database_missing",
            format!(
                "{no_database}: run `imip-processor migrate` (it creates it), \
                 or check IMIP_DATABASE_URL"
            ),
        ),
        // invalid_password, invalid_authorization_specification.
        "28P01" | "28000" => (
            "postgres_login",
            format!(
                "{at} refused the login of user {user}: check the password \
                 (IMIP_DATABASE_PASSWORD or IMIP_DATABASE_PASSWORD_FILE), \
                 IMIP_DATABASE_SSLMODE and the server's pg_hba.conf"
            ),
        ),
        // cannot_connect_now (starting up, shutting down).
        "57P03" => (
            "postgres_unavailable",
            format!("{at} does not accept connections now: try again in a moment"),
        ),
        // too_many_connections.
        "53300" => (
            "postgres_unavailable",
            format!("{at} has no connection slots left: try again, or raise max_connections"),
        ),
        _ => return None,
    };
    Some(Advice { kind, message })
}
