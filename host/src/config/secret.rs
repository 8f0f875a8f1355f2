//! A value that must never reach a log line, an error message or a serialised document.

use std::fmt;

/// A password or similar credential.
///
/// `Debug` prints `Secret(***)` and `Display` prints `***`, so a `Secret` can sit in any struct
/// that is logged with `{:?}`. It deliberately implements neither `Serialize` nor `PartialEq` (a
/// comparison would invite timing leaks and secret-bearing test output). The only way to the value
/// is [`Secret::expose`], which makes every use greppable.
#[derive(Clone)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into_boxed_str())
    }

    /// The value itself, for handing to a client library. Never log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is the value, in time that does not depend on where they differ (so
    /// that a caller cannot find the value byte by byte from response times).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let value = self.0.as_bytes();
        let differences = value
            .iter()
            .zip(candidate)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // Reading the length is no leak: it is not secret among tokens of a known minimum size.
        value.len() == candidate.len() && std::hint::black_box(differences) == 0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn formatting_hides_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(Secret(***))");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn matches_only_the_whole_value() {
        let secret = Secret::new("hunter2");
        assert!(secret.matches(b"hunter2"));
        for other in [&b"hunter3"[..], b"hunter", b"hunter22", b"", b"Hunter2"] {
            assert!(!secret.matches(other), "{other:?}");
        }
    }
}
