//! Settings from four layers: flags over `IMIP_*` environment variables over
//! the TOML config file (`--config PATH` / `IMIP_CONFIG`) over built-in
//! defaults.
//!
//! The trick that keeps it generic: each key of the file becomes the clap
//! *default* of the argument with that id, then clap parses as usual, so flags
//! and environment still win and every field a settings struct gains is a
//! config key with no extra code. A key that is not a setting is an error.

use crate::error::ConfigError;
use crate::secret::{HIDDEN, redact_url};
use clap::Command;
use clap::parser::ValueSource;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The argument id of the config file setting itself.
pub const CONFIG_KEY: &str = "config";

/// `--config PATH` / `IMIP_CONFIG`: flatten into a settings struct.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigFile {
    /// TOML file with settings (keys are the long flag names with `_`).
    #[arg(long = "config", id = CONFIG_KEY, help_heading = "Connection", env = "IMIP_CONFIG", value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
}

/// Where a setting's effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
    Unset,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::File => "file",
            Source::Default => "default",
            Source::Unset => "unset",
        }
    }
}

/// One setting's effective value (secrets hidden) and origin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub key: String,
    pub flag: Option<String>,
    pub env: Option<String>,
    pub value: Option<String>,
    pub source: Source,
}

/// A parsed command line with the report of its settings.
#[derive(Debug)]
pub struct Layered<C> {
    pub cli: C,
    pub file: Option<PathBuf>,
    pub entries: Vec<Entry>,
}

/// Whether a setting's value is a secret by its name: passwords and tokens
/// (their `_file` variants are paths, not secrets).
pub fn is_secret_key(key: &str) -> bool {
    (key.contains("password") || key.contains("token") || key.contains("secret"))
        && !key.ends_with("_file")
}

/// Parses the process's arguments with the config file layered in; prints
/// clap's message and exits on bad arguments, and exits 78 (EX_CONFIG) with a
/// message on a bad config file.
pub fn parse_or_exit<C: clap::Parser>(settings: fn(Command) -> Command) -> Layered<C> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let env_config = std::env::var_os("IMIP_CONFIG");
    match try_parse_from::<C>(settings, args, env_config) {
        Ok(layered) => layered,
        Err(LayerError::Clap(e)) => e.exit(),
        Err(LayerError::Config(e)) => {
            let name = C::command().get_name().to_owned();
            eprintln!("{name}: {e}");
            std::process::exit(78);
        }
    }
}

#[derive(Debug)]
pub enum LayerError {
    Clap(clap::Error),
    Config(ConfigError),
}

impl std::fmt::Display for LayerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerError::Clap(e) => write!(f, "{e}"),
            LayerError::Config(e) => write!(f, "{e}"),
        }
    }
}

/// [`parse_or_exit`] without the exiting, for tests: `settings` is the
/// settings struct's `augment_args` (its arguments are the config keys).
pub fn try_parse_from<C: clap::Parser>(
    settings: fn(Command) -> Command,
    args: Vec<OsString>,
    env_config: Option<OsString>,
) -> Result<Layered<C>, LayerError> {
    let keys: Vec<clap::Arg> = settings(Command::new("settings"))
        .get_arguments()
        .filter(|a| a.get_id() != CONFIG_KEY && a.get_long().is_some())
        .cloned()
        .collect();
    let path = config_path(&args).or(env_config.filter(|p| !p.is_empty()).map(PathBuf::from));
    let file_values = match &path {
        Some(p) => read_file(p, &keys, sections_for(C::command().get_name()))
            .map_err(LayerError::Config)?,
        None => Vec::new(),
    };
    let mut command = C::command();
    for (key, value) in &file_values {
        // clap keeps defaults as 'static; one small leak per setting, once.
        let value: &'static str = Box::leak(value.clone().into_boxed_str());
        // Hidden from `--help`: a file's value may be a secret (flags show
        // no value anyway, and clap refuses the setting on them).
        command = command.mut_arg(key.as_str(), |a| {
            let takes_value = a.get_action().takes_values();
            let a = a.default_value(value);
            if takes_value {
                a.hide_default_value(true)
            } else {
                a
            }
        });
    }
    let matches = command
        .try_get_matches_from(args)
        .map_err(LayerError::Clap)?;
    let cli = C::from_arg_matches(&matches).map_err(LayerError::Clap)?;
    let entries = std::iter::once(CONFIG_KEY)
        .chain(keys.iter().map(|a| a.get_id().as_str()))
        .map(|key| {
            let arg = keys.iter().find(|a| a.get_id() == key);
            let source = match matches.value_source(key) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Env,
                Some(ValueSource::DefaultValue) if file_values.iter().any(|(k, _)| k == key) => {
                    Source::File
                }
                Some(_) => Source::Default,
                None => Source::Unset,
            };
            let value = matches.get_raw(key).map(|raw| {
                let text = raw
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",");
                if is_secret_key(key) {
                    HIDDEN.to_owned()
                } else {
                    redact_url(&text)
                }
            });
            Entry {
                key: key.to_owned(),
                flag: match arg {
                    Some(a) => a.get_long().map(|l| format!("--{l}")),
                    None => Some("--config".into()),
                },
                env: match arg {
                    Some(a) => a.get_env().map(|e| e.to_string_lossy().into_owned()),
                    None => Some("IMIP_CONFIG".into()),
                },
                value,
                source,
            }
        })
        .collect();
    Ok(Layered {
        cli,
        file: path,
        entries,
    })
}

