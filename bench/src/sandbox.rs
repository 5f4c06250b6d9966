//! The benchmark's private corner of the shared NATS server and PostgreSQL:
//! namespace `bench<pid>`, its streams (created by `imip-processor migrate`)
//! and database `imip_bench<pid>`, all removed again at the end.

use anyhow::{Context, bail};
use imipflow_schema::Namespace;
use std::path::Path;
use std::process::Command;

pub struct Sandbox {
    pub namespace: Namespace,
    pub database: String,
    pub database_url: String,
}

impl Sandbox {
    pub fn for_this_process() -> anyhow::Result<Sandbox> {
        let pid = std::process::id();
        let namespace = Namespace::new(&format!("bench{pid}"))?;
        let database = format!("imip_bench{pid}");
        let database_url = format!("postgresql://postgres@127.0.0.1:5432/{database}");
        Ok(Sandbox {
            namespace,
            database,
            database_url,
        })
    }

    /// Runs `imip-processor migrate` for the namespace: creates the database and the streams.
    pub fn migrate(&self, bin_dir: &Path, nats_url: &str) -> anyhow::Result<()> {
        let processor = bin_dir.join("imip-processor");
        let out = Command::new(&processor)
            .arg("migrate")
            .env("IMIP_NAMESPACE", self.namespace.as_str())
            .env("IMIP_DATABASE_URL", &self.database_url)
            .env("IMIP_NATS_URL", nats_url)
            .output()
            .with_context(|| format!("cannot run {}", processor.display()))?;
        if !out.status.success() {
            bail!(
                "{} migrate failed ({}):\n{}{}",
                processor.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The three streams `migrate` creates.
    pub fn streams(&self) -> [String; 3] {
        [
            self.namespace.messages_stream(),
            self.namespace.quarantine_stream(),
            self.namespace.events_stream(),
        ]
    }

    /// Deletes the streams and drops the database; every step is tried, and
    /// the first failure (other than "already gone") is returned.
    pub async fn teardown(
        &self,
        js: Option<&async_nats::jetstream::Context>,
    ) -> anyhow::Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        if let Some(js) = js {
            for stream in self.streams() {
                if let Err(e) = js.delete_stream(&stream).await {
                    let gone = matches!(
                        e.kind(),
                        async_nats::jetstream::context::DeleteStreamErrorKind::JetStream(ref j)
                            if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                    );
                    if !gone {
                        first_error
                            .get_or_insert(anyhow::anyhow!("cannot delete stream {stream}: {e}"));
                    }
                }
            }
        }
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
        match Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                &sql,
            ])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                first_error.get_or_insert(anyhow::anyhow!(
                    "{sql} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("cannot run psql: {e}"));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Stops an `imip-processor run` child: SIGTERM (it releases its leases and
/// exits), then SIGKILL if it has not exited within 10 s.
pub async fn stop_processor(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
