//! The command line: `campaign-push <subcommand>`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::guest::GuestRuntime;
use crate::offline::{self, TransformTest};

#[derive(Debug, Parser)]
#[command(name = "campaign-push", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a transform guest offline on events and subscribers from files, and print, as JSON
    /// lines, every Kafka message, every subscribers_feedback row, and every skipped and rejected
    /// event. No Kafka or PostgreSQL is needed.
    ///
    /// Events file: one JSON object per line, `{"key": "…", "value": <the event JSON>}`; use
    /// `value_text` (a string) or `value_hex` instead of `value` for values that are not JSON.
    /// `key` may be omitted. Blank lines and lines starting with `#` are ignored.
    ///
    /// Subscribers file: CSV with a header naming `client_id` and `restaurant_id`.
    ///
    /// Exit status: 0 on success; 1 when the guest cannot be loaded (not a component, wrong
    /// world), traps, or an input file is malformed.
    TransformTest {
        /// The guest component (.wasm).
        #[arg(long)]
        guest: PathBuf,
        /// The events file (JSON lines).
        #[arg(long)]
        events: PathBuf,
        /// The subscribers file (CSV); without it no restaurant has subscribers.
        #[arg(long)]
        subscribers: Option<PathBuf>,
        /// The processing time, Unix epoch seconds (UTC): decides which campaigns are active
        /// and becomes trigger_datetime_created.
        #[arg(long, allow_hyphen_values = true)]
        now: i64,
        /// Events per guest call (default: all events in one call).
        #[arg(long)]
        batch_size: Option<usize>,
    },
    /// Load a guest component and print what it is: version, SHA-256, and its imports.
    GuestInfo {
        /// The guest component (.wasm).
        #[arg(long)]
        guest: PathBuf,
    },
}

impl Cli {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::TransformTest {
                guest,
                events,
                subscribers,
                now,
                batch_size,
            } => {
                let test = TransformTest {
                    guest,
                    events,
                    subscribers,
                    now,
                    batch_size,
                };
                let stdout = std::io::stdout();
                let summary = offline::run(&test, &mut std::io::BufWriter::new(stdout.lock()))?;
                eprintln!("{}", serde_json::to_string(&summary)?);
                Ok(ExitCode::SUCCESS)
            }
            Command::GuestInfo { guest } => {
                let loaded = GuestRuntime::new()?.load_file(&guest)?;
                let info = serde_json::json!({
                    "version": loaded.identity().version,
                    "sha256": loaded.identity().sha256,
                    "imports": loaded.imports(),
                });
                let mut stdout = std::io::stdout().lock();
                serde_json::to_writer_pretty(&mut stdout, &info)?;
                writeln!(stdout)?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
