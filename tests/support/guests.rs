//! The test guests of `tests/guests` (variants of the transform and evil guests), built once per
//! test process with cargo for wasm32-wasip2, and installing a guest file the way a deployment
//! does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::service::SERVICE_BIN;
use super::{repo_root, run_with_deadline};

/// A cold build compiles wit-bindgen's macro and serde for the guests' own target directory.
const BUILD_DEADLINE: Duration = Duration::from_secs(900);

/// The component of test guest `name` (its folder under `tests/guests`), built on first use.
pub fn test_guest(name: &str) -> PathBuf {
    let path = built_guests().join(format!("test_guest_{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} was not built: is `{name}` a member of tests/guests/Cargo.toml?",
        path.display()
    );
    path
}

fn built_guests() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Beside the service's own target directory, not in it: cargo locks a target directory
        // for as long as the `cargo test` that runs this code.
        let service_target = Path::new(SERVICE_BIN).parent().unwrap().parent().unwrap();
        let target_dir = service_target.join("test-guests");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run_with_deadline(
            Command::new(cargo)
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--manifest-path",
                ])
                .arg(repo_root().join("tests/guests/Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target_dir),
            None,
            BUILD_DEADLINE,
        )
        .assert_success();
        target_dir.join("wasm32-wasip2/release")
    })
}

/// Replaces `path` with `bytes` the way a deployment should: written beside it, then renamed over
/// it, so that a reader sees the old file or the new one and never a mix.
pub fn install_guest(path: &Path, bytes: &[u8]) {
    let staging = path.with_extension("wasm.partial");
    std::fs::write(&staging, bytes).expect("writing the staged guest");
    std::fs::rename(&staging, path).expect("renaming the staged guest into place");
}
