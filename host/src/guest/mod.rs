//! The wasmtime embedding of the transform guest.
//!
//! A [`GuestRuntime`] (one per process) compiles components; a [`LoadedGuest`] is a compiled
//! component that has been checked against the `campaign-transform` world and asked for its
//! version; a [`GuestInstance`] is one running instance with its own store, which transforms
//! batches. The subscriber table reaches the guest through a [`SubscriberDirectory`].

pub mod bindings;
pub mod canary;
mod outcome;
pub mod slot;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use guest_transform::PackedStrings;
use sha2::{Digest, Sha256};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};

use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap, WasmBacktrace};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use bindings::types::{Budget, InputEvent, ResumePoint};
#[cfg(test)]
pub(crate) use outcome::test_fan_out;
pub use outcome::{FanOut, Outcome};
pub use slot::GuestSlot;

use bindings::{CampaignTransform, CampaignTransformPre, types as wit};

/// The host's subscriber table, as the guest's `subscribers-of` import sees it.
pub trait SubscriberDirectory: Send + Sync + 'static {
    /// Up to `limit` client ids subscribed to `restaurant_id`, exact text, in ascending byte
    /// order, after `after` (exclusive) if given; duplicates allowed, next to each other.
    fn clients_page(&self, restaurant_id: &str, after: Option<&str>, limit: usize)
    -> PackedStrings;
}

/// The runtime that `[guest]` configures (limits, allow-list), and the component of `guest.path`
/// loaded with it and passed through the canary batch: what the service starts with, and what
/// `campaign-push check` tries.
pub fn start(config: &crate::config::GuestConfig) -> anyhow::Result<(GuestRuntime, LoadedGuest)> {
    let mut runtime = GuestRuntime::with_limits(GuestLimits {
        call_timeout: config.call_timeout,
        max_memory_bytes: config.max_memory_mib.saturating_mul(1 << 20),
    })?;
    if let Some(allowed) = &config.allowed_sha256 {
        runtime = runtime.allowing_only(allowed.clone());
    }
    let path = config.path.display();
    let guest = runtime
        .load_file(&config.path)
        .map_err(|e| anyhow::anyhow!("guest.path = {path}: {e}"))?;
    canary::check(&guest)
        .map_err(|e| anyhow::anyhow!("guest.path = {path}: failed the canary batch: {e}"))?;
    Ok((runtime, guest))
}

/// A directory as the transform's native build asks for subscribers (the Wasm guest reaches it
/// through the `subscribers-of` import instead).
pub struct DirectoryLookup<'a>(pub &'a dyn SubscriberDirectory);

impl guest_transform::SubscriberLookup for DirectoryLookup<'_> {
    fn subscribers_of(
        &mut self,
        restaurant_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> PackedStrings {
        self.0.clients_page(restaurant_id, after, limit as usize)
    }
}

/// Who a loaded guest is: what it says of itself, and what its bytes are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestIdentity {
    /// The guest's own `version()` string.
    pub version: String,
    /// SHA-256 of the component bytes, lowercase hex.
    pub sha256: String,
}

/// Why a component was refused. The previous guest, if any, stays in service.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read guest file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    #[error("component does not fit the campaign-transform world: {0}")]
    WorldMismatch(String),
    #[error("component failed its first instantiation or version() call: {0}")]
    Startup(String),
    #[error("component with SHA-256 {0} is not in guest.allowed_sha256")]
    NotAllowed(String),
}

/// A failed batch call. The instance that returned it must not be used again.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("guest trapped: {0}")]
    Trap(String),
    #[error("guest refused the batch: now = {0} does not fit int4 trigger_datetime_created")]
    NowOutOfRange(i64),
    #[error("guest returned {returned} outcomes for {sent} events")]
    OutcomeCount { sent: usize, returned: usize },
}

/// What one guest call may use: CPU time and memory. A guest exceeding either traps, and the
/// host treats it like any other trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    pub call_timeout: Duration,
    pub max_memory_bytes: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(2),
            max_memory_bytes: 256 << 20,
        }
    }
}

/// How often the engine's epoch advances: the granularity of `call_timeout`.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Compiles and links guests. Cheap to clone.
#[derive(Clone)]
pub struct GuestRuntime {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    limits: GuestLimits,
    /// The SHA-256s of the only components it loads, if restricted (`guest.allowed_sha256`).
    allowed: Option<Arc<BTreeSet<String>>>,
}

impl GuestRuntime {
    pub fn new() -> anyhow::Result<Self> {
        Self::with_limits(GuestLimits::default())
    }

