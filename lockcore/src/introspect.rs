//! The names serde knows for a type: a struct's fields, an enum's variants.
//!
//! They are read from what the type's derived `Deserialize` asks a deserializer for,
//! which is the very list the parser accepts (`deny_unknown_fields` refuses anything
//! else). The reference's generated tables (docs/reference.md) are held to these lists by tests, so a key or
//! a state cannot exist without being documented.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

/// The field names a struct's `Deserialize` accepts (renames applied); empty for a type
/// that is not deserialized as a struct.
pub fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    match names_asked_for::<T>() {
        Some(Asked::Fields(names)) => names,
        _ => &[],
    }
}

/// The variant names an enum's `Deserialize` accepts (renames applied); empty for a type
/// that is not deserialized as an enum.
pub fn enum_variants<T: DeserializeOwned>() -> &'static [&'static str] {
    match names_asked_for::<T>() {
        Some(Asked::Variants(names)) => names,
        _ => &[],
    }
}

#[derive(Clone, Copy)]
enum Asked {
    Fields(&'static [&'static str]),
    Variants(&'static [&'static str]),
}

fn names_asked_for<T: DeserializeOwned>() -> Option<Asked> {
    let found = Cell::new(None);
    // The probe always fails once it has seen the names: nothing is built.
    let _ = T::deserialize(NameProbe { found: &found });
    found.get()
}

/// A deserializer that records the names a `Deserialize` impl asks for, then stops.
struct NameProbe<'a> {
    found: &'a Cell<Option<Asked>>,
}

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("names recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for NameProbe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.found.set(Some(Asked::Fields(fields)));
        Err(Stop)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.found.set(Some(Asked::Variants(variants)));
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        plain: u32,
        #[serde(rename = "match")]
        pattern: Option<String>,
    }

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Kind {
        First,
        GivenUp,
    }

    #[test]
    fn fields_and_variants_come_with_their_renames() {
        assert_eq!(struct_fields::<Sample>(), ["plain", "match"]);
        assert_eq!(enum_variants::<Kind>(), ["first", "given_up"]);
        assert!(struct_fields::<u32>().is_empty());
        assert!(enum_variants::<Sample>().is_empty());
    }
}
