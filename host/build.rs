//! Stamps the binary with what `campaign-push --version` reports: the git commit it was built
//! from and the WIT world it hosts.

use std::path::Path;
use std::process::Command;

fn main() {
    let wit = Path::new("../wit/transform.wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    let text = std::fs::read_to_string(wit).expect("reading ../wit/transform.wit");
    println!("cargo:rustc-env=CAMPAIGN_PUSH_WIT_WORLD={}", world(&text));

    // A build outside a git checkout (e.g. from a source archive) can be told its revision.
    println!("cargo:rerun-if-env-changed=CAMPAIGN_PUSH_GIT_REV");
    let revision = std::env::var("CAMPAIGN_PUSH_GIT_REV")
        .ok()
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=CAMPAIGN_PUSH_GIT_REV={revision}");
}

/// `namespace:package/world@version`, from the file's `package` and `world` declarations.
fn world(text: &str) -> String {
    let declared = |keyword: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(keyword))
            .map(|rest| rest.trim_end_matches(['{', ';', ' ']).trim().to_owned())
            .unwrap_or_else(|| panic!("../wit/transform.wit declares no {keyword}"))
    };
    let package = declared("package ");
    let world = declared("world ");
    match package.split_once('@') {
        Some((name, version)) => format!("{name}/{world}@{version}"),
        None => format!("{package}/{world}"),
    }
}

/// The commit checked out, and a rebuild whenever it moves (a commit, a checkout).
fn git_revision() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    // A file that does not exist would make cargo run this script on every build.
    let watch = |path: Option<String>| {
        if let Some(path) = path.filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    };
    watch(git(&["rev-parse", "--git-path", "HEAD"]));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &branch]));
        watch(git(&["rev-parse", "--git-path", "packed-refs"]));
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}
