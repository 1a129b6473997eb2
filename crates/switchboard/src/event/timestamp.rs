//! `CreationDateUtc`: a UTC instant written as exactly fourteen digits, `yyyyMMddHHmmss`.

use std::fmt;

use time::{Date, Month, OffsetDateTime, Time};

/// A validated `yyyyMMddHHmmss` instant. It is kept as the number those digits spell, which orders
/// the same way as time does and is what the store indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Parses the wire form; the message says what is wrong, for a 422.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must be exactly 14 digits, yyyyMMddHHmmss");
        }
        let n = |r: std::ops::Range<usize>| s[r].parse::<u16>().unwrap_or(u16::MAX);
        let (year, month, day) = (n(0..4), n(4..6) as u8, n(6..8) as u8);
        let (hour, minute, second) = (n(8..10) as u8, n(10..12) as u8, n(12..14) as u8);
        let month = Month::try_from(month).map_err(|_| "month must be 01 to 12")?;
        Date::from_calendar_date(i32::from(year), month, day)
            .map_err(|_| "day does not exist in that month")?;
        Time::from_hms(hour, minute, second).map_err(|_| "time of day must be 000000 to 235959")?;
        Ok(Self(s.parse().unwrap_or_default()))
    }

    /// The value stored by the database; only ever built from [`Timestamp::as_i64`].
    pub fn from_stored(n: i64) -> Self {
        Self(n)
    }

    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    pub fn from_datetime(t: OffsetDateTime) -> Self {
        let d =
            i64::from(t.year()) * 10_000 + i64::from(t.month() as u8) * 100 + i64::from(t.day());
        let hms =
            i64::from(t.hour()) * 10_000 + i64::from(t.minute()) * 100 + i64::from(t.second());
        Self(d * 1_000_000 + hms)
    }

    /// The second holding unix milliseconds `ms` (UTC); the epoch for what cannot be shown.
    pub fn from_unix_ms(ms: i64) -> Self {
        let t = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Self::from_datetime(t)
    }

    pub fn as_i64(self) -> i64 {
        self.0
    }

    /// The instant as unix milliseconds (the start of its second).
    pub fn to_unix_ms(self) -> i64 {
        let n = |div: i64, m: i64| ((self.0 / div) % m) as u16;
        let date = Month::try_from(n(100_000_000, 100) as u8)
            .ok()
            .and_then(|month| {
                Date::from_calendar_date(
                    i32::from(n(10_000_000_000, 10_000)),
                    month,
                    n(1_000_000, 100) as u8,
                )
                .ok()
            });
        let time = Time::from_hms(n(10_000, 100) as u8, n(100, 100) as u8, n(1, 100) as u8).ok();
        match (date, time) {
            (Some(d), Some(t)) => d.with_time(t).assume_utc().unix_timestamp() * 1000,
            _ => 0,
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:014}", self.0)
    }
}

/// In the OpenAPI document: the 14-digit string.
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9]{14}$"))
            .description(Some("yyyyMMddHHmmss, UTC"))
            .examples([serde_json::json!("20261123184603")])
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

/// On the wire: the 14-digit string.
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<(), &str>) {
        let got = Timestamp::parse(input).map(|t| assert_eq!(t.to_string(), input));
        assert_eq!(got, expect, "input {input:?}");
    }

    #[test]
    fn unix_ms_round_trips_through_the_second() {
        for ms in [
            0i64,
            1_764_806_400_000,
            1_795_000_123_000,
            253_402_300_799_000,
        ] {
            assert_eq!(Timestamp::from_unix_ms(ms).to_unix_ms(), ms - ms % 1000);
        }
        assert_eq!(
            Timestamp::parse("20261204093000").unwrap().to_unix_ms(),
            1_796_376_600_000
        );
    }

    #[test]
    fn parse_rules() {
        check("20261123184603", Ok(()));
        check("20240229000000", Ok(()));
        check("00010101000000", Ok(()));
        check("99991231235959", Ok(()));
        check(
            "2026112318460",
            Err("must be exactly 14 digits, yyyyMMddHHmmss"),
        );
        check(
            "202611231846031",
            Err("must be exactly 14 digits, yyyyMMddHHmmss"),
        );
        check(
            "2026-11-23T18:4",
            Err("must be exactly 14 digits, yyyyMMddHHmmss"),
        );
        check(
            "+0261123184603",
            Err("must be exactly 14 digits, yyyyMMddHHmmss"),
        );
        check(
            "２0261123184603",
            Err("must be exactly 14 digits, yyyyMMddHHmmss"),
        );
        check("20261301000000", Err("month must be 01 to 12"));
        check("20260001000000", Err("month must be 01 to 12"));
        check("20260230000000", Err("day does not exist in that month"));
        check("20250229000000", Err("day does not exist in that month"));
        check("20260100000000", Err("day does not exist in that month"));
        check(
            "20260101240000",
            Err("time of day must be 000000 to 235959"),
        );
        check(
            "20260101006000",
            Err("time of day must be 000000 to 235959"),
        );
        check(
            "20260101000060",
            Err("time of day must be 000000 to 235959"),
        );
    }

    #[test]
    fn now_round_trips() {
        let now = Timestamp::now();
        assert_eq!(Timestamp::parse(&now.to_string()), Ok(now));
    }
}
