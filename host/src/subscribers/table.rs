//! The in-memory copy of `subscribers_restaurants`: a pure data structure, no I/O, no clock.
//!
//! Rows are grouped by restaurant, because the one question asked on the hot path is "who is
//! subscribed to this restaurant". Each restaurant's clients sit in an [`Arc`]ed [`ClientList`]:
//! a reader clones the `Arc` under a short read lock and formats outside it, and a writer changes
//! the list in place ([`Arc::make_mut`]), copying only that one restaurant's list and only when a
//! reader happens to hold it. No change ever copies the whole table.
//!
//! Row ids are kept, so that of two rows subscribing the same client to the same restaurant,
//! deleting one leaves the other (and the client subscribed).

use std::collections::HashMap;
use std::sync::Arc;

use guest_transform::PackedStrings;
use uuid::Uuid;

use super::change::Change;
use super::key::{IdKey, Interner, UUID_TEXT_LEN, canonical_uuid};
use crate::guest::SubscriberDirectory;

/// The clients of one restaurant, with the id of the row that subscribed each, in ascending byte
/// order of the client id's text: the order in which a fan-out walks them, so that a fan-out cut
/// into parts can go on after the last client it reached (see [`ClientList::page`]).
///
/// Canonical UUIDs and other texts are kept apart so that a UUID costs 16 bytes plus the 4-byte
/// row id. The canonical text of a UUID (lowercase hex, hyphens at fixed places) sorts like its
/// bytes, so each vector is sorted by its own key and a page merges the two.
#[derive(Debug, Clone, Default)]
pub struct ClientList {
    uuids: Vec<(Uuid, i32)>,
    texts: Vec<(Arc<str>, i32)>,
}

impl ClientList {
    pub fn len(&self) -> usize {
        self.uuids.len() + self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every client id as exact text, in order, duplicates included.
    pub fn pack(&self) -> PackedStrings {
        self.page(None, usize::MAX)
    }

    /// Up to `limit` client ids as exact text, in order, starting after `after` (exclusive):
    /// one allocation for the bytes, one for the offsets, UUIDs formatted straight into the
    /// buffer. Duplicates (two rows subscribing one client) come back next to each other.
    pub fn page(&self, after: Option<&str>, limit: usize) -> PackedStrings {
        let (mut u, mut t) = match after {
            None => (0, 0),
            Some(after) => {
                let after = after.as_bytes();
                let mut buffer = [0u8; UUID_TEXT_LEN];
                (
                    self.uuids.partition_point(|(uuid, _)| {
                        uuid_text(uuid, &mut buffer).as_bytes() <= after
                    }),
                    self.texts
                        .partition_point(|(text, _)| text.as_bytes() <= after),
                )
            }
        };
        let count = limit.min(self.len() - u - t);
        let mut packed = PackedStrings::with_capacity(count, count * UUID_TEXT_LEN);
        let mut buffer = [0u8; UUID_TEXT_LEN];
        while packed.len() < limit {
            let uuid = self
                .uuids
                .get(u)
                .map(|(uuid, _)| uuid_text(uuid, &mut buffer));
            let text = self.texts.get(t).map(|(text, _)| &**text);
            match (uuid, text) {
                (Some(uuid), Some(text)) if text < uuid => {
                    packed.push(text);
                    t += 1;
                }
                (Some(uuid), _) => {
                    packed.push(uuid);
                    u += 1;
                }
                (None, Some(text)) => {
                    packed.push(text);
                    t += 1;
                }
                (None, None) => break,
            }
        }
        packed
    }

    /// `(row id, client id)` pairs, for tests and diagnostics (allocates per UUID).
    pub fn entries(&self) -> impl Iterator<Item = (i32, String)> + '_ {
        let uuids = self
            .uuids
            .iter()
            .map(|(uuid, row)| (*row, uuid.hyphenated().to_string()));
        uuids.chain(
            self.texts
                .iter()
                .map(|(text, row)| (*row, text.to_string())),
        )
    }

