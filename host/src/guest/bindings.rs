//! Generated bindings for the `campaign-transform` world. Nothing else lives here.

wasmtime::component::bindgen!({
    world: "campaign-transform",
    path: "../wit",
});

pub use self::campaign_push::transform::types;
