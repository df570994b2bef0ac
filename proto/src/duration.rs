//! Durations as people write them in config and route files: `"500ms"`, `"5s"`,
//! `"1h30m"` (humantime's grammar). Use with `#[serde(with = "mesh_proto::duration")]`,
//! or [`option`] for an optional one.

use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serializer};

/// Parses a human duration, with an error message that says what is accepted.
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration \"{s}\" ({e}); write it like \"500ms\", \"5s\" or \"1h30m\""))
}

/// Formats a duration the way [`parse`] reads it back (`5s`, `1h 30m`).
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(de::Error::custom)
}

/// The same for `Option<Duration>`, absent meaning `None`; pair with `#[serde(default)]`.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (text, d) in [
            ("5s", Duration::from_secs(5)),
            ("500ms", Duration::from_millis(500)),
            ("1h30m", Duration::from_secs(5400)),
        ] {
            assert_eq!(parse(text), Ok(d));
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["", "5", "five seconds", "5 parsecs", "-1s"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("invalid duration"), "{err}");
        }
    }
}