    /// Adds row `row`, in order, or at the end when the list is being loaded (see
    /// [`TableLoader`]).
    fn insert(&mut self, row: i32, client: Client, order: Order) {
        match (client, order) {
            (Client::Uuid(uuid), Order::Kept) => {
                let at = self.uuids.partition_point(|(other, _)| *other <= uuid);
                self.uuids.insert(at, (uuid, row));
            }
            (Client::Text(text), Order::Kept) => {
                let at = self.texts.partition_point(|(other, _)| **other <= *text);
                self.texts.insert(at, (text, row));
            }
            (Client::Uuid(uuid), Order::Deferred) => self.uuids.push((uuid, row)),
            (Client::Text(text), Order::Deferred) => self.texts.push((text, row)),
        }
    }

    fn sort(&mut self) {
        self.uuids.sort_unstable_by_key(|(uuid, _)| *uuid);
        self.texts.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    }

    /// Removes row `row`; returns its client text if it had one, for the interner.
    fn remove(&mut self, row: i32) -> Option<Arc<str>> {
        if let Some(i) = self.uuids.iter().position(|&(_, r)| r == row) {
            self.uuids.remove(i);
            return None;
        }
        let i = self.texts.iter().position(|&(_, r)| r == row)?;
        Some(self.texts.remove(i).0)
    }

    /// Whether row `row` is here with exactly this client id.
    fn holds(&self, row: i32, client_id: &str) -> bool {
        if let Some(&(uuid, _)) = self.uuids.iter().find(|&&(_, r)| r == row) {
            return canonical_uuid(client_id) == Some(uuid);
        }
        self.texts
            .iter()
            .any(|(text, r)| *r == row && &**text == client_id)
    }

    fn heap_bytes(&self) -> usize {
        self.uuids.capacity() * size_of::<(Uuid, i32)>()
            + self.texts.capacity() * size_of::<(Arc<str>, i32)>()
    }
}

/// The canonical text of `uuid`, formatted into `buffer`.
fn uuid_text<'b>(uuid: &Uuid, buffer: &'b mut [u8; UUID_TEXT_LEN]) -> &'b str {
    uuid.hyphenated().encode_lower(buffer)
}

/// Whether an insertion keeps a client list in order, or leaves that to one sort at the end of a
/// load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Kept,
    Deferred,
}

enum Client {
    Uuid(Uuid),
    Text(Arc<str>),
}

#[derive(Debug)]
struct Restaurant {
    id: IdKey,
    clients: Arc<ClientList>,
}

/// What applying a [`Change`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// The table already was in the state the change describes (a replay, or an unknown id).
    Unchanged,
    /// The change needs the database: see [`Change::needs_database`]. Nothing was done.
    NeedsDatabase,
}

/// `subscribers_restaurants` in memory. See the module documentation.
#[derive(Default)]
pub struct SubscriberTable {
    /// Restaurants by slot; `None` marks a free slot (listed in `free_slots`).
    restaurants: Vec<Option<Restaurant>>,
    free_slots: Vec<u32>,
    by_uuid: HashMap<Uuid, u32>,
    by_text: HashMap<Arc<str>, u32>,
    /// Row id to restaurant slot: 8 bytes a row instead of a copy of the restaurant id.
    rows: HashMap<i32, u32>,
    interner: Interner,
}

