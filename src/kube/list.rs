//! Streamed decoding of a Kubernetes list (`{"metadata":…,"items":[…]}`):
//! the body is decoded as it is read, never held whole, through a reader that
//! counts every byte the decoder takes. The whole list is held to one cap and
//! each item to another, so a peer cannot make one item (or the list) as
//! large as it likes; the error says which cap was hit.

use std::cell::Cell;
use std::io::Read;
use std::marker::PhantomData;
use std::rc::Rc;

use serde::Deserialize;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The items of a list, and the list's resource version (to watch from).
#[derive(Debug, Clone, Default)]
pub struct List<T> {
    pub items: Vec<T>,
    pub resource_version: String,
}

/// Why a list did not decode.
#[derive(Debug)]
pub enum Error {
    /// Over the cap for the whole list.
    ListTooLarge,
    /// One item over the cap for an item.
    ItemTooLarge,
    /// Reading the body failed.
    Io(std::io::Error),
    /// Not a list of such items (serde_json's message).
    Json(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Over {
    List,
    Item,
}

/// Where the decoder is, shared between the reader and the decoding seeds.
#[derive(Default)]
struct Position {
    /// Bytes taken so far.
    at: Cell<u64>,
    /// Where the item being decoded began (None: not inside an item).
    item_start: Cell<Option<u64>>,
    over: Cell<Option<Over>>,
}

struct Counted<R> {
    inner: R,
    pos: Rc<Position>,
    list_cap: u64,
    item_cap: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.pos.at.get();
        let mut allowed = self.list_cap.saturating_sub(at);
        let mut which = Over::List;
        if let Some(start) = self.pos.item_start.get() {
            let item_left = (start + self.item_cap).saturating_sub(at);
            if item_left < allowed {
                allowed = item_left;
                which = Over::Item;
            }
        }
        if allowed == 0 && !buf.is_empty() {
            self.pos.over.set(Some(which));
            return Err(std::io::Error::other("over the cap"));
        }
        let want = buf
            .len()
            .min(usize::try_from(allowed).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.pos.at.set(at + n as u64);
        Ok(n)
    }
}

/// Decodes a list from `body`: at most `list_cap` bytes in all, each item at
/// most `item_cap` (the client uses `MAX_LIST_BYTES` and `MAX_OBJECT_BYTES`).
pub fn decode<T: DeserializeOwned>(
    body: impl Read,
    list_cap: u64,
    item_cap: u64,
) -> Result<List<T>, Error> {
    let pos = Rc::new(Position::default());
    let reader = Counted {
        // serde_json reads a byte at a time: buffer below the counter, so the
        // count is of what the decoder took, exactly.
        inner: std::io::BufReader::new(body),
        pos: pos.clone(),
        list_cap,
        item_cap,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let seed = ListSeed::<T> {
        pos: pos.clone(),
        _t: PhantomData,
    };
    let result = seed.deserialize(&mut de).and_then(|l| de.end().map(|_| l));
    result.map_err(|e| match pos.over.get() {
        Some(Over::List) => Error::ListTooLarge,
        Some(Over::Item) => Error::ItemTooLarge,
        None if e.is_io() => Error::Io(std::io::Error::from(e)),
        None => Error::Json(e.to_string()),
    })
}

struct ListSeed<T> {
    pos: Rc<Position>,
    _t: PhantomData<T>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ListMeta {
    resource_version: String,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for ListSeed<T> {
    type Value = List<T>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<List<T>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for ListSeed<T> {
    type Value = List<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes list object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<List<T>, A::Error> {
        let mut list = List {
            items: Vec::new(),
            resource_version: String::new(),
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "items" => {
                    list.items = map.next_value_seed(ItemsSeed::<T> {
                        pos: self.pos.clone(),
                        _t: PhantomData,
                    })?
                }
                "metadata" => {
                    list.resource_version = map.next_value::<ListMeta>()?.resource_version
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(list)
    }
}

struct ItemsSeed<T> {
    pos: Rc<Position>,
    _t: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for ItemsSeed<T> {
    type Value = Vec<T>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for ItemsSeed<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of items")
    }
    /// `"items": null` is an empty list.
    fn visit_unit<E>(self) -> Result<Vec<T>, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        loop {
            self.pos.item_start.set(Some(self.pos.at.get()));
            match seq.next_element::<T>()? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        self.pos.item_start.set(None);
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Item {
        name: String,
    }

    fn list(body: &[u8], list_cap: u64, item_cap: u64) -> Result<List<Item>, Error> {
        decode(body, list_cap, item_cap)
    }

    #[test]
    fn decodes_and_caps() {
        let body = br#"{"kind":"NodeList","metadata":{"resourceVersion":"42"},"items":[{"name":"a","x":[1,2]},{"name":"b"}]}"#;
        let l = list(body, 1 << 20, 1 << 10).unwrap();
        assert_eq!(l.resource_version, "42");
        assert_eq!(
            l.items,
            [Item { name: "a".into() }, Item { name: "b".into() }]
        );
        let empty = list(br#"{"items":null}"#, 100, 100).unwrap();
        assert!(empty.items.is_empty());
        // The whole list over its cap.
        assert!(matches!(list(body, 50, 1 << 10), Err(Error::ListTooLarge)));
        // One item over the item cap, the list within its own.
        let big = format!(
            r#"{{"items":[{{"name":"a"}},{{"name":"{}"}}]}}"#,
            "x".repeat(5000)
        );
        assert!(matches!(
            list(big.as_bytes(), 1 << 20, 1000),
            Err(Error::ItemTooLarge)
        ));
        // A big prelude is held only to the list cap.
        let prelude = format!(r#"{{"junk":"{}","items":[]}}"#, "y".repeat(5000));
        assert!(list(prelude.as_bytes(), 1 << 20, 1000).is_ok());
        assert!(matches!(
            list(b"{\"items\":[", 100, 100),
            Err(Error::Json(_))
        ));
        assert!(matches!(list(b"[1]", 100, 100), Err(Error::Json(_))));
    }
}
