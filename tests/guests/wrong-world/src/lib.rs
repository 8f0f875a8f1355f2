//! An evil guest: a well-formed component of the wrong world (see `wit/world.wit`). It must be
//! refused at load, before it is ever called, and the guest in service must keep serving.

mod bindings {
    wit_bindgen::generate!({ world: "campaign-transform", path: "wit" });
}

use bindings::exports::campaign_push::transform::transform::Guest;

struct WrongWorld;

impl Guest for WrongWorld {
    fn version() -> String {
        "evil: the wrong world".into()
    }

    fn transform_batch(_now: i64, values: Vec<Vec<u8>>) -> Vec<String> {
        values.into_iter().map(|_| String::new()).collect()
    }
}

bindings::export!(WrongWorld with_types_in bindings);
