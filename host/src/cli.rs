//! The command line: `campaign-push <subcommand>`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogConfig, LogFormat};
use crate::guest::GuestRuntime;
use crate::offline::{self, TransformTest};

#[derive(Debug, Parser)]
#[command(name = "campaign-push", version = crate::VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: consume campaign events, transform them in the guest, write the
    /// notifications to Kafka and the feedback rows to PostgreSQL. Stops cleanly on SIGTERM or
    /// SIGINT.
    ///
    /// Configuration: the TOML file, overridden by CAMPAIGN_PUSH__SECTION__KEY environment
    /// variables (see config/campaign-push.example.toml). Start-up fails, naming every bad key,
    /// when the configuration is invalid.
    Run {
        /// The configuration file (TOML).
        #[arg(long, env = "CAMPAIGN_PUSH_CONFIG")]
        config: PathBuf,
        /// Log as JSON lines instead of human-readable text (overrides log.format).
        #[arg(long)]
        log_json: bool,
    },
    /// Check a configuration without consuming anything: validate it, load and canary-test the
    /// guest, connect to PostgreSQL (the contract's tables must exist) and ask Kafka for the three
    /// topics. Prints one line per part; exit status 1, with every problem listed, if any fails.
    Check {
        /// The configuration file (TOML), with the same environment overrides as `run`.
        #[arg(long, env = "CAMPAIGN_PUSH_CONFIG")]
        config: PathBuf,
    },
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
            Command::Run { config, log_json } => {
                let config = Config::from_file_and_env(&config)?;
                init_logging(&config.log, log_json)?;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(run_until_signalled(config))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Check { config } => {
                let config = match Config::from_file_and_env(&config) {
                    Ok(config) => config,
                    Err(error) => {
                        println!("FAIL config: {error}");
                        return Ok(ExitCode::FAILURE);
                    }
                };
                println!("ok   config: valid");
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                let findings = runtime.block_on(crate::check::run(&config));
                for finding in &findings {
                    match &finding.outcome {
                        Ok(summary) => println!("ok   {}: {summary}", finding.part),
                        Err(problem) => println!("FAIL {}: {problem}", finding.part),
                    }
                }
                Ok(if findings.iter().all(|f| f.outcome.is_ok()) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
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

fn init_logging(log: &LogConfig, force_json: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.filter)
        .map_err(|e| anyhow::anyhow!("log.filter: {e}"))?;
    // Colour codes only where a person reads them; a file or a supervisor's journal gets plain
    // text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if force_json || log.format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Runs the service; the first SIGTERM or SIGINT asks it to stop, and it gets
/// `pipeline.shutdown_timeout` to finish or abandon its batch before the process exits anyway.
async fn run_until_signalled(config: Config) -> anyhow::Result<()> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let shutdown_timeout = config.pipeline.shutdown_timeout;
    let supervisor = crate::supervisor::Supervisor::from_env();
    let mut service = tokio::spawn(crate::service::run(config, supervisor, shutdown.clone()));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = &mut service => return result?,
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    shutdown.cancel();
    match tokio::time::timeout(shutdown_timeout, service).await {
        Ok(result) => result?,
        // A stop that was asked for: abandoning the batch is safe (it is consumed again, and
        // whatever of it PostgreSQL committed is recalled as stored), so this is a clean exit.
        Err(_) => {
            tracing::warn!(
                "did not stop within pipeline.shutdown_timeout ({shutdown_timeout:?}); the batch \
                 in flight is abandoned uncommitted"
            );
            Ok(())
        }
    }
}