impl SubscriberTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The table made of these `(id, client_id, restaurant_id)` rows.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = (i32, &'a str, &'a str)>) -> Self {
        let mut loader = TableLoader::default();
        for (id, client_id, restaurant_id) in rows {
            loader.upsert(id, client_id, restaurant_id);
        }
        loader.finish()
    }

    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    pub fn restaurant_count(&self) -> usize {
        self.by_uuid.len() + self.by_text.len()
    }

    /// The clients of `restaurant_id` (exact text), if it has any.
    pub fn clients(&self, restaurant_id: &str) -> Option<Arc<ClientList>> {
        let slot = match canonical_uuid(restaurant_id) {
            Some(uuid) => self.by_uuid.get(&uuid),
            None => self.by_text.get(restaurant_id),
        }?;
        let restaurant = self.restaurants[*slot as usize].as_ref()?;
        Some(Arc::clone(&restaurant.clients))
    }

    /// Row `id` as `(client_id, restaurant_id)`, for tests and diagnostics.
    pub fn row(&self, id: i32) -> Option<(String, String)> {
        let slot = *self.rows.get(&id)?;
        let restaurant = self.restaurants[slot as usize].as_ref()?;
        let (_, client) = restaurant.clients.entries().find(|(row, _)| *row == id)?;
        let restaurant_id = match &restaurant.id {
            IdKey::Uuid(uuid) => uuid.hyphenated().to_string(),
            IdKey::Text(text) => text.to_string(),
        };
        Some((client, restaurant_id))
    }

    /// Sets row `id` to these values, inserting it or moving it; a replay of the current values
    /// changes nothing.
    pub fn upsert(&mut self, id: i32, client_id: &str, restaurant_id: &str) -> Applied {
        self.upsert_in(id, client_id, restaurant_id, Order::Kept)
    }

    fn upsert_in(
        &mut self,
        id: i32,
        client_id: &str,
        restaurant_id: &str,
        order: Order,
    ) -> Applied {
        if let Some(&slot) = self.rows.get(&id) {
            if self.slot_of(restaurant_id) == Some(slot) && self.list(slot).holds(id, client_id) {
                return Applied::Unchanged;
            }
            self.delete(id);
        }
        let client = match canonical_uuid(client_id) {
            Some(uuid) => Client::Uuid(uuid),
            None => Client::Text(self.interner.intern(client_id)),
        };
        let slot = self.slot_or_insert(restaurant_id);
        let restaurant = self.restaurants[slot as usize]
            .as_mut()
            .expect("a slot just looked up is live");
        Arc::make_mut(&mut restaurant.clients).insert(id, client, order);
        self.rows.insert(id, slot);
        Applied::Changed
    }

    /// Removes row `id`; an unknown id changes nothing.
    pub fn delete(&mut self, id: i32) -> Applied {
        let Some(slot) = self.rows.remove(&id) else {
            return Applied::Unchanged;
        };
        let restaurant = self.restaurants[slot as usize]
            .as_mut()
            .expect("rows point at live slots");
        if let Some(text) = Arc::make_mut(&mut restaurant.clients).remove(id) {
            self.interner.release(text);
        }
        if restaurant.clients.is_empty() {
            self.free_slot(slot);
        }
        Applied::Changed
    }

    pub fn apply(&mut self, change: &Change) -> Applied {
        match change {
            Change::Upsert {
                id,
                client_id,
                restaurant_id,
            } => self.upsert(*id, client_id, restaurant_id),
            Change::Update {
                old_id,
                id,
                client_id,
                restaurant_id,
            } => {
                let removed = if old_id != id {
                    self.delete(*old_id)
                } else {
                    Applied::Unchanged
                };
                match (removed, self.upsert(*id, client_id, restaurant_id)) {
                    (Applied::Unchanged, Applied::Unchanged) => Applied::Unchanged,
                    _ => Applied::Changed,
                }
            }
            Change::Delete { id } => self.delete(*id),
            Change::Refetch { .. } | Change::Truncate => Applied::NeedsDatabase,
        }
    }

    /// Heap bytes held, approximately (from capacities; allocator overhead not counted).
    pub fn heap_bytes(&self) -> usize {
        // hashbrown: one control byte per bucket besides the entry.
        let map = |capacity: usize, entry: usize| capacity * (entry + 1);
        let lists: usize = self
            .restaurants
            .iter()
            .flatten()
            .map(|r| 16 + size_of::<ClientList>() + r.clients.heap_bytes())
            .sum();
        self.restaurants.capacity() * size_of::<Option<Restaurant>>()
            + self.free_slots.capacity() * size_of::<u32>()
            + map(self.by_uuid.capacity(), size_of::<(Uuid, u32)>())
            + map(self.by_text.capacity(), size_of::<(Arc<str>, u32)>())
            + map(self.rows.capacity(), size_of::<(i32, u32)>())
            + lists
            + self.interner.heap_bytes()
    }

    fn list(&self, slot: u32) -> &ClientList {
        &self.restaurants[slot as usize]
            .as_ref()
            .expect("rows point at live slots")
            .clients
    }

    fn slot_of(&self, restaurant_id: &str) -> Option<u32> {
        match canonical_uuid(restaurant_id) {
            Some(uuid) => self.by_uuid.get(&uuid).copied(),
            None => self.by_text.get(restaurant_id).copied(),
        }
    }

    fn slot_or_insert(&mut self, restaurant_id: &str) -> u32 {
        if let Some(slot) = self.slot_of(restaurant_id) {
            return slot;
        }
        let id = match canonical_uuid(restaurant_id) {
            Some(uuid) => IdKey::Uuid(uuid),
            None => IdKey::Text(self.interner.intern(restaurant_id)),
        };
        let restaurant = Restaurant {
            id: id.clone(),
            clients: Arc::default(),
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.restaurants[slot as usize] = Some(restaurant);
                slot
            }
            None => {
                let slot =
                    u32::try_from(self.restaurants.len()).expect("fewer than 2^32 restaurants");
                self.restaurants.push(Some(restaurant));
                slot
            }
        };
        match id {
            IdKey::Uuid(uuid) => self.by_uuid.insert(uuid, slot),
            IdKey::Text(text) => self.by_text.insert(text, slot),
        };
        slot
    }

    fn free_slot(&mut self, slot: u32) {
        let Some(restaurant) = self.restaurants[slot as usize].take() else {
            return;
        };
        match restaurant.id {
            IdKey::Uuid(uuid) => {
                self.by_uuid.remove(&uuid);
            }
            IdKey::Text(text) => {
                self.by_text.remove(&text);
                self.interner.release(text);
            }
        }
        self.free_slots.push(slot);
    }
}

