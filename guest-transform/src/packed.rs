//! A list of strings packed into one buffer plus an offset table: the shape in which strings cross
//! the Wasm boundary (one copy per list instead of one allocation per string).

use crate::prelude::*;
/// See `packed-strings` in `wit/transform.wit`: string `i` is `data[ends[i-1]..ends[i]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedStrings {
    pub data: Vec<u8>,
    pub ends: Vec<u32>,
}

impl PackedStrings {
    pub fn with_capacity(strings: usize, bytes: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(strings),
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn push(&mut self, s: &str) {
        self.data.extend_from_slice(s.as_bytes());
        self.seal();
    }

    /// Ends the string that the caller has been appending to `data` directly.
    ///
    /// # Panics
    /// If the buffer outgrows `u32`, which the WIT offsets cannot express.
    pub fn seal(&mut self) {
        let end = u32::try_from(self.data.len()).expect("packed strings exceed 4 GiB");
        self.ends.push(end);
    }

    /// Iterates over the strings. Yields `None` for an entry whose offsets are out of order or
    /// out of bounds, or whose bytes are not UTF-8: a buffer from the other side of the boundary
    /// is checked, not trusted.
    pub fn iter(&self) -> impl Iterator<Item = Option<&str>> + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let end = end as usize;
            let entry = self
                .data
                .get(start..end)
                .and_then(|bytes| core::str::from_utf8(bytes).ok());
            start = end;
            entry
        })
    }
}

impl<'a> FromIterator<&'a str> for PackedStrings {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let mut packed = PackedStrings::default();
        for s in iter {
            packed.push(s);
        }
        packed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_strings_including_empty_and_non_ascii() {
        let input = ["a", "", "клиент", "z"];
        let packed: PackedStrings = input.iter().copied().collect();
        assert_eq!(packed.len(), 4);
        assert_eq!(packed.ends, vec![1, 1, 13, 14]);
        let output: Vec<_> = packed.iter().map(Option::unwrap).collect();
        assert_eq!(output, input);
    }

    #[test]
    fn flags_entries_with_bad_offsets_or_bytes() {
        let packed = PackedStrings {
            data: vec![b'o', b'k', 0xff, b'x'],
            ends: vec![2, 3, 99, 1],
        };
        let entries: Vec<_> = packed.iter().collect();
        assert_eq!(entries, vec![Some("ok"), None, None, None]);
    }
}
