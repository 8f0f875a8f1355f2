//! How ids are held in memory: canonical UUID text as 16 bytes, any other text interned.
//!
//! Nearly every id in `subscribers_restaurants` is a UUID, and 16 bytes are a third of the 36
//! characters plus the allocation a `String` would cost. The columns are `varchar`, though, and the
//! contract compares them as exact text, so only the one spelling that formats back to the very
//! same characters (lowercase, hyphenated) may be stored as bytes; anything else ("ABC…" in
//! uppercase, braces, a plain name) is kept as text, shared between the rows that repeat it.

use std::collections::HashSet;
use std::sync::Arc;

use uuid::Uuid;

/// The length of a canonical hyphenated UUID.
pub(crate) const UUID_TEXT_LEN: usize = uuid::fmt::Hyphenated::LENGTH;

/// The UUID spelled by `text` if `text` is exactly what [`Uuid::hyphenated`] prints in lowercase,
/// so that formatting the 16 bytes again gives back the same text; `None` for any other text.
///
/// Equivalent to `Uuid::parse_str(text)` followed by a `to_string() == text` check, without the
/// allocation: the hot path calls this once per looked-up restaurant.
pub fn canonical_uuid(text: &str) -> Option<Uuid> {
    let bytes = text.as_bytes();
    if bytes.len() != UUID_TEXT_LEN {
        return None;
    }
    let well_formed = bytes.iter().enumerate().all(|(i, &c)| match i {
        8 | 13 | 18 | 23 => c == b'-',
        _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
    });
    if !well_formed {
        return None;
    }
    Uuid::try_parse_ascii(bytes).ok()
}

/// A restaurant id as a map key: see the module documentation for which form is used when.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IdKey {
    Uuid(Uuid),
    Text(Arc<str>),
}

/// One shared copy of each non-canonical id text, so that a client subscribed to a hundred
/// restaurants costs one allocation, not a hundred.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    texts: HashSet<Arc<str>>,
}

impl Interner {
    pub(crate) fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.texts.get(text) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(text);
        self.texts.insert(Arc::clone(&shared));
        shared
    }

    /// Gives back one reference; the text is forgotten when nobody else holds it any more.
    ///
    /// A reader that is still formatting an old copy of a client list holds references too; such
    /// a text stays until the next full load rebuilds the interner, which bounds the waste.
    pub(crate) fn release(&mut self, text: Arc<str>) {
        // Two references: the interner's and `text` itself.
        if Arc::strong_count(&text) == 2 {
            self.texts.remove(&*text);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }

    /// Heap bytes held, approximately: the set's slots plus each text's allocation.
    pub(crate) fn heap_bytes(&self) -> usize {
        let slots = self.texts.capacity() * (size_of::<Arc<str>>() + 1);
        // An `Arc<str>` allocation is two counters and the bytes, rounded up to 8.
        let texts: usize = self
            .texts
            .iter()
            .map(|t| (16 + t.len()).next_multiple_of(8))
            .sum();
        slots + texts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference definition of "canonical": parse, print, compare.
    fn canonical_by_round_trip(text: &str) -> Option<Uuid> {
        Uuid::parse_str(text).ok().filter(|u| u.to_string() == text)
    }

    #[test]
    fn only_the_lowercase_hyphenated_form_is_canonical() {
        let cases = [
            "123e4567-e89b-12d3-a456-426614174000",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "123E4567-E89B-12D3-A456-426614174000",
            "123e4567-e89b-12d3-a456-42661417400A",
            "{123e4567-e89b-12d3-a456-426614174000}",
            "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
            "123e4567e89b12d3a456426614174000",
            "123e4567-e89b-12d3-a456-42661417400",
            "123e4567-e89b-12d3-a456-4266141740000",
            "123e4567+e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-42661417400g",
            " 23e4567-e89b-12d3-a456-426614174000",
            "abc",
            "",
            "клиент-e89b-12d3-a456-426614174000",
        ];
        for text in cases {
            assert_eq!(
                canonical_uuid(text),
                canonical_by_round_trip(text),
                "{text:?}"
            );
        }
        assert!(canonical_uuid(cases[0]).is_some());
        assert!(canonical_uuid(cases[3]).is_none());
    }

    #[test]
    fn canonical_uuids_format_back_to_the_same_text() {
        let text = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
        let uuid = canonical_uuid(text).unwrap();
        let mut buffer = [0u8; UUID_TEXT_LEN];
        assert_eq!(uuid.hyphenated().encode_lower(&mut buffer), text);
    }

    #[test]
    fn interner_shares_and_forgets() {
        let mut interner = Interner::default();
        let a = interner.intern("abc");
        let b = interner.intern("abc");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(interner.len(), 1);
        interner.release(a);
        assert_eq!(interner.len(), 1, "b still holds it");
        interner.release(b);
        assert_eq!(interner.len(), 0);
    }
}