/// `--config PATH` or `--config=PATH` before a `--`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(rest) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(rest));
        }
    }
    None
}

/// The tables a shared config file may hold besides its top-level keys, one
/// per binary, so that one file can configure a whole installation.
pub const SECTIONS: [&str; 4] = ["processor", "ctl", "publisher", "manager"];

/// The tables that apply to a binary, in the order they override the top
/// level: `imip-ctl` works on the processor's store, so it reads
/// `[processor]` and then its own `[ctl]`.
pub fn sections_for(command: &str) -> &'static [&'static str] {
    match command {
        "imip-processor" => &["processor"],
        "imip-ctl" => &["processor", "ctl"],
        "imip-publisher" => &["publisher"],
        "imip-manager" => &["manager"],
        _ => &[],
    }
}

/// The file's settings as (argument id, raw value) pairs: the top-level keys,
/// then the keys of each table in `sections` (later ones win). Tables of
/// other binaries are skipped, so their keys are not checked here; every key
/// that applies must be a setting of this binary.
fn read_file(
    path: &Path,
    keys: &[clap::Arg],
    sections: &[&str],
) -> Result<Vec<(String, String)>, ConfigError> {
    let err = |reason: String| ConfigError::ConfigFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // The parser's message quotes the offending line: keep only its
        // first line, which names the position, in case that line was a secret.
        err(e.message().to_owned())
    })?;
    let mut out = Vec::new();
    let mut tables = Vec::new();
    for (raw_key, value) in &table {
        if let toml::Value::Table(t) = value {
            if !SECTIONS.contains(&raw_key.as_str()) {
                return Err(err(format!(
                    "unknown table `[{raw_key}]` (tables: {}); see docs/configuration.md",
                    SECTIONS.map(|s| format!("[{s}]")).join(", ")
                )));
            }
            tables.push((raw_key.as_str(), t));
            continue;
        }
        out.push(file_value(raw_key, value, keys, "").map_err(err)?);
    }
    for section in sections {
        for (name, t) in &tables {
            if name == section {
                for (raw_key, value) in t.iter() {
                    out.push(file_value(raw_key, value, keys, name).map_err(err)?);
                }
            }
        }
    }
    Ok(out)
}