    pub fn with_limits(limits: GuestLimits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // Interrupts a guest that runs too long (an infinite loop on one event) at the next
        // epoch check, so that it cannot hold a thread forever.
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut linker = Linker::new(&engine);
        // Our guest imports no WASI, but a guest built with Rust's wasip2 `std` imports a dozen
        // interfaces even when it never calls them; they are linked against an empty context
        // (see `GuestState`), so such a guest loads but can reach nothing.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking WASI: {e:?}"))?;
        CampaignTransform::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| anyhow::anyhow!("linking the subscribers import: {e:?}"))?;
        start_epoch_ticker(&engine);
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            limits,
            allowed: None,
        })
    }

    /// Loads only components whose SHA-256 (lowercase hex) is in `sha256s`; any other is refused
    /// before it is compiled.
    pub fn allowing_only(mut self, sha256s: BTreeSet<String>) -> Self {
        self.allowed = Some(Arc::new(sha256s));
        self
    }

    pub fn load_file(&self, path: &Path) -> Result<LoadedGuest, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Compiles `wasm`, checks it against the world, instantiates it once and asks its version.
    pub fn load(&self, wasm: &[u8]) -> Result<LoadedGuest, LoadError> {
        let sha256 = sha256_of(wasm);
        if let Some(allowed) = &self.allowed
            && !allowed.contains(&sha256)
        {
            return Err(LoadError::NotAllowed(sha256));
        }
        let component =
            Component::new(&self.engine, wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WorldMismatch(format!("{e:#}")))?;
        let pre = CampaignTransformPre::new(instance_pre)
            .map_err(|e| LoadError::WorldMismatch(format!("{e:#}")))?;
        let imports = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let mut guest = LoadedGuest {
            engine: self.engine.clone(),
            limits: self.limits,
            pre,
            identity: GuestIdentity {
                version: String::new(),
                sha256,
            },
            imports,
        };
        let mut probe = guest
            .instantiate(Arc::new(NoSubscribers))
            .map_err(|e| LoadError::Startup(e.to_string()))?;
        guest.identity.version = probe
            .version()
            .map_err(|e| LoadError::Startup(e.to_string()))?;
        Ok(guest)
    }
}

/// A compiled component that fits the world. Instantiating it is cheap (microseconds).
pub struct LoadedGuest {
    engine: Engine,
    limits: GuestLimits,
    pre: CampaignTransformPre<GuestState>,
    identity: GuestIdentity,
    imports: Vec<String>,
}

impl LoadedGuest {
    pub fn identity(&self) -> &GuestIdentity {
        &self.identity
    }

    /// The names of the component's imports, e.g. to check how much WASI it asks for.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    pub fn instantiate(
        &self,
        directory: Arc<dyn SubscriberDirectory>,
    ) -> Result<GuestInstance, CallError> {
        let state = GuestState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            directory,
            memory: StoreLimitsBuilder::new()
                .memory_size(self.limits.max_memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        let ticks = self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis();
        let ticks = u64::try_from(ticks).unwrap_or(u64::MAX).max(1);
        store.set_epoch_deadline(ticks);
        let bindings = self.pre.instantiate(&mut store).map_err(trapped)?;
        Ok(GuestInstance {
            store,
            bindings,
            deadline_ticks: ticks,
        })
    }
}

/// One instance of a guest, with its own memory. Not shared between threads.
pub struct GuestInstance {
    store: Store<GuestState>,
    bindings: CampaignTransform,
    /// `call_timeout` in epoch ticks, re-armed before every call.
    deadline_ticks: u64,
}

impl GuestInstance {
    pub fn version(&mut self) -> Result<String, CallError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.bindings
            .campaign_push_transform_transform()
            .call_version(&mut self.store)
            .map_err(trapped)
    }

    /// Transforms `events` at `now` within `budget`: one outcome per event, in order.
    pub fn transform_batch(
        &mut self,
        now: i64,
        events: &[InputEvent],
        budget: Budget,
    ) -> Result<Vec<Outcome>, CallError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let outcomes = self
            .bindings
            .campaign_push_transform_transform()
            .call_transform_batch(&mut self.store, now, events, budget)
            .map_err(trapped)?
            .map_err(|wit::BatchError::NowOutOfRange(now)| CallError::NowOutOfRange(now))?;
        if outcomes.len() != events.len() {
            return Err(CallError::OutcomeCount {
                sent: events.len(),
                returned: outcomes.len(),
            });
        }
        Ok(outcomes.into_iter().map(Outcome::from_wit).collect())
    }
}

/// The store's data: an empty WASI context (no files, sockets, environment or arguments) and the
/// subscriber directory behind the import.
struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    directory: Arc<dyn SubscriberDirectory>,
    memory: StoreLimits,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::campaign_push::transform::types::Host for GuestState {}

impl bindings::campaign_push::transform::subscribers::Host for GuestState {
    fn subscribers_of(
        &mut self,
        restaurant_id: String,
        after: Option<String>,
        limit: u32,
    ) -> wit::PackedStrings {
        let page = self
            .directory
            .clients_page(&restaurant_id, after.as_deref(), limit as usize);
        outcome::to_wit_packed(page)
    }
}

/// The directory used for the load-time probe, which only calls `version()`.
struct NoSubscribers;

impl SubscriberDirectory for NoSubscribers {
    fn clients_page(&self, _: &str, _: Option<&str>, _: usize) -> PackedStrings {
        PackedStrings::default()
    }
}

/// A failed guest call as a one-line reason (it becomes a dead letter's header): without the Wasm
/// backtrace, which goes to the debug log for the guest's developers.
fn trapped(error: wasmtime::Error) -> CallError {
    tracing::debug!(error = format!("{error:#}"), "guest call failed");
    // A trap's error is its cause wrapped in the backtrace; any other error is kept whole.
    let reason = if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        "it ran longer than guest.call_timeout (wasm trap: interrupt)".to_owned()
    } else if error.downcast_ref::<WasmBacktrace>().is_some() {
        error.root_cause().to_string()
    } else {
        format!("{error:#}")
    };
    CallError::Trap(reason)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the engine exists.
fn start_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("guest-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

/// A component's identity: the SHA-256 of its bytes, in lowercase hex.
pub fn sha256_of(wasm: &[u8]) -> String {
    hex(&Sha256::digest(wasm))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
