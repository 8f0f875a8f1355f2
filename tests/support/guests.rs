//! The test guests of `tests/guests` (variants of the transform and evil guests), built once per
//! test process with cargo for wasm32-wasip2, and installing a guest file the way a deployment
//! does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::service::SERVICE_BIN;
use super::{repo_root, run, run_with_deadline};

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

/// A component and who it says it is, per `campaign-push guest-info`.
pub struct GuestBuild {
    pub bytes: Vec<u8>,
    pub version: String,
    pub sha256: String,
}

impl GuestBuild {
    pub fn read(path: &Path) -> Self {
        let finished = run(
            Command::new(SERVICE_BIN)
                .args(["guest-info", "--guest"])
                .arg(path),
            None,
        );
        finished.assert_success();
        let info: serde_json::Value = serde_json::from_slice(&finished.stdout).unwrap();
        Self {
            bytes: std::fs::read(path).unwrap(),
            version: info["version"].as_str().unwrap().to_owned(),
            sha256: info["sha256"].as_str().unwrap().to_owned(),
        }
    }
}

/// A guest file in a folder of its own, which a test's service is configured with and watches,
/// and which the test replaces.
pub struct GuestFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl GuestFile {
    pub fn new(initial: &GuestBuild) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("transform.wasm");
        install_guest(&path, &initial.bytes);
        Self { _dir: dir, path }
    }

    /// The service setting that makes it use (and watch) this file.
    pub fn setting(&self) -> (&'static str, &str) {
        ("CAMPAIGN_PUSH__GUEST__PATH", self.path.to_str().unwrap())
    }
}