/// One `key = value` of the file as (argument id, raw value).
fn file_value(
    raw_key: &str,
    value: &toml::Value,
    keys: &[clap::Arg],
    section: &str,
) -> Result<(String, String), String> {
    let at = if section.is_empty() {
        format!("`{raw_key}`")
    } else {
        format!("`{raw_key}` in [{section}]")
    };
    let key = raw_key.replace('-', "_");
    if !keys.iter().any(|a| a.get_id() == key.as_str()) {
        let hint = closest(&key, keys)
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        return Err(format!(
            "unknown key {at}{hint}; see docs/configuration.md for the keys"
        ));
    }
    let text = scalar(value)
        .or_else(|| match value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            _ => None,
        })
        .ok_or_else(|| format!("{at} must be a string, number, boolean or list of them"))?;
    Ok((key, text))
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The known key nearest to a mistyped one (edit distance at most 3).
fn closest<'a>(key: &str, keys: &'a [clap::Arg]) -> Option<&'a str> {
    keys.iter()
        .map(|a| a.get_id().as_str())
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `config check` of a binary: every setting with its source (as a table,
/// or one JSON document with `--json`), then the `problems` and `warnings`
/// its settings found. Returns whether the settings are valid; the caller
/// exits 78 (EX_CONFIG) when they are not.
#[cfg(feature = "file")]
pub fn print_check<C>(
    layered: &Layered<C>,
    problems: &[String],
    warnings: &[String],
    json: bool,
) -> bool {
    if json {
        let doc = serde_json::json!({
            "file": layered.file,
            "valid": problems.is_empty(),
            "problems": problems,
            "warnings": warnings,
            "settings": layered.entries,
        });
        println!("{doc}");
    } else {
        match &layered.file {
            Some(f) => println!("config file: {}", f.display()),
            None => println!("config file: none"),
        }
        print!("{}", render(&layered.entries));
        for p in problems {
            eprintln!("invalid: {p}");
        }
        for w in warnings {
            eprintln!("warning: {w}");
        }
        if problems.is_empty() {
            println!("config: valid");
        }
    }
    problems.is_empty()
}

/// The report as an aligned text table.
pub fn render(entries: &[Entry]) -> String {
    let width = entries.iter().map(|e| e.key.len()).max().unwrap_or(0);
    let value_width = entries
        .iter()
        .map(|e| e.value.as_deref().unwrap_or("-").chars().count())
        .max()
        .unwrap_or(0)
        .min(48);
    let mut out = String::new();
    for e in entries {
        let value = e.value.as_deref().unwrap_or("-");
        let origin = match (e.source, &e.env) {
            (Source::Env, Some(env)) => format!("env {env}"),
            (s, _) => s.as_str().to_owned(),
        };
        out.push_str(&format!(
            "{:width$}  {value:value_width$}  {origin}\n",
            e.key
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Parser};

    #[derive(Debug, Clone, Args)]
    struct S {
        #[command(flatten)]
        file: ConfigFile,
        #[arg(
            long,
            env = "T_LAYER_URL",
            default_value = "nats://default",
            global = true
        )]
        nats_url: String,
        #[arg(long, env = "T_LAYER_N", default_value_t = 16, global = true)]
        partitions: u32,
        #[arg(long, env = "T_LAYER_PW", global = true)]
        nats_password: Option<String>,
        #[arg(long, env = "T_LAYER_FLAG", global = true)]
        tls_required: bool,
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        s: S,
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Cmd {
        Run,
    }

    fn file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "imipflow-layer-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn parse(args: &[&str], env_config: Option<&Path>) -> Result<Layered<Cli>, LayerError> {
        try_parse_from::<Cli>(
            S::augment_args,
            args.iter().map(OsString::from).collect(),
            env_config.map(|p| p.as_os_str().to_owned()),
        )
    }

    #[test]
    fn file_over_default_flag_over_file() {
        let path = file(
            "nats-url = \"nats://file\"\npartitions = 8\nnats_password = \"hunter2\"\ntls_required = true\n",
        );
        let l = parse(&["x", "run"], Some(&path)).unwrap();
        assert_eq!(l.cli.s.nats_url, "nats://file");
        assert_eq!(l.cli.s.partitions, 8);
        assert!(l.cli.s.tls_required);
        let e = l.entries.iter().find(|e| e.key == "nats_password").unwrap();
        assert_eq!(e.value.as_deref(), Some(HIDDEN));
        assert_eq!(e.source, Source::File);
        let l = parse(
            &[
                "x",
                "run",
                "--partitions",
                "4",
                "--config",
                path.to_str().unwrap(),
            ],
            None,
        )
        .unwrap();
        assert_eq!(l.cli.s.partitions, 4);
        assert_eq!(l.cli.s.nats_url, "nats://file");
        let e = l.entries.iter().find(|e| e.key == "partitions").unwrap();
        assert_eq!(e.source, Source::Flag);
        let e = l.entries.iter().find(|e| e.key == "config").unwrap();
        assert_eq!(e.source, Source::Flag);
    }

    #[test]
    fn unknown_key_is_an_error_with_a_hint() {
        let path = file("nats_ulr = \"x\"\n");
        let e = parse(&["x", "run"], Some(&path)).unwrap_err().to_string();
        assert!(e.contains("unknown key `nats_ulr`"), "{e}");
        assert!(e.contains("did you mean `nats_url`"), "{e}");
    }

    #[test]
    fn no_file_means_defaults() {
        let l = parse(&["x", "run"], None).unwrap();
        assert_eq!(l.cli.s.partitions, 16);
        let e = l.entries.iter().find(|e| e.key == "partitions").unwrap();
        assert_eq!(e.source, Source::Default);
        let e = l.entries.iter().find(|e| e.key == "nats_password").unwrap();
        assert_eq!(e.source, Source::Unset);
    }
}
