//! Timestamps as serde strings, written the way chrono writes them (RFC 3339,
//! UTC as `Z`, the fraction in 0, 3, 6 or 9 digits: `2026-12-07T10:43:39.753750457Z`)
//! but in one `serialize_str` from a buffer on the stack.
//!
//! chrono's own `Serialize` formats through `collect_str` and `Display`: the text
//! reaches the serializer a character or two at a time, and serde_json escapes
//! each piece on its own. Every stored task, execution and event carries two to
//! four timestamps, and that formatting was a sixth of the store's JSON encoding.
//! Years outside 0..=9999 (written with a sign) go through chrono as before.
//! Reading is chrono's (`Deserialize` is unchanged).

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

/// The longest text [`write_text`] writes: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const LONGEST: usize = 30;

/// `#[serde(serialize_with = "...")]` for a `DateTime<Utc>`.
pub(crate) fn serialize<S: Serializer>(
    at: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut buffer = [0u8; LONGEST];
    match write_text(at, &mut buffer) {
        Some(text) => serializer.serialize_str(text),
        None => at.serialize(serializer),
    }
}

/// `#[serde(serialize_with = "...")]` for an `Option<DateTime<Utc>>`: `None` as
/// the format's none (`null` in JSON), as the derive writes it.
pub(crate) fn serialize_option<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serializer.serialize_some(&Rfc3339(at)),
        None => serializer.serialize_none(),
    }
}

/// A timestamp that serializes through [`serialize`].
struct Rfc3339<'a>(&'a DateTime<Utc>);

impl Serialize for Rfc3339<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, serializer)
    }
}

/// The timestamp as chrono's `Serialize` writes it (`SecondsFormat::AutoSi`,
/// `Z`), or `None` for a year chrono writes with a sign.
fn write_text<'a>(at: &DateTime<Utc>, buffer: &'a mut [u8; LONGEST]) -> Option<&'a str> {
    let at = at.naive_utc();
    let year = u32::try_from(at.year()).ok().filter(|year| *year <= 9999)?;
    let mut second = at.second();
    let mut nano = at.nanosecond();
    // A leap second: chrono keeps it in the fraction and writes second 60.
    if nano >= 1_000_000_000 {
        second += 1;
        nano -= 1_000_000_000;
    }
    digits(&mut buffer[0..4], year);
    buffer[4] = b'-';
    digits(&mut buffer[5..7], at.month());
    buffer[7] = b'-';
    digits(&mut buffer[8..10], at.day());
    buffer[10] = b'T';
    digits(&mut buffer[11..13], at.hour());
    buffer[13] = b':';
    digits(&mut buffer[14..16], at.minute());
    buffer[16] = b':';
    digits(&mut buffer[17..19], second);
    let mut end = 19;
    let (fraction, width) = match nano {
        0 => (0, 0),
        _ if nano.is_multiple_of(1_000_000) => (nano / 1_000_000, 3),
        _ if nano.is_multiple_of(1_000) => (nano / 1_000, 6),
        _ => (nano, 9),
    };
    if width > 0 {
        buffer[end] = b'.';
        digits(&mut buffer[end + 1..end + 1 + width], fraction);
        end += 1 + width;
    }
    buffer[end] = b'Z';
    std::str::from_utf8(&buffer[..=end]).ok()
}

/// Writes `value`'s last `out.len()` decimal digits into `out`, zero-padded.
fn digits(out: &mut [u8], mut value: u32) {
    for place in out.iter_mut().rev() {
        // `value % 10` is below 10: the cast keeps it.
        *place = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Serialize)]
    struct Ours {
        #[serde(serialize_with = "serialize")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "serialize_option")]
        maybe: Option<DateTime<Utc>>,
    }

    #[derive(Serialize)]
    struct Chronos {
        at: DateTime<Utc>,
        maybe: Option<DateTime<Utc>>,
    }

    fn both(at: DateTime<Utc>, maybe: Option<DateTime<Utc>>) -> (String, String) {
        (
            serde_json::to_string(&Ours { at, maybe }).unwrap(),
            serde_json::to_string(&Chronos { at, maybe }).unwrap(),
        )
    }

    /// Nanoseconds of each shape chrono writes differently (none, whole
    /// milliseconds, whole microseconds, any), in an ordinary second or in a
    /// leap second (1e9 more).
    fn nanos() -> impl Strategy<Value = u32> {
        let fraction = prop_oneof![
            Just(0u32),
            (1..1_000u32).prop_map(|ms| ms * 1_000_000),
            (1..1_000_000u32).prop_map(|us| us * 1_000),
            0..1_000_000_000u32,
        ];
        (fraction, any::<bool>())
            .prop_map(|(nano, leap)| if leap { nano + 1_000_000_000 } else { nano })
    }

    proptest! {
        #[test]
        fn writes_what_chrono_writes(
            // From before year 0 to past 9999: those go through chrono.
            seconds in -62_400_000_000i64..254_000_000_000i64,
            nano in nanos(),
            none in any::<bool>(),
        ) {
            // A leap second's nanoseconds are valid only in a minute's last second.
            let seconds = if nano >= 1_000_000_000 {
                seconds - seconds.rem_euclid(60) + 59
            } else {
                seconds
            };
            let at = DateTime::from_timestamp(seconds, nano).unwrap();
            let (ours, chronos) = both(at, (!none).then_some(at));
            prop_assert_eq!(ours, chronos);
        }
    }

    #[test]
    fn examples() {
        let at = |s: i64, n: u32| DateTime::from_timestamp(s, n).unwrap();
        let text = |at: DateTime<Utc>| {
            serde_json::to_value(Ours { at, maybe: None }).unwrap()["at"].clone()
        };
        assert_eq!(
            text(at(1_796_640_219, 753_750_457)),
            "2026-12-07T10:43:39.753750457Z"
        );
        assert_eq!(
            text(at(1_796_640_219, 753_000_000)),
            "2026-12-07T10:43:39.753Z"
        );
        assert_eq!(
            text(at(1_796_640_219, 753_750_000)),
            "2026-12-07T10:43:39.753750Z"
        );
        assert_eq!(text(at(1_796_640_219, 0)), "2026-12-07T10:43:39Z");
        assert_eq!(
            text(at(1_796_640_239, 1_000_000_000)),
            "2026-12-07T10:43:60Z"
        );
        assert_eq!(text(at(-62_198_755_200, 0)), "-0001-01-01T00:00:00Z");
        assert_eq!(
            serde_json::to_value(Ours {
                at: at(0, 0),
                maybe: None
            })
            .unwrap()["maybe"],
            serde_json::Value::Null
        );
    }
}