/// Builds a [`SubscriberTable`] from many rows, e.g. a full load of the database table: each
/// restaurant's clients are sorted once at the end, where keeping them in order row by row would
/// cost quadratic time for a restaurant with a million subscribers.
#[derive(Debug, Default)]
pub struct TableLoader {
    table: SubscriberTable,
}

impl TableLoader {
    /// As [`SubscriberTable::upsert`].
    pub fn upsert(&mut self, id: i32, client_id: &str, restaurant_id: &str) -> Applied {
        self.table
            .upsert_in(id, client_id, restaurant_id, Order::Deferred)
    }

    pub fn finish(mut self) -> SubscriberTable {
        for restaurant in self.table.restaurants.iter_mut().flatten() {
            Arc::make_mut(&mut restaurant.clients).sort();
        }
        self.table
    }
}

/// Counts only: the table may hold millions of rows.
impl std::fmt::Debug for SubscriberTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberTable")
            .field("rows", &self.row_count())
            .field("restaurants", &self.restaurant_count())
            .finish_non_exhaustive()
    }
}

impl SubscriberDirectory for SubscriberTable {
    fn clients_page(
        &self,
        restaurant_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> PackedStrings {
        self.clients(restaurant_id)
            .map_or_else(PackedStrings::default, |list| list.page(after, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R0: &str = "123e4567-e89b-12d3-a456-426614174000";
    const R1: &str = "123e4567-e89b-12d3-a456-426614174001";
    const C9: &str = "923e4567-e89b-12d3-a456-426614174000";

    fn sorted(table: &SubscriberTable, restaurant: &str) -> Vec<String> {
        let mut clients: Vec<String> = table
            .clients_page(restaurant, None, usize::MAX)
            .iter()
            .map(|s| s.unwrap().to_owned())
            .collect();
        clients.sort();
        clients
    }

    /// The invariants between the maps, checked after every step of the tests.
    fn check(table: &SubscriberTable) {
        let listed: usize = table
            .restaurants
            .iter()
            .flatten()
            .map(|r| r.clients.len())
            .sum();
        assert_eq!(listed, table.row_count());
        let live = table.restaurants.iter().flatten().count();
        assert_eq!(live, table.restaurant_count());
        assert_eq!(live + table.free_slots.len(), table.restaurants.len());
        for restaurant in table.restaurants.iter().flatten() {
            assert!(
                !restaurant.clients.is_empty(),
                "empty restaurants are freed"
            );
        }
        for (&row, &slot) in &table.rows {
            assert!(table.list(slot).entries().any(|(r, _)| r == row));
        }
    }

    fn sample() -> SubscriberTable {
        let clients = ["223e", "323e", "423e", "523e", "623e", "723e", "823e"];
        let mut rows: Vec<(i32, String, &str)> = clients
            .iter()
            .zip(1..)
            .map(|(c, id)| (id, format!("{c}4567-e89b-12d3-a456-426614174000"), R0))
            .collect();
        rows.push((8, C9.to_owned(), R1));
        rows.push((9, C9.to_owned(), R1));
        rows.push((10, "023e4567-e89b-12d3-a456-426614174000".to_owned(), R0));
        let table = SubscriberTable::from_rows(rows.iter().map(|(i, c, r)| (*i, c.as_str(), *r)));
        check(&table);
        table
    }

    #[test]
    fn sample_rows_give_the_worked_example() {
        let table = sample();
        assert_eq!(table.row_count(), 10);
        assert_eq!(table.restaurant_count(), 2);
        let r0 = sorted(&table, R0);
        assert_eq!(r0.len(), 8);
        assert_eq!(r0[0], "023e4567-e89b-12d3-a456-426614174000");
        assert_eq!(sorted(&table, R1), vec![C9, C9]);
        assert!(table.clients_page("nobody", None, 1).is_empty());
        // Exact text: the uppercase spelling of a stored lowercase id is another restaurant.
        assert!(table.clients_page(&R0.to_uppercase(), None, 1).is_empty());
    }

    #[test]
    fn non_canonical_ids_come_back_exactly() {
        let upper = "123E4567-E89B-12D3-A456-426614174000";
        let braced = "{123e4567-e89b-12d3-a456-426614174000}";
        let mut table = SubscriberTable::new();
        table.upsert(1, upper, "abc");
        table.upsert(2, "abc", upper);
        table.upsert(3, braced, "abc");
        table.upsert(4, R0, "abc");
        check(&table);
        assert_eq!(sorted(&table, "abc"), vec![upper, R0, braced]);
        assert_eq!(sorted(&table, upper), vec!["abc"]);
        assert!(table.clients_page(R0, None, 1).is_empty());
        assert_eq!(table.row(2), Some(("abc".into(), upper.into())));
        // "abc" as client and as restaurant is one shared text, as is `upper`, plus `braced`.
        assert_eq!(table.interner.len(), 3);
        assert!(table.clients("abc").unwrap().texts.len() == 2);
        assert!(table.clients("abc").unwrap().uuids.len() == 1);
    }

    #[test]
    fn deleting_one_of_two_duplicate_rows_keeps_the_client() {
        let mut table = sample();
        assert_eq!(table.delete(8), Applied::Changed);
        check(&table);
        assert_eq!(sorted(&table, R1), vec![C9]);
        assert_eq!(table.delete(9), Applied::Changed);
        check(&table);
        assert!(table.clients_page(R1, None, 1).is_empty());
        assert_eq!(table.restaurant_count(), 1);
    }

    #[test]
    fn update_moves_a_row_between_restaurants() {
        let mut table = sample();
        let change = Change::Update {
            old_id: 1,
            id: 1,
            client_id: "223e4567-e89b-12d3-a456-426614174000".into(),
            restaurant_id: R1.into(),
        };
        assert_eq!(table.apply(&change), Applied::Changed);
        check(&table);
        assert_eq!(sorted(&table, R0).len(), 7);
        assert_eq!(sorted(&table, R1).len(), 3);
        assert_eq!(table.apply(&change), Applied::Unchanged, "replay");
        // An update that changes the row id too.
        let renumber = Change::Update {
            old_id: 1,
            id: 100,
            client_id: "x".into(),
            restaurant_id: "new".into(),
        };
        assert_eq!(table.apply(&renumber), Applied::Changed);
        check(&table);
        assert_eq!(table.row(1), None);
        assert_eq!(table.row(100), Some(("x".into(), "new".into())));
        assert_eq!(sorted(&table, R1), vec![C9, C9]);
        assert_eq!(table.row_count(), 10);
    }

    #[test]
    fn replays_are_idempotent_and_unknown_deletes_are_no_ops() {
        let mut table = sample();
        assert_eq!(table.upsert(8, C9, R1), Applied::Unchanged);
        assert_eq!(
            table.upsert(10, "023e4567-e89b-12d3-a456-426614174000", R0),
            Applied::Unchanged
        );
        assert_eq!(table.delete(12345), Applied::Unchanged);
        check(&table);
        assert_eq!(table.row_count(), 10);
        assert_eq!(sorted(&table, R1), vec![C9, C9]);
        // Same id, new client: replaced, not added.
        assert_eq!(table.upsert(8, "other", R1), Applied::Changed);
        check(&table);
        assert_eq!(sorted(&table, R1), vec![C9, "other"]);
        assert_eq!(table.row_count(), 10);
    }

    #[test]
    fn replaying_a_log_suffix_over_a_later_snapshot_converges() {
        // Row 5 inserted, deleted, re-inserted elsewhere; the snapshot already saw all of it.
        let log = [
            Change::Upsert {
                id: 5,
                client_id: "a".into(),
                restaurant_id: "r".into(),
            },
            Change::Delete { id: 5 },
            Change::Upsert {
                id: 5,
                client_id: "a".into(),
                restaurant_id: "s".into(),
            },
            Change::Upsert {
                id: 6,
                client_id: "b".into(),
                restaurant_id: "r".into(),
            },
            Change::Delete { id: 6 },
        ];
        let mut truth = SubscriberTable::new();
        for change in &log {
            truth.apply(change);
        }
        for start in 0..log.len() {
            let mut replayed = SubscriberTable::from_rows([(5, "a", "s")]);
            for change in &log[start..] {
                replayed.apply(change);
            }
            check(&replayed);
            assert_eq!(sorted(&replayed, "s"), sorted(&truth, "s"), "from {start}");
            assert_eq!(sorted(&replayed, "r"), sorted(&truth, "r"), "from {start}");
            assert_eq!(replayed.row_count(), truth.row_count());
        }
    }

    #[test]
    fn a_full_reload_replaces_the_content() {
        let mut table = sample();
        let reloaded = SubscriberTable::from_rows([(11, "z", R1)]);
        let old = std::mem::replace(&mut table, reloaded);
        assert_eq!(old.row_count(), 10);
        assert_eq!(table.row_count(), 1);
        assert_eq!(sorted(&table, R1), vec!["z"]);
        assert!(table.clients_page(R0, None, 1).is_empty());
    }

    #[test]
    fn changes_needing_the_database_are_left_alone() {
        let mut table = sample();
        let refetch = Change::Refetch {
            old_id: Some(1),
            id: 1,
        };
        assert_eq!(table.apply(&refetch), Applied::NeedsDatabase);
        assert_eq!(table.apply(&Change::Truncate), Applied::NeedsDatabase);
        assert_eq!(table.row_count(), 10);
    }

    #[test]
    fn a_reader_keeps_its_copy_while_the_writer_moves_on() {
        let mut table = sample();
        let held = table.clients(R1).unwrap();
        table.delete(8);
        table.upsert(20, "late", R1);
        assert_eq!(held.len(), 2, "the reader's list is unchanged");
        assert_eq!(table.clients(R1).unwrap().len(), 2);
        assert_eq!(sorted(&table, R1), vec![C9, "late"]);
    }

    #[test]
    fn freed_slots_and_texts_are_reused_and_forgotten() {
        let mut table = SubscriberTable::new();
        for round in 0..3 {
            for i in 0..100 {
                table.upsert(i, &format!("client-{i}"), &format!("restaurant-{}", i % 10));
            }
            check(&table);
            assert_eq!(table.restaurant_count(), 10);
            for i in 0..100 {
                table.delete(i);
            }
            check(&table);
            assert_eq!(table.restaurant_count(), 0, "round {round}");
            assert_eq!(table.interner.len(), 0);
            assert!(table.restaurants.len() <= 10);
        }
    }

    fn page(
        table: &SubscriberTable,
        restaurant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<String> {
        table
            .clients_page(restaurant, after, limit)
            .iter()
            .map(|s| s.unwrap().to_owned())
            .collect()
    }

    #[test]
    fn pages_walk_uuids_and_texts_in_byte_order_whatever_the_insertion_order() {
        let upper = "123E4567-E89B-12D3-A456-426614174000";
        let clients = [C9, "zeta", upper, R1, "alpha", R0, C9, "{braced}"];
        let rows = || clients.iter().zip(1..).map(|(c, id)| (id, *c, "r"));
        let loaded = SubscriberTable::from_rows(rows());
        let mut incremental = SubscriberTable::new();
        for (id, client, restaurant) in rows() {
            incremental.upsert(id, client, restaurant);
        }
        let mut expected: Vec<&str> = clients.to_vec();
        expected.sort();
        for table in [&loaded, &incremental] {
            check(table);
            assert_eq!(page(table, "r", None, usize::MAX), expected);
            // Pages of 3 after the last id of the previous page: every id once, duplicates
            // adjacent, nothing skipped.
            let mut walked: Vec<String> = Vec::new();
            loop {
                let next = page(table, "r", walked.last().map(String::as_str), 3);
                walked.extend(next.iter().cloned());
                if next.len() < 3 {
                    break;
                }
            }
            // A duplicate may sit inside a page, never across a page boundary.
            walked.dedup();
            let mut distinct = expected.clone();
            distinct.dedup();
            assert_eq!(walked, distinct, "a page starts strictly after `after`");
            assert_eq!(page(table, "r", Some("1"), 2), vec![upper, R0]);
            assert_eq!(page(table, "r", Some("b"), 5), vec!["zeta", "{braced}"]);
            assert_eq!(page(table, "r", Some("{braced}"), 5), Vec::<String>::new());
            assert_eq!(page(table, "r", Some("{"), 5), vec!["{braced}"]);
        }
    }

    #[test]
    fn changes_keep_the_order_after_a_load() {
        let mut table = sample();
        table.upsert(30, "000-first", R0);
        table.upsert(31, "ffff-last", R0);
        table.delete(3);
        table.apply(&Change::Update {
            old_id: 4,
            id: 4,
            client_id: "7".into(),
            restaurant_id: R0.into(),
        });
        check(&table);
        let clients = page(&table, R0, None, usize::MAX);
        let mut sorted = clients.clone();
        sorted.sort();
        assert_eq!(clients, sorted);
        assert_eq!(clients.first().map(String::as_str), Some("000-first"));
        assert_eq!(clients.last().map(String::as_str), Some("ffff-last"));
        assert!(
            !clients.iter().any(|c| c.starts_with("423e")),
            "row 3 was deleted"
        );
        assert!(clients.iter().any(|c| c == "7"));
    }

    /// Prints the approximate memory per row of a UUID-only table (`--nocapture` to see it).
    #[test]
    fn memory_per_row_is_compact() {
        let rows = 200_000;
        let restaurants = 2_000;
        let id = |n: u128| Uuid::from_u128(n).hyphenated().to_string();
        let texts: Vec<(i32, String, String)> = (0..rows)
            .map(|i| (i as i32, id(1 << 64 | i), id(i % restaurants)))
            .collect();
        let table =
            SubscriberTable::from_rows(texts.iter().map(|(i, c, r)| (*i, c.as_str(), r.as_str())));
        let per_row = table.heap_bytes() as f64 / rows as f64;
        println!(
            "{rows} UUID rows over {restaurants} restaurants: ~{per_row:.1} heap bytes per row"
        );
        assert!(per_row < 80.0, "{per_row}");
    }
}
